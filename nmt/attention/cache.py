"""Key/value cache of one attention layer for incremental decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class KVCache:
    """K/V of the positions decoded so far, stored with ``n_kv_heads`` heads: (B, n_kv_heads, len, head_dim).

    Self-attention appends each step's K/V; with a ``window`` it keeps only the last ``window`` positions (plus the
    ``global_tokens`` first positions, which every later token still sees). Cross-attention fills it once per source
    sentence (``static``) and reuses it at every step.

    Stored keys are laid out as ``k_globals`` global positions 0 … k_globals-1, then a contiguous run from
    ``k_start``; ``length`` is the number of positions decoded so far (the absolute position of the next query).
    """

    window: Optional[int] = None
    global_tokens: int = 0
    k: Optional[Tensor] = None
    v: Optional[Tensor] = None
    length: int = 0
    k_start: int = 0
    k_globals: int = 0

    @property
    def is_empty(self) -> bool:
        return self.k is None

    def fill(self, k: Tensor, v: Tensor) -> None:
        """Cross-attention: K/V of the whole source, computed once."""
        self.k, self.v = k, v

    def append(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor, int, int]:
        """Add the K/V of ``k_new.size(2)`` new positions.

        Returns the keys and values these positions attend to with their layout ``(k_start, k_globals)``: the stored
        positions the first new query can still see, then the new ones. What is stored afterwards is the same minus
        whatever the next query can no longer see.
        """
        n_new = k_new.size(2)
        k, v, k_start, k_globals = self._visible_from(self.length, extra=n_new - 1)
        k = k_new if k is None else torch.cat([k, k_new], dim=2)  # (B, n_kv_heads, len, head_dim)
        v = v_new if v is None else torch.cat([v, v_new], dim=2)  # (B, n_kv_heads, len, head_dim)
        self.k, self.v, self.k_start, self.k_globals = k, v, k_start, k_globals
        self.length += n_new
        if n_new > 1 and self.window is not None:
            # Keep only what the next query sees; clone so the dropped positions' memory is really freed.
            kept = self._visible_from(self.length, extra=0)
            self.k, self.v, self.k_start, self.k_globals = kept[0].clone(), kept[1].clone(), kept[2], kept[3]
        return k, v, k_start, k_globals

    def _visible_from(self, position: int, extra: int) -> tuple[Optional[Tensor], Optional[Tensor], int, int]:
        """Stored K/V still visible to a query at ``position`` (the ``window - 1`` previous positions plus
        ``extra`` more for a chunk of queries, and the global positions), with their layout."""
        if self.k is None or self.window is None:
            return self.k, self.v, self.k_start, self.k_globals
        oldest = position - (self.window - 1) - extra  # oldest tail position still in some query's window
        if oldest <= self.k_start:
            return self.k, self.v, self.k_start, self.k_globals
        g = self.k_globals
        if g == 0 and self.global_tokens:
            # Never trimmed yet: the run starts at position 0, so its first positions are the global tokens.
            g = min(self.global_tokens, self.k.size(2))
            if oldest <= g:
                return self.k, self.v, self.k_start, self.k_globals
            tail_from = oldest  # run index equals position here
        else:
            tail_from = g + (oldest - self.k_start)
        k = torch.cat([self.k[:, :, :g], self.k[:, :, tail_from:]], dim=2) if g else self.k[:, :, tail_from:]
        v = torch.cat([self.v[:, :, :g], self.v[:, :, tail_from:]], dim=2) if g else self.v[:, :, tail_from:]
        return k, v, oldest, g

    def reorder(self, index: Tensor) -> None:
        """Beam search: row i becomes old row ``index[i]``."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached K and V tensors."""
        if self.k is None:
            return 0
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()
