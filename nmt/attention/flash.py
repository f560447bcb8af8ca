"""The ``flash`` backend: flash-attn's varlen kernel when it imports, else PyTorch's FlashAttention-2 through SDPA
(Dao 2023, FlashAttention-2; flash-attn's ``flash_attn_varlen_func`` interface).

Never a silent fallback to another algorithm: where neither kernel can run (CPU, fp32, a mask flash cannot express)
the caller gets an AttentionBackendError naming what is missing. The registry entry (`nmt.attention.backends`)
declares what every flash kernel lacks; `device_problem` and `call_problem` here add what depends on the GPU and on
which kernel imports.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from nmt.attention.masks import MaskSpec

log = logging.getLogger(__name__)


@functools.cache
def _varlen_kernel() -> tuple[Optional[Callable], str]:
    """(flash_attn_varlen_func, name) from flash-attn 2, else flash-attn 4 (``flash_attn.cute``), else (None, sdpa)."""
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func, "flash-attn 2 varlen"
    except ImportError:
        pass
    try:
        from flash_attn.cute import flash_attn_varlen_func as fa4_varlen

        def fa4(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, causal=False, window_size=(-1, -1)):
            # flash-attn 4 spells an unbounded side None and returns (out, lse).
            left, right = (None if side < 0 else side for side in window_size)
            out = fa4_varlen(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal, window_size=(left, right))
            return out[0] if isinstance(out, tuple) else out

        return fa4, "flash-attn 4 (cute) varlen"
    except ImportError:
        return None, "torch SDPA FlashAttention-2"


def kernel_name() -> str:
    return _varlen_kernel()[1]


def device_problem(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The registry's device check: flash kernels need compute capability 8.0 (Ampere) or later. The registry has
    already checked that ``device`` is CUDA and ``dtype`` fp16/bf16."""
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return (f"backend 'flash' needs a GPU of compute capability >= 8.0 "
                f"(this one has {capability[0]}.{capability[1]})")
    return None


def head_dim_problem(head_dim: int) -> Optional[str]:
    if head_dim > 256 or head_dim % 8:
        return f"backend 'flash' needs head_dim <= 256 and a multiple of 8 (got {head_dim})"
    return None


def _offsets_aligned(mask: MaskSpec) -> bool:
    """flash aligns causal masks and windows bottom-right per sequence; ours follow absolute positions."""
    offset = mask.q_start - mask.k_start
    if mask.q_lengths is None and mask.k_lengths is None:
        return mask.k_len - mask.q_len == offset
    if mask.q_lengths is None or mask.k_lengths is None:
        return False
    return bool(((mask.k_lengths - mask.q_lengths) == offset).all())


def mask_problem(mask: MaskSpec) -> Optional[str]:
    """What the kernel that will run cannot express of this mask (global tokens are refused by the registry)."""
    if _varlen_kernel()[0] is not None:
        if (mask.causal or mask.window is not None) and not _offsets_aligned(mask):
            return (
                "backend 'flash' aligns causal masks and windows bottom-right, and this call's query/key offsets "
                "differ (a windowed cross-attention?); use flex or sdpa at this site"
            )
        return None
    if mask.is_full or mask.is_plain_causal:
        return None
    return (
        "backend 'flash' without the flash-attn package runs torch SDPA's flash kernel, which takes no padding or "
        "window masks; install flash-attn (pip install -e '.[flash]') or use sdpa/flex at this site"
    )


def dropout_problem(dropout_p: float) -> Optional[str]:
    if dropout_p > 0 and _varlen_kernel()[1].startswith("flash-attn 4"):
        return f"flash-attn 4 has no attention dropout (dropout={dropout_p}); use dropout 0 or sdpa"
    return None


def call_problem(mask: MaskSpec, dropout_p: float, head_dim: int) -> Optional[str]:
    """The registry's call check: what only this module knows (which kernel imports, how it aligns masks)."""
    return mask_problem(mask) or dropout_problem(dropout_p) or head_dim_problem(head_dim)


def window_size(mask: MaskSpec) -> tuple[int, int]:
    """flash's inclusive (left, right) window, -1 for unbounded; ours lets distance < window through."""
    left = -1 if mask.window is None else mask.window - 1
    right = 0 if mask.causal else left
    return left, right


def _cu_seqlens(lengths: Tensor) -> Tensor:
    return F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def varlen_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float, kernel: Callable
) -> Tensor:
    """Pack the real tokens of a padded batch, run a varlen kernel on them, scatter back (padded rows are zero).

    ``kernel`` has flash_attn_varlen_func's signature: packed q (total_q, n_heads, head_dim), k, v
    (total_k, n_kv_heads, head_dim), int32 cumulative lengths cu_seqlens (B + 1,). Returns (B, n_heads, T, head_dim).
    """
    B, n_heads, q_len, head_dim = q.shape
    device = q.device
    q_lengths = mask.q_lengths if mask.q_lengths is not None else torch.full((B,), q_len)
    k_lengths = mask.k_lengths if mask.k_lengths is not None else torch.full((B,), k.size(2))
    q_lengths, k_lengths = q_lengths.to(device), k_lengths.to(device)
    q_real = torch.arange(q_len, device=device)[None, :] < q_lengths[:, None]  # (B, q_len)
    k_real = torch.arange(k.size(2), device=device)[None, :] < k_lengths[:, None]  # (B, k_len)
    q_packed = q.transpose(1, 2)[q_real]  # (total_q, n_heads, head_dim)
    k_packed = k.transpose(1, 2)[k_real]  # (total_k, n_kv_heads, head_dim)
    v_packed = v.transpose(1, 2)[k_real]  # (total_k, n_kv_heads, head_dim)
    out_packed = kernel(
        q_packed,
        k_packed,
        v_packed,
        _cu_seqlens(q_lengths),
        _cu_seqlens(k_lengths),
        q_len,
        k.size(2),
        dropout_p=dropout_p,
        causal=mask.causal,
        window_size=window_size(mask),
    )
    # A sequence without keys has nothing to attend: zeros, whatever the kernel left there.
    q_real_with_keys = q_real & (k_lengths > 0)[:, None]
    out = q.new_zeros(B, q_len, n_heads, head_dim)
    out[q_real_with_keys] = out_packed[q_real_with_keys[q_real]].to(q.dtype)
    return out.transpose(1, 2)  # (B, n_heads, q_len, head_dim)


_logged = False


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """The flash backend's kernel (kernel signature: `nmt.attention.kernels`)."""
    global _logged
    kernel, name = _varlen_kernel()
    if not _logged:
        _logged = True
        log.info("attention backend 'flash' runs %s", name)
    if kernel is not None:
        return varlen_attention(q, k, v, mask, dropout_p, kernel), None
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=mask.is_plain_causal, enable_gqa=k.size(1) != q.size(1)
        )
    return out, None
