"""Shared test cases: every attention variant at every site, as MaskSpecs over random inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from nmt.attention import MaskSpec

# (name, n_heads, n_kv_heads, window, global_tokens)
VARIANTS = [
    ("mha", 4, 4, None, 0),
    ("gqa", 4, 2, None, 0),
    ("mqa", 4, 1, None, 0),
    ("sliding_window", 4, 4, 3, 0),
    ("sparse", 4, 2, 3, 2),
]
SITES = ["encoder_self", "decoder_self", "cross"]


@dataclass
class Case:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: MaskSpec


def make_case(
    variant: str,
    site: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    head_dim: int = 8,
    padded: bool = True,
    requires_grad: bool = False,
) -> Case:
    """A padded batch whose last sequence is empty (a row with nothing to attend) and, for cross-attention,
    with a query length different from the key length."""
    _, n_heads, n_kv_heads, window, global_tokens = next(v for v in VARIANTS if v[0] == variant)
    q_len = 9
    k_len = 13 if site == "cross" else q_len
    lengths_q: Optional[torch.Tensor] = torch.tensor([q_len, 6, 0]) if padded else None
    lengths_k: Optional[torch.Tensor] = torch.tensor([k_len, 11 if site == "cross" else 6, 0]) if padded else None
    B = 3
    make = lambda heads, length: torch.randn(B, heads, length, head_dim, dtype=dtype, device=device)  # noqa: E731
    q, k, v = make(n_heads, q_len), make(n_kv_heads, k_len), make(n_kv_heads, k_len)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    mask = MaskSpec(
        q_len=q_len,
        k_len=k_len,
        q_lengths=lengths_q,
        k_lengths=lengths_k,
        causal=site == "decoder_self",
        window=window,
        global_tokens=global_tokens,
    )
    return Case(q, k, v, mask)
