"""The portable attention kernels (math, sdpa, matmul, flex), and the signature every backend's kernel shares.

Every kernel — these, `nmt.attention.band.band_attention` and `nmt.attention.flash.flash_attention` — is

    kernel(q, k, v, mask, dropout_p=0.0, need_weights=False) -> (out, weights)

and computes scaled dot-product attention, ``softmax(q kᵀ / √head_dim + mask) v`` (Vaswani et al. 2017, eq. 1), with
grouped K/V heads (Ainslie et al. 2023, GQA): each of the ``group`` query heads of a group reads the same K/V head.

q: (B, n_heads, T, head_dim); k, v: (B, n_kv_heads, S, head_dim); one float dtype and device for all three (which
    dtypes and devices a backend takes is its `nmt.attention.backends.REGISTRY` entry).
mask: a `MaskSpec` with ``q_len = T`` and ``k_len = S``: which (query, key) pairs may interact.
dropout_p: the probability of dropping an attention weight (the caller passes 0 outside training).
need_weights: also return the softmax weights (B, n_heads, T, S), before dropout, in q's dtype; only backends
    registered with ``weights=True`` (math) compute them, the others return None.
out: (B, n_heads, T, head_dim) in q's dtype. Rows with nothing to attend (padded queries, an empty source) come out
    as zeros, never NaN, forward and backward.

Kernels do not check their inputs: `nmt.attention.dispatch.attend` checks the registry before calling one.
"""

from __future__ import annotations

import math as pymath
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from nmt.attention.masks import MaskSpec


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """The readable oracle every other kernel is tested against (kernel signature: module docstring)."""
    group = q.size(1) // k.size(1)
    k = k.repeat_interleave(group, dim=1)  # (B, n_heads, S, head_dim)
    v = v.repeat_interleave(group, dim=1)  # (B, n_heads, S, head_dim)
    # Softmax in at least fp32 (fp64 stays fp64, so the oracle can serve as a float64 reference).
    scores = (q @ k.transpose(-2, -1)).to(torch.promote_types(q.dtype, torch.float32)) / pymath.sqrt(q.size(-1))
    allowed = mask.dense(q.device)
    if allowed is not None:
        # A finite fill keeps fully masked rows free of NaN (forward and backward); they are zeroed below.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if allowed is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    weights = weights.to(q.dtype)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return dropped @ v, (weights if need_weights else None)


# Devices whose SDPA kernels may return NaN for a row with nothing to attend (the CPU kernels give zeros).
EMPTY_ROW_GUARD_DEVICES = {"cuda"}


def _guard_empty_rows(attn_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Let rows with nothing to attend see key 0, so no kernel divides by zero; they are zeroed afterwards."""
    empty = ~attn_mask.any(dim=-1, keepdim=True)  # (B or 1, 1, T, 1)
    first_key = torch.zeros_like(attn_mask[..., :1, :])
    first_key[..., 0] = True
    return attn_mask | (empty & first_key), empty


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """torch's fused ``scaled_dot_product_attention`` (kernel signature: module docstring)."""
    causal = mask.is_plain_causal
    attn_mask = None if causal else mask.dense(q.device)
    empty = None
    if attn_mask is not None and q.device.type in EMPTY_ROW_GUARD_DEVICES:
        attn_mask, empty = _guard_empty_rows(attn_mask)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal, enable_gqa=k.size(1) != q.size(1)
    )
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out, None


def matmul_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """Batched matmuls without copying K/V per head group (kernel signature: module docstring).

    For few queries (decoding steps), where SDPA's fused CPU kernel pads the queries to its block and runs up to 2x
    slower (4 queries over 34 keys, B 64: 572 vs 276 µs in scripts/matmul_crossover.py). K/V may be strided views
    (a cache's positions): matmul reads them in place. The mask's blocked positions are memoized on the MaskSpec, so a
    cross-attention mask reused step after step (MaskSpec.reusable_for) costs one fill per call.
    """
    B, n_heads, T, head_dim = q.shape
    n_kv_heads, S = k.size(1), k.size(2)
    group = n_heads // n_kv_heads
    # A group's heads read the same K/V head, so they become extra query rows of it (no repeat_interleave).
    qg = q.reshape(B, n_kv_heads, group * T, head_dim)  # (B, n_kv_heads, group · T, head_dim)
    scores = (qg @ k.transpose(-2, -1)).mul_(head_dim**-0.5)  # (B, n_kv_heads, group · T, S)
    blocked, empty = _blocked(mask, q.device)
    if blocked is not None:
        # A finite fill keeps rows with nothing to attend free of NaN, forward and backward, in every dtype (adding a
        # bias of the minimum overflowed to -inf in fp16); those rows are zeroed below.
        scores.view(B, n_kv_heads, group, T, S).masked_fill_(blocked[:, :, None], torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    out = (weights @ v).view(B, n_heads, T, head_dim)  # (B, n_heads, T, head_dim)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out, None


def _blocked(mask: MaskSpec, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The positions the mask blocks (B or 1, 1, T, S) and the rows with nothing to attend (B or 1, 1, T, 1), to zero
    afterwards; (None, None) for a full mask. Memoized on the mask; on CPU, ``empty`` is None when no row is empty
    (checking costs no device sync)."""
    allowed = mask.dense(device)
    if allowed is None:
        return None, None

    def build() -> tuple[Tensor, Optional[Tensor]]:
        empty = ~allowed.any(-1, keepdim=True)
        return ~allowed, (None if device.type == "cpu" and not empty.any() else empty)

    return mask.memoized(("matmul blocked", torch.device(device)), build)


_compiled_flex: Optional[Callable] = None


def _flex_kernel(q: Tensor, mask: MaskSpec) -> Callable:
    """The compiled kernel (which skips masked blocks) where it runs, else eager flex (same math, dense scores).

    torch 2.13's compiled CPU flex fails on padding masks, so padded CPU calls run eagerly.
    """
    global _compiled_flex
    if q.device.type == "cpu" and mask.has_padding:
        return flex_attention
    if _compiled_flex is None:
        # dynamic=False: dynamic shapes hit a compiler error once a window and a padding mask were both compiled.
        # One compile per shape/mask/GQA layout, so raise dynamo's default limit of 8 recompiles per function:
        # past it dynamo silently runs flex eagerly (dense scores, 10-60x slower), which `nmt bench attention` caught.
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_block_mask(mask: MaskSpec, batch: int, device: torch.device) -> Optional[BlockMask]:
    """The MaskSpec as FlexAttention's BlockMask (None when everything is allowed)."""
    if mask.is_full:
        return None
    q_start, k_start, k_globals = mask.q_start, mask.k_start, mask.k_globals
    q_lengths = None if mask.q_lengths is None else mask.q_lengths.to(device)
    k_lengths = None if mask.k_lengths is None else mask.k_lengths.to(device)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        k_pos = kv_idx + k_start
        if k_globals:
            k_pos = torch.where(kv_idx < k_globals, kv_idx, kv_idx - k_globals + k_start)
        ok = mask.allowed(q_idx + q_start, k_pos)
        if k_lengths is not None:
            ok = ok & (kv_idx < k_lengths[b])
        if q_lengths is not None:
            ok = ok & (q_idx < q_lengths[b])
        return ok

    return create_block_mask(
        mask_mod, batch if mask.has_padding else None, None, mask.q_len, mask.k_len, device=device
    )


def flex_attention_kernel(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """FlexAttention over the mask's BlockMask (kernel signature: module docstring; takes no dropout)."""
    block_mask = flex_block_mask(mask, q.size(0), q.device)
    out = _flex_kernel(q, mask)(q, k, v, block_mask=block_mask, enable_gqa=k.size(1) != q.size(1))
    return out, None
