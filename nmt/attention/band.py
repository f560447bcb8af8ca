"""The ``band`` backend: sliding-window attention, optionally with global tokens (sparse local+global, Beltagy et al.
2020, Longformer), that computes only what the mask allows: O(n·(w + g)) time and memory, with gradients on any
device (plain tensor ops, so autograd gives the backward pass).

Queries are cut into blocks of ``window`` positions; a block attends to its own key block and the previous one
(causal), or the previous, its own and the next one (bidirectional), which covers every key at distance < window.
Global tokens (`MaskSpec.allowed`: the first g positions see and are seen by every position, causality still
applying) add two parts, both linear in n:

- the g global keys are appended to every query block's keys; where a global key also lies inside the block's
  window it is masked out there, so the softmax counts it once;
- the g global query rows are dense attention over all keys (g × n scores), computed apart and put in place of the
  band's rows for them.

A cached decoding step already holds only the window's keys (and the kept global ones), so there the same attention
runs as one SDPA call. What band cannot compute is declared in its entry of `nmt.attention.backends.REGISTRY`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.attention.kernels import sdpa_attention
from nmt.attention.masks import MaskSpec

CHUNK_BYTES = 8 << 20  # the scores one chunk of query blocks may hold (see _band)


def is_decoding_step(mask: MaskSpec) -> bool:
    """A cached step: its keys are the window's cache (and kept globals), not the queries' own positions."""
    return mask.q_len != mask.k_len or mask.q_start != mask.k_start or mask.k_globals > 0


def global_counts(mask: MaskSpec) -> tuple[int, int]:
    """How many of a (non-decoding) call's queries and keys are global positions (absolute position < g)."""
    g, length = mask.global_tokens, mask.q_len
    return min(max(g - mask.q_start, 0), length), min(max(g - mask.k_start, 0), length)


def _blocks(x: Tensor, block: int, n_blocks: int) -> Tensor:
    """(B, heads, L, D) → (B, heads, n_blocks, block, D), zero-padded at the end."""
    x = F.pad(x, (0, 0, 0, n_blocks * block - x.size(2)))
    return x.view(x.size(0), x.size(1), n_blocks, block, x.size(-1))


def _neighbours(x: Tensor, causal: bool) -> Tensor:
    """Each block with the previous (and, bidirectional, the next) block: (B, heads, n_blocks, 2 or 3 × block, D)."""
    padded = F.pad(x, (0, 0, 0, 0, 1, 1))  # an empty block before the first and after the last
    parts = [padded[:, :, :-2], x] + ([] if causal else [padded[:, :, 2:]])
    return torch.cat(parts, dim=3)


def _band_chunk(qb: Tensor, kb: Tensor, vb: Tensor, kg: Tensor, vg: Tensor, allowed: Tensor, head_dim: int,
                dropout_p: float) -> Tensor:
    """Attention of a run of query blocks over their neighbourhoods and the global keys: (B, kv, g, n, b, D) from
    scores (…, b, span + n_global)."""
    # Scale q (small) rather than the scores (span times larger); einsum keeps no output for backward, so the mask
    # fills the scores in place.
    qs = qb * head_dim**-0.5
    scores = torch.einsum("bkgnqd,bknsd->bkgnqs", qs, kb)  # (B, kv, g, n, b, span)
    if kg.size(2):
        to_globals = torch.einsum("bkgnqd,bksd->bkgnqs", qs, kg)  # (B, kv, g, n, b, n_global)
        scores = torch.cat([scores, to_globals], dim=-1)  # (B, kv, g, n, b, span + n_global)
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # softmax in at least fp32, as the math oracle does
    scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)  # finite: empty rows stay NaN-free
    # Masked keys underflow to weight 0; only rows with no key at all (padding) need zeroing, done on the output.
    weights = scores.softmax(dim=-1).to(qb.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    if not kg.size(2):
        out = torch.einsum("bkgnqs,bknsd->bkgnqd", weights, vb)  # (B, kv, g, n, b, D)
    else:
        # split, not slicing: the backward of two slices would zero-fill two weights-sized tensors, split's is a cat.
        to_band, to_globals = weights.split([kb.size(3), kg.size(2)], dim=-1)
        out = torch.einsum("bkgnqs,bknsd->bkgnqd", to_band, vb)  # (B, kv, g, n, b, D)
        out = out + torch.einsum("bkgnqs,bksd->bkgnqd", to_globals, vg)  # (B, kv, g, n, b, D)
    return out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # rows that see nothing: zeros


def _allowed(mask: MaskSpec, block: int, n_blocks: int, span: int, n_global: int, device: torch.device) -> Tensor:
    """Which (query, key) pairs of each query block may interact: (B or 1, 1, 1, n_blocks, block, span + n_global),
    keys being the block's neighbourhood (``span`` positions from one block back), then the global keys."""
    length = mask.q_len
    first = torch.arange(n_blocks, device=device)[:, None] * block  # first position of each block
    q_pos = mask.q_start + first + torch.arange(block, device=device)  # (nb, b)
    band_pos = mask.k_start + first - block + torch.arange(span, device=device)  # (nb, span)
    global_pos = (mask.k_start + torch.arange(n_global, device=device)).expand(n_blocks, n_global)  # (nb, n_global)
    k_pos = torch.cat([band_pos, global_pos], dim=1)  # (nb, span + n_global)
    allowed = mask.allowed(q_pos[:, :, None], k_pos[:, None, :])  # (nb, b, span + n_global)
    k_index, q_index = k_pos - mask.k_start, q_pos - mask.q_start  # 0-based indices into the sequence
    keep = (k_index >= 0) & (k_index < length)
    # A global key inside the window is also among the appended global keys: seen twice, the softmax would count it
    # twice, so it is dropped from the band's columns.
    keep[:, :span] &= band_pos >= mask.global_tokens
    allowed = (allowed & keep[:, None, :])[None]  # (1, nb, b, span + n_global)
    if mask.k_lengths is not None:
        allowed = allowed & (k_index[None] < mask.k_lengths.to(device)[:, None, None])[:, :, None, :]
    if mask.q_lengths is not None:
        allowed = allowed & (q_index[None] < mask.q_lengths.to(device)[:, None, None])[:, :, :, None]
    return allowed[:, None, None]  # (B or 1, 1, 1, nb, b, span + n_global)


def _band(q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float, n_global: int) -> Tensor:
    """The window (plus the first ``n_global`` keys as global keys) for every query: (B, n_heads, L, D)."""
    B, n_heads, length, head_dim = q.shape
    # A window wider than the sequence is one block: its neighbourhood already holds every key.
    n_kv, block = k.size(1), min(mask.window, length)
    group, n_blocks = n_heads // n_kv, -(-length // block)
    qb = _blocks(q, block, n_blocks).view(B, n_kv, group, n_blocks, block, head_dim)  # (B, kv, g, nb, b, D)
    kb = _neighbours(_blocks(k, block, n_blocks), mask.causal)  # (B, kv, nb, span, D)
    vb = _neighbours(_blocks(v, block, n_blocks), mask.causal)  # (B, kv, nb, span, D)
    kg, vg = k[:, :, :n_global], v[:, :, :n_global]  # (B, kv, n_global, D)
    allowed = _allowed(mask, block, n_blocks, kb.size(3), n_global, q.device)
    # Query blocks in chunks whose scores stay near CHUNK_BYTES: one pass over a long sequence streams GiB-sized
    # score tensors through memory, which grew faster than linearly (16k/4k took 6.6x); bounded chunks stay linear.
    # 8 MiB rather than 32: the several passes over a chunk's scores (mask, softmax, their backward) then run from
    # the 32 MiB L3 cache, not from memory (w = g = √n, forward+backward, 1 thread: 16k 2.1 s instead of 2.6 s, 4k
    # within noise; windows of 256 no slower).
    # torch.split, not slicing: its backward concatenates the chunks' gradients once, where each slice's backward
    # would write into a zero tensor the size of the whole input (quadratic in the number of chunks).
    # Scores are at least fp32 (a half-precision einsum's output is upcast for the softmax, so both copies exist).
    score_bytes = max(4, q.element_size()) + (q.element_size() if q.element_size() < 4 else 0)
    chunk = max(1, CHUNK_BYTES // (B * n_heads * block * allowed.size(-1) * score_bytes))
    pieces = zip(qb.split(chunk, dim=3), kb.split(chunk, dim=2), vb.split(chunk, dim=2), allowed.split(chunk, dim=3))
    outs = [_band_chunk(qc, kc, vc, kg, vg, ac, head_dim, dropout_p) for qc, kc, vc, ac in pieces]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)  # (B, kv, g, nb, b, D)
    return out.reshape(B, n_heads, n_blocks * block, head_dim)[:, :, :length]  # (B, n_heads, L, D)


def _global_rows(q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float) -> Tensor:
    """The first ``q.size(2)`` queries, global ones, over every key: dense attention, (B, n_heads, n_global, D)."""
    return sdpa_attention(q, k, v, dataclasses.replace(mask, q_len=q.size(2)), dropout_p)[0]  # a fresh memo


def band_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """The band backend's kernel (kernel signature: `nmt.attention.kernels`), on a mask the registry has checked."""
    if is_decoding_step(mask):
        return sdpa_attention(q, k, v, mask, dropout_p)
    n_global_q, n_global_k = global_counts(mask)
    if n_global_q == mask.q_len:  # every query is global (g >= length): dense attention is all there is
        return _global_rows(q, k, v, mask, dropout_p), None
    out = _band(q, k, v, mask, dropout_p, n_global_k)  # (B, n_heads, L, D)
    if n_global_q:  # the band computed the global queries' rows too (a part of one block): replaced, not used
        out = torch.cat([_global_rows(q[:, :, :n_global_q], k, v, mask, dropout_p), out[:, :, n_global_q:]], dim=2)
    return out, None
