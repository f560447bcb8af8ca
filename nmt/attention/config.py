"""Per-site attention configuration: one dataclass, validated when it is built (against the backend registry,
which, like this module, imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from nmt.attention.backends import BACKENDS, mask_problem


@dataclass
class AttentionConfig:
    """What one attention site computes, and with which kernel.

    The variants of the design table are settings of these fields, not classes:
    MHA ``n_kv_heads = n_heads``, MQA ``n_kv_heads = 1``, GQA ``1 < n_kv_heads < n_heads``,
    sliding window ``window = w``, sparse local+global ``window = w, global_tokens = g``.

    ``n_heads = None`` inherits the model's ``n_heads``; ``n_kv_heads = None`` means ``n_heads`` (MHA).
    ``window = w`` lets a query see keys at distance ``< w``: the previous ``w`` tokens (itself included) when the
    site is causal, ``w - 1`` on each side otherwise. ``global_tokens = g`` makes the first ``g`` positions see and
    be seen by every position, on top of the window.
    """

    n_heads: Optional[int] = None
    n_kv_heads: Optional[int] = None
    window: Optional[int] = None
    global_tokens: int = 0
    backend: str = "auto"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_heads is not None and self.n_heads < 1:
            raise ValueError(f"n_heads ({self.n_heads}) must be >= 1")
        if self.n_kv_heads is not None:
            if self.n_kv_heads < 1:
                raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must be >= 1")
            if self.n_heads is not None and self.n_heads % self.n_kv_heads != 0:
                raise ValueError(
                    f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
                )
        if self.window is not None and self.window < 1:
            raise ValueError(f"window ({self.window}) must be >= 1, or null for full attention")
        if self.global_tokens < 0:
            raise ValueError(f"global_tokens ({self.global_tokens}) must be >= 0")
        if self.global_tokens > 0 and self.window is None:
            raise ValueError(
                f"global_tokens ({self.global_tokens}) needs a window: without one every token is already global"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend ({self.backend!r}) must be one of {', '.join(BACKENDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        problem = mask_problem(self.backend, window=self.window, global_tokens=self.global_tokens, dropout=self.dropout)
        if problem is not None:
            raise ValueError(problem)

    def resolve(self, n_heads: int) -> "AttentionConfig":
        """A copy with ``n_heads`` and ``n_kv_heads`` filled in (``n_heads`` from the model when unset)."""
        heads = self.n_heads if self.n_heads is not None else n_heads
        kv_heads = self.n_kv_heads if self.n_kv_heads is not None else heads
        return replace(self, n_heads=heads, n_kv_heads=kv_heads)

    @property
    def sees_every_key(self) -> bool:
        """True without a window or global tokens: every query sees every (unpadded) key whatever its position, so
        on cross-attention a sentence's beams can share one cached source row (Seq2Seq.init_state, and the
        KV-cache calculator nmt.analysis.kv_cache)."""
        return self.window is None and not self.global_tokens

    @property
    def variant(self) -> str:
        """A short human name, e.g. ``gqa-2+window-8`` (used in logs and reports)."""
        heads, kv = self.n_heads, self.n_kv_heads
        if kv is None or kv == heads:
            name = "mha"
        elif kv == 1:
            name = "mqa"
        else:
            name = f"gqa-{kv}"
        if self.window is not None:
            name += f"+window-{self.window}"
        if self.global_tokens:
            name += f"+global-{self.global_tokens}"
        return name
