"""Attention kernels with one signature, and the dispatcher that picks one per site.

Every backend computes ``softmax(q kᵀ / √head_dim + mask) v`` for q (B, n_heads, q_len, head_dim) and k, v
(B, n_kv_heads, k_len, head_dim), with the mask given as a MaskSpec; rows with nothing to attend come out as zeros.
``math`` is the readable oracle and the only one that returns the weights.
"""

from __future__ import annotations

import logging
import math as pymath
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from nmt.attention import band, flash
from nmt.attention.masks import MaskSpec

log = logging.getLogger(__name__)


class AttentionBackendError(RuntimeError):
    """A backend was asked for something it cannot compute; the message says what and what to use instead."""


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    group = q.size(1) // k.size(1)
    k = k.repeat_interleave(group, dim=1)  # (B, n_heads, k_len, head_dim)
    v = v.repeat_interleave(group, dim=1)  # (B, n_heads, k_len, head_dim)
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
    empty = ~attn_mask.any(dim=-1, keepdim=True)  # (B or 1, 1, q_len, 1)
    first_key = torch.zeros_like(attn_mask[..., :1, :])
    first_key[..., 0] = True
    return attn_mask | (empty & first_key), empty


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
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
    """Batched matmuls without copying K/V per head group: for few queries (decoding steps), where SDPA's fused
    CPU kernel pads the queries to its block and runs up to 2x slower (4 queries over 34 keys, B 64: 572 vs 276 µs in
    scripts/matmul_crossover.py)."""
    B, n_heads, q_len, head_dim = q.shape
    n_kv_heads, k_len = k.size(1), k.size(2)
    group = n_heads // n_kv_heads
    # A group's heads read the same K/V head, so they become extra query rows of it (no repeat_interleave).
    qg = q.reshape(B, n_kv_heads, group * q_len, head_dim)  # (B, n_kv_heads, group · q_len, head_dim)
    scores = (qg @ k.transpose(-2, -1)) * head_dim**-0.5  # (B, n_kv_heads, group · q_len, k_len)
    allowed = mask.dense(q.device)
    empty = None
    if allowed is not None:
        scores = scores.view(B, n_kv_heads, group, q_len, k_len)  # (B, n_kv_heads, group, q_len, k_len)
        # A finite fill keeps rows with nothing to attend free of NaN, forward and backward; they are zeroed below.
        scores = scores.masked_fill_(~allowed[:, :, None], torch.finfo(scores.dtype).min)
        scores = scores.view(B, n_kv_heads, group * q_len, k_len)
        empty = ~allowed.any(-1, keepdim=True)  # (B or 1, 1, q_len, 1)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    out = (weights @ v).view(B, n_heads, q_len, head_dim)  # (B, n_heads, q_len, head_dim)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out, None


# Where matmul_attention beats SDPA's fused kernel on CPU without gradients: 2 or more queries and q_len · k_len up to
# this (`python scripts/matmul_crossover.py`: B 64, 4 heads of 32, 2 threads: 4-16 queries over 34 keys, 4-8 over
# 128; at one query the two are within noise of each other).
MATMUL_MAX_SCORES = 1024

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


def flex_attention_backend(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    block_mask = flex_block_mask(mask, q.size(0), q.device)
    out = _flex_kernel(q, mask)(q, k, v, block_mask=block_mask, enable_gqa=k.size(1) != q.size(1))
    return out, None


BACKEND_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, Optional[Tensor]]]] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
    "flex": flex_attention_backend,
    "flash": flash.flash_attention,
    "band": band.band_attention,
    "matmul": matmul_attention,
}


def static_problem(backend: str, device: torch.device, dtype: torch.dtype, needs_grad: bool) -> Optional[str]:
    """Why ``backend`` cannot run on this device/dtype/mode at all, or None. Checked before any compute."""
    if backend == "flex" and device.type == "cpu" and needs_grad:
        return f"backend 'flex' has no backward pass on CPU in torch {torch.__version__}; use sdpa or math to train"
    if backend == "flash":
        return flash.device_problem(device, dtype)
    return None


def call_problem(backend: str, mask: MaskSpec, dropout_p: float, head_dim: int) -> Optional[str]:
    """Why ``backend`` cannot compute this particular call (its mask, dropout, head size), or None."""
    if backend == "flex" and dropout_p > 0:
        return f"backend 'flex' cannot apply attention dropout (dropout={dropout_p}); use sdpa or dropout 0"
    if backend == "flash":
        return flash.mask_problem(mask) or flash.dropout_problem(dropout_p) or flash.head_dim_problem(head_dim)
    if backend == "band":
        return band.mask_problem(mask)
    return None


_logged_choices: set[tuple] = set()


def band_wins(mask: MaskSpec) -> bool:
    """Where the band kernel beats SDPA's fused kernel on CPU (forward+backward on 2 cores, windows of 8, 64 and 256;
    e.g. `nmt bench attention --window 64 --variants window-64 --backends sdpa band --lengths 256 512 1024`, with
    `--causal` for the decoder): a plain window over a sequence at least 512 long and 8 (causal) or 16
    (bidirectional: three key blocks per query block) windows long; below that the fused full kernel is faster."""
    if mask.window is None or mask.global_tokens or band.mask_problem(mask) or band.is_decoding_step(mask):
        return False
    return mask.k_len >= max(512, (8 if mask.causal else 16) * mask.window)


def choose_backend(site: str, q: Tensor, mask: MaskSpec, dropout_p: float, needs_grad: bool = True) -> str:
    """``auto``: the fastest backend that supports this site's mask, device and dtype (logged once per choice).

    On CPU that is sdpa (its fused kernel covers every mask with a backward pass, while flex has no backward and is
    compiled per shape), except band for sliding windows over sequences long enough that O(n·w) wins, and matmul for
    the few queries of a decoding step. On CUDA a flash kernel where it can express the mask, compiled flex for
    windowed or sparse masks (it skips masked blocks), sdpa otherwise.
    """
    device, dtype = q.device, q.dtype
    windowed = mask.window is not None
    if device.type != "cuda" and band_wins(mask):
        choice, why = "band", f"CPU: window {mask.window} over {mask.k_len} positions, O(n·w) band beats full SDPA"
    elif device.type != "cuda" and not needs_grad and mask.q_len > 1 and mask.q_len * mask.k_len <= MATMUL_MAX_SCORES:
        choice, why = "matmul", "CPU inference, a few queries: batched matmuls beat SDPA's blocked kernel"
    elif device.type != "cuda":
        choice, why = "sdpa", "CPU: fused SDPA kernel for every mask, forward and backward"
    elif flash.device_problem(device, dtype) is None and call_problem("flash", mask, dropout_p, q.size(-1)) is None:
        choice, why = "flash", f"CUDA {dtype}: flash kernel ({flash.kernel_name()})"
    elif windowed and dropout_p == 0:
        choice, why = "flex", "CUDA windowed/sparse mask: FlexAttention skips masked blocks"
    else:
        choice, why = "sdpa", f"CUDA {dtype}: SDPA picks its fused kernel"
    key = (site, choice, device.type, dtype, windowed)
    if key not in _logged_choices:
        _logged_choices.add(key)
        log.info("attention %s: auto picked %s (%s)", site, choice, why)
    return choice


def attend(
    backend: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: MaskSpec,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    site: str = "attention",
) -> tuple[Tensor, Optional[Tensor]]:
    """Run one attention call on the named backend (``auto`` resolved here), checking support before compute."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if need_weights and backend != "math":
        raise AttentionBackendError(
            f"attention {site}: only backend 'math' returns attention weights (asked of {backend!r})"
        )
    if backend == "auto":
        backend = choose_backend(site, q, mask, dropout_p, needs_grad)
    problem = static_problem(backend, q.device, q.dtype, needs_grad) or call_problem(
        backend, mask, dropout_p, q.size(-1)
    )
    if problem is not None:
        raise AttentionBackendError(f"attention {site}: {problem}")
    return BACKEND_FUNCTIONS[backend](q, k, v, mask, dropout_p, need_weights)
