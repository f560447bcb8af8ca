"""One mask description per attention call, turned into whatever each backend consumes.

True means "may attend". Positions are absolute token positions, so the same rule serves teacher-forced passes
(queries and keys both start at 0) and cached decoding (queries start at the step, keys at the oldest cached
position): causal alignment is therefore bottom-right by construction, the convention flash kernels use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass
class MaskSpec:
    r"""Which (query, key) pairs may interact in one attention call.

    q_len, k_len: padded lengths T and S of the query and key sequences.
    q_start, k_start: absolute position of the first query / key.
    k_globals: how many leading keys are the global positions 0 … k_globals-1, kept by a windowed cache ahead of its
        tail; the remaining keys are contiguous from k_start. 0 means all keys are contiguous from k_start.
    q_lengths, k_lengths: per-sequence real lengths (B,) for right-padded batches; None means no padding.
    causal: a query may not see later positions.
    window: a query sees keys at distance < window (see AttentionConfig).
    global_tokens: positions < global_tokens see and are seen by all (still subject to causality and padding).

    Drawn as `dense` builds them (1: may attend; rows are queries, columns keys, each labelled with its absolute
    position; tests/attention/test_masks.py renders these calls and compares):

    causal with a window, ``MaskSpec(q_len=6, k_len=6, causal=True, window=3)``::

        q\k  0 1 2 3 4 5
          0  1 0 0 0 0 0
          1  1 1 0 0 0 0
          2  1 1 1 0 0 0
          3  0 1 1 1 0 0
          4  0 0 1 1 1 0
          5  0 0 0 1 1 1

    bidirectional window plus global tokens, ``MaskSpec(q_len=7, k_len=7, window=2, global_tokens=2)``::

        q\k  0 1 2 3 4 5 6
          0  1 1 1 1 1 1 1
          1  1 1 1 1 1 1 1
          2  1 1 1 1 0 0 0
          3  1 1 1 1 1 0 0
          4  1 1 0 1 1 1 0
          5  1 1 0 0 1 1 1
          6  1 1 0 0 0 1 1

    a cached decoding step of two queries over a window-3 cache that kept the 2 global positions ahead of its tail,
    ``MaskSpec(q_len=2, k_len=6, q_start=9, k_start=7, k_globals=2, causal=True, window=3, global_tokens=2)``::

        q\k   0  1  7  8  9 10
          9   1  1  1  1  1  0
         10   1  1  0  1  1  1
    """

    q_len: int
    k_len: int
    q_start: int = 0
    k_start: int = 0
    k_globals: int = 0
    q_lengths: Optional[Tensor] = None
    k_lengths: Optional[Tensor] = None
    causal: bool = False
    window: Optional[int] = None
    global_tokens: int = 0
    _memo: Optional[dict] = field(default=None, init=False, repr=False, compare=False)  # created on first use

    def __post_init__(self) -> None:
        if self.k_globals and (self.k_globals > self.global_tokens or self.k_start < self.k_globals):
            raise ValueError(
                f"k_globals ({self.k_globals}) must be <= global_tokens ({self.global_tokens}) and <= k_start "
                f"({self.k_start}): kept globals are positions 0 … k_globals-1, ahead of the tail"
            )

    @property
    def has_padding(self) -> bool:
        return self.q_lengths is not None or self.k_lengths is not None

    @property
    def k_last(self) -> int:
        """Absolute position of the last key (positions grow along the key axis)."""
        return self.k_start + self.k_len - self.k_globals - 1

    def _pairs_all_allowed(self) -> bool:
        """True when causality and the window exclude no (query, key) pair, ignoring padding.

        Kept global keys need no window check (they are seen by all) and precede k_start, so the tail decides.
        """
        q_first, q_last = self.q_start, self.q_start + self.q_len - 1
        if self.causal and self.k_last > q_first:
            return False
        if self.window is not None:
            farthest = max(q_last - self.k_start, 0 if self.causal else self.k_last - q_first)
            if farthest >= self.window:
                return False
        return True

    @property
    def is_full(self) -> bool:
        """Every query sees every key: backends may run with no mask at all."""
        return not self.has_padding and self._pairs_all_allowed()

    @property
    def is_plain_causal(self) -> bool:
        """Square, aligned, causal only: what SDPA's ``is_causal`` and flash's ``causal`` express without a mask."""
        return (
            self.causal
            and not self.has_padding
            and self.k_globals == 0
            and self.q_len == self.k_len
            and self.q_start == self.k_start
            and (self.window is None or self.window >= self.q_len)
        )

    def positions(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Absolute positions of the queries (T,) and keys (S,): kept globals first, then the contiguous run."""
        q_pos = torch.arange(self.q_start, self.q_start + self.q_len, device=device)
        k_pos = torch.arange(self.k_start, self.k_last + 1, device=device)
        if self.k_globals:
            k_pos = torch.cat([torch.arange(self.k_globals, device=device), k_pos])
        return q_pos, k_pos

    def allowed(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """The position rule, elementwise over broadcastable position tensors (also used inside flex mask_mods)."""
        distance = q_pos - k_pos
        ok = torch.ones_like(distance, dtype=torch.bool)
        if self.window is not None:
            local = distance < self.window if self.causal else distance.abs() < self.window
            if self.global_tokens:
                local = local | (q_pos < self.global_tokens) | (k_pos < self.global_tokens)
            ok = local
        if self.causal:
            ok = ok & (distance >= 0)
        return ok

    def reusable_for(
        self, q_len: int, k_len: int, q_lengths: Optional[Tensor], k_lengths: Optional[Tensor]
    ) -> bool:
        """Whether this mask also describes a later call with these lengths, wherever its queries start: the rule by
        which a cross-attention step reuses the previous step's mask, and with it the dense tensor memoized on it.

        Only without a window, global tokens or causality do query positions not matter (every query sees every
        real key), so only then is the mask the same from step to step. The shapes must match, and the length
        tensors must be the very same objects: comparing values would cost a device sync at every step, and a beam
        reorder or a new batch brings new tensors.
        """
        return (
            self.window is None
            and not self.global_tokens
            and not self.causal
            and (self.q_len, self.k_len) == (q_len, k_len)
            and self.q_lengths is q_lengths
            and self.k_lengths is k_lengths
        )

    def memoized(self, key, build: Callable[[], Optional[Tensor]]) -> Optional[Tensor]:
        """``build()`` once per key for this mask. Cross-attention keeps one MaskSpec for as long as its source rows
        stay the same, so its tensors are built once per batch instead of at every decoding step and layer."""
        if self._memo is None:
            self._memo = {}
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def dense(self, device: torch.device) -> Optional[Tensor]:
        """A bool mask broadcastable to (B, heads, q_len, k_len), or None when everything is allowed (not to be
        modified: it may be memoized)."""
        return self.memoized(("dense", torch.device(device)), lambda: self._dense(device))

    def _dense(self, device: torch.device) -> Optional[Tensor]:
        if self.is_full:
            return None
        q_pos, k_pos = self.positions(device)
        mask = self.allowed(q_pos[:, None], k_pos[None, :])[None, None]  # (1, 1, q_len, k_len)
        if self.k_lengths is not None:
            keys = torch.arange(self.k_len, device=device)
            mask = mask & (keys[None, :] < self.k_lengths.to(device)[:, None])[:, None, None, :]  # (B, 1, q, k)
        if self.q_lengths is not None:
            queries = torch.arange(self.q_len, device=device)
            mask = mask & (queries[None, :] < self.q_lengths.to(device)[:, None])[:, None, :, None]  # (B, 1, q, k)
        return mask
