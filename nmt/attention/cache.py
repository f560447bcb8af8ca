"""Key/value cache of one attention layer for incremental decoding (shape letters: `nmt.attention`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from nmt.attention.masks import MaskSpec


@dataclass
class KVCache:
    """K/V of the positions decoded so far, stored with ``n_kv_heads`` heads: (B, n_kv_heads, stored, head_dim).

    Self-attention appends each step's K/V; with a ``window`` it keeps only the last ``window`` positions (plus the
    ``global_tokens`` first positions, which every later token still sees). Cross-attention fills it once per source
    sentence (`fill`: stored = S) and reuses it at every step.

    Stored keys are laid out as ``k_globals`` global positions 0 … k_globals-1, then a contiguous run from
    ``k_start``; ``length`` is the number of positions decoded so far (the absolute position of the next query).
    A self-attention cache with window 3 and global_tokens 2 after 8 positions (test_cache_layout_… in
    tests/attention/test_cache.py builds this one)::

        index along dim 2     0   1   2   3   4       stored = k_globals + (length - k_start) = 5
        absolute position     0   1   5   6   7       length = 8: the next query is position 8
                              └─┬─┘   └────┬────┘
                        k_globals = 2    contiguous from k_start = 5

    Without a window nothing is dropped: k_globals = 0, k_start = 0 and stored = length.
    Beam search's `reorder` is kept pending in ``_order`` and applied when the K/V are next read or appended to.
    """

    window: Optional[int] = None
    global_tokens: int = 0
    length: int = 0
    k_start: int = 0
    k_globals: int = 0
    _k: Optional[Tensor] = field(default=None, repr=False)
    _v: Optional[Tensor] = field(default=None, repr=False)
    # Beam search reorders every step and appends right after: a pending row order lets append gather the old rows
    # straight into the grown tensor, one copy instead of two (index_select, then cat).
    _order: Optional[Tensor] = field(default=None, repr=False)
    # Cross-attention: the mask of the last step, reused while MaskSpec.reusable_for allows.
    mask: Optional[MaskSpec] = field(default=None, repr=False)

    @property
    def k(self) -> Optional[Tensor]:
        self._apply_order()
        return self._k

    @property
    def v(self) -> Optional[Tensor]:
        self._apply_order()
        return self._v

    def _apply_order(self) -> None:
        if self._order is not None:
            self._k, self._v = self._k.index_select(0, self._order), self._v.index_select(0, self._order)
            self._order = None

    @property
    def is_empty(self) -> bool:
        return self._k is None

    def fill(self, k: Tensor, v: Tensor) -> None:
        """Cross-attention: K/V of the whole source, computed once."""
        self._k, self._v, self._order, self.mask = k, v, None, None

    def append(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor, int, int]:
        """Add the K/V of ``k_new.size(2)`` new positions.

        Returns the keys and values these positions attend to with their layout ``(k_start, k_globals)``: the stored
        positions the first new query can still see, then the new ones. What is stored afterwards is the same minus
        whatever the next query can no longer see.
        """
        n_new = k_new.size(2)
        if self._order is not None and self.window is None:
            k, v = self._gather_and_append(self._k, k_new), self._gather_and_append(self._v, v_new)
            self._order, k_start, k_globals = None, self.k_start, self.k_globals
        else:
            k, v, k_start, k_globals = self._visible_from(self.length, extra=n_new - 1)
            k = k_new if k is None else torch.cat([k, k_new], dim=2)  # (B, n_kv_heads, len, head_dim)
            v = v_new if v is None else torch.cat([v, v_new], dim=2)  # (B, n_kv_heads, len, head_dim)
        self._k, self._v, self.k_start, self.k_globals = k, v, k_start, k_globals
        self.length += n_new
        if n_new > 1 and self.window is not None:
            # Keep only what the next query sees; clone so the dropped positions' memory is really freed.
            kept = self._visible_from(self.length, extra=0)
            self._k, self._v, self.k_start, self.k_globals = kept[0].clone(), kept[1].clone(), kept[2], kept[3]
        return k, v, k_start, k_globals

    def _gather_and_append(self, old: Tensor, new: Tensor) -> Tensor:
        """``cat([old[self._order], new], dim=2)`` written into one new tensor."""
        if torch.is_grad_enabled() and (old.requires_grad or new.requires_grad):  # out= has no autograd
            return torch.cat([old.index_select(0, self._order), new], dim=2)
        B, heads, n_old, head_dim = self._order.size(0), old.size(1), old.size(2), old.size(3)
        out = old.new_empty(B, heads, n_old + new.size(2), head_dim)  # (B, n_kv_heads, len, head_dim)
        torch.index_select(old, 0, self._order, out=out[:, :, :n_old])
        out[:, :, n_old:] = new
        return out

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
        """Beam search: row i becomes old row ``index[i]`` (applied when the K/V are next read or appended to)."""
        if self._k is not None:
            self._order = index if self._order is None else self._order.index_select(0, index)
        self.mask = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached K and V tensors (once a pending beam reorder is applied; reading this does not
        apply it, so measuring the cache does not change when its copies happen)."""
        if self._k is None:
            return 0
        rows = self._k.size(0) if self._order is None else self._order.size(0)
        return rows * sum(t[0].numel() * t.element_size() for t in (self._k, self._v))
