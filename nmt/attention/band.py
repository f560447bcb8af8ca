"""The ``band`` backend: sliding-window attention that computes only the band, in O(n·w) time and memory, with
gradients on any device (plain tensor ops, so autograd gives the backward pass).

Queries are cut into blocks of ``window`` positions; a block attends to its own key block and the previous one
(causal), or the previous, its own and the next one (bidirectional), which covers every key at distance < window.
A cached decoding step already holds only the window's keys, so there the same attention runs as one SDPA call.
What band cannot compute is declared in its entry of `nmt.attention.backends.REGISTRY`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.attention.masks import MaskSpec


CHUNK_BYTES = 32 << 20  # the scores one chunk of query blocks may hold (see band_attention)


def is_decoding_step(mask: MaskSpec) -> bool:
    """A cached step: its keys are the window's cache (and kept globals), not the queries' own positions."""
    return mask.q_len != mask.k_len or mask.q_start != mask.k_start or mask.k_globals > 0


def _blocks(x: Tensor, block: int, n_blocks: int) -> Tensor:
    """(B, heads, L, D) → (B, heads, n_blocks, block, D), zero-padded at the end."""
    x = F.pad(x, (0, 0, 0, n_blocks * block - x.size(2)))
    return x.view(x.size(0), x.size(1), n_blocks, block, x.size(-1))


def _neighbours(x: Tensor, causal: bool) -> Tensor:
    """Each block with the previous (and, bidirectional, the next) block: (B, heads, n_blocks, 2 or 3 × block, D)."""
    padded = F.pad(x, (0, 0, 0, 0, 1, 1))  # an empty block before the first and after the last
    parts = [padded[:, :, :-2], x] + ([] if causal else [padded[:, :, 2:]])
    return torch.cat(parts, dim=3)


def _band_chunk(qb: Tensor, kb: Tensor, vb: Tensor, allowed: Tensor, head_dim: int, dropout_p: float) -> Tensor:
    """Attention of a run of query blocks over their neighbourhoods: (B, kv, g, n, b, D) from scores (…, b, span)."""
    # Scale q (small) rather than the scores (span times larger); einsum keeps no output for backward, so the mask
    # fills the scores in place.
    scores = torch.einsum("bkgnqd,bknsd->bkgnqs", qb * head_dim**-0.5, kb)  # (B, kv, g, n, b, span)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # softmax in at least fp32, as the math oracle does
    scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)  # finite: empty rows stay NaN-free
    # Masked keys underflow to weight 0; only rows with no key at all (padding) need zeroing, done on the output.
    weights = scores.softmax(dim=-1).to(qb.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    out = torch.einsum("bkgnqs,bknsd->bkgnqd", weights, vb)  # (B, kv, g, n, b, D)
    return out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # rows that see nothing: zeros


def band_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """The band backend's kernel (kernel signature: `nmt.attention.kernels`), on a mask the registry has checked."""
    if is_decoding_step(mask):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(q.device), dropout_p=dropout_p,
                                             enable_gqa=k.size(1) != q.size(1))
        return out, None
    B, n_heads, length, head_dim = q.shape
    n_kv, block = k.size(1), mask.window
    group, n_blocks = n_heads // n_kv, -(-length // block)
    qb = _blocks(q, block, n_blocks).view(B, n_kv, group, n_blocks, block, head_dim)  # (B, kv, g, nb, b, D)
    kb = _neighbours(_blocks(k, block, n_blocks), mask.causal)  # (B, kv, nb, span, D)
    vb = _neighbours(_blocks(v, block, n_blocks), mask.causal)  # (B, kv, nb, span, D)

    device = q.device
    first = torch.arange(n_blocks, device=device)[:, None] * block  # first position of each block
    q_pos = mask.q_start + first + torch.arange(block, device=device)  # (nb, b)
    k_pos = mask.k_start + first - block + torch.arange(kb.size(3), device=device)  # (nb, span)
    allowed = mask.allowed(q_pos[:, :, None], k_pos[:, None, :])  # (nb, b, span)
    k_index, q_index = k_pos - mask.k_start, q_pos - mask.q_start  # 0-based indices into the sequence
    allowed = allowed & (k_index >= 0)[:, None, :] & (k_index < length)[:, None, :]
    allowed = allowed[None]  # (1, nb, b, span)
    if mask.k_lengths is not None:
        allowed = allowed & (k_index[None] < mask.k_lengths.to(device)[:, None, None])[:, :, None, :]
    if mask.q_lengths is not None:
        allowed = allowed & (q_index[None] < mask.q_lengths.to(device)[:, None, None])[:, :, :, None]
    allowed = allowed[:, None, None]  # (B or 1, 1, 1, nb, b, span)
    # Query blocks in chunks whose scores stay near CHUNK_BYTES: one pass over a long sequence streams GiB-sized
    # score tensors through memory, which grew faster than linearly (16k/4k took 6.6x); bounded chunks stay linear.
    # torch.split, not slicing: its backward concatenates the chunks' gradients once, where each slice's backward
    # would write into a zero tensor the size of the whole input (quadratic in the number of chunks).
    # Scores are at least fp32 (a half-precision einsum's output is upcast for the softmax, so both copies exist).
    score_bytes = max(4, q.element_size()) + (q.element_size() if q.element_size() < 4 else 0)
    chunk = max(1, CHUNK_BYTES // (B * n_heads * block * kb.size(3) * score_bytes))
    pieces = zip(qb.split(chunk, dim=3), kb.split(chunk, dim=2), vb.split(chunk, dim=2), allowed.split(chunk, dim=3))
    outs = [_band_chunk(qc, kc, vc, ac, head_dim, dropout_p) for qc, kc, vc, ac in pieces]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)  # (B, kv, g, nb, b, D)
    out = out.reshape(B, n_heads, n_blocks * block, head_dim)[:, :, :length]  # (B, n_heads, L, D)
    return out, None
