"""The dispatcher: `attend` checks a call against the backend registry, resolves ``auto`` and runs the kernel."""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

from nmt.attention import band, flash
from nmt.attention.backends import AttentionBackendError, call_problem, kernel, static_problem, weights_problem
from nmt.attention.masks import MaskSpec

log = logging.getLogger(__name__)

# Where matmul_attention beats SDPA's fused kernel on CPU without gradients (`python scripts/matmul_crossover.py`):
# 2 or more queries: T · S up to this (B 64, 4 heads of 32, 2 threads: 4-16 queries over 34 keys, 4-8 over 128).
MATMUL_MAX_SCORES = 1024
# One query (a decoding step's self-attention: no mask, K/V strided views of the cache): up to this many keys
# (`--step --threads 1 --head-dim 64 --q-lens 1 --k-lens 5 7 14 24 40 48 64 96`, B 64 and --batch 320, quiet
# machine: sdpa ÷ matmul 1.00-1.33 from 7 to 48 keys, 1.01-1.04 at 64, 0.92-1.01 at 96).
MATMUL_MAX_KEYS_ONE_QUERY = 48
# At least this many multiply-adds per (batch, head) product, T · S · head_dim: below it torch's CPU bmm runs its
# scalar loop instead of BLAS: at 1 query over 5 keys of 64 dims (320) matmul took 1.8-2.3x SDPA's time, from 7 keys
# (448) 0.75-1.0x (same command).
MATMUL_MIN_PRODUCT = 400
# CPU training in bf16 (autocast): T · S up to this. SDPA's fused CPU kernel runs its bf16 backward several times
# slower than its float32 one, where bf16 matmuls run ~2.5x faster than float32 ones on a CPU with AVX512-BF16
# (`python scripts/matmul_crossover.py --train --dtype bfloat16 --head-dim 64 --k-lens 8 16 32 64 128 160 192 224
# 256 [--causal]`, 4,096 positions per batch, 2 threads: sdpa ÷ matmul 1.2-7.5 up to T 224, 0.7-0.9 at 256). In
# float32, SDPA's kernel wins at every length (0.56-0.87). The cap is the longest measured win, 224 · 224; between
# 224 and 256 the two cross.
MATMUL_MAX_SCORES_BF16_TRAINING = 224 * 224

_logged_choices: set[tuple] = set()


def runs(backend: str, q: Tensor, mask: MaskSpec, dropout_p: float, needs_grad: bool) -> bool:
    """Whether the registry lets ``backend`` compute this call."""
    return (static_problem(backend, q.device, q.dtype, needs_grad) or
            call_problem(backend, mask, dropout_p, q.size(-1))) is None


def band_wins(mask: MaskSpec) -> bool:
    """Where the band kernel beats SDPA's fused kernel on CPU: a sequence at least 512 long and at least
    8 (causal) or 16 (bidirectional: three key blocks per query block) windows plus 8 global tokens long; below that
    the fused full kernel is faster.

    Windows: forward+backward on 2 cores, windows of 8, 64 and 256 (e.g. `nmt bench attention --window 64 --variants
    window-64 --backends sdpa band --lengths 256 512 1024`, with `--causal` for the decoder). Global tokens (each adds
    a key to every query block and a dense row; `python scripts/band_crossover.py --threads 1 --clock cpu`, as the
    shared 2-core machine's load made 2-thread timings noise): band overtook SDPA at about 4·g plus the window's share
    (w 8, g 128 and 256; w 64, g 256; causal and bidirectional); on that thread the window alone crossed at 4
    (causal) or 8 windows, half the 2-core rule, so the global term is doubled likewise: 8·g."""
    if call_problem("band", mask, 0.0, 0) or band.is_decoding_step(mask):
        return False
    return mask.k_len >= max(512, (8 if mask.causal else 16) * mask.window + 8 * mask.global_tokens)


def matmul_wins(mask: MaskSpec, head_dim: int) -> bool:
    """Where the matmul backend beats SDPA's fused kernel at CPU inference: few scores, but products large enough
    for BLAS (the constants above)."""
    scores = mask.q_len * mask.k_len
    if scores * head_dim < MATMUL_MIN_PRODUCT:
        return False
    return mask.k_len <= MATMUL_MAX_KEYS_ONE_QUERY if mask.q_len == 1 else scores <= MATMUL_MAX_SCORES


def choose_backend(site: str, q: Tensor, mask: MaskSpec, dropout_p: float, needs_grad: bool = True) -> str:
    """``auto``: the fastest backend that supports this site's mask, device and dtype (logged once per choice).

    On CPU that is sdpa (its fused kernel covers every mask with a backward pass, while flex has no backward and is
    compiled per shape), except band for sliding windows, with or without global tokens, over sequences long enough
    that O(n·(w + g)) wins (`band_wins`), matmul for the few queries of a decoding step over few keys
    (`matmul_wins`), and matmul for bf16 training over up to MATMUL_MAX_SCORES_BF16_TRAINING scores. On CUDA a flash
    kernel where it can express the mask, compiled flex for windowed or sparse masks (it skips masked blocks), sdpa
    otherwise.
    """
    device, dtype = q.device, q.dtype
    windowed = mask.window is not None
    if device.type != "cuda" and band_wins(mask):
        sparse = f" + {mask.global_tokens} global tokens" if mask.global_tokens else ""
        choice, why = "band", f"CPU: window {mask.window}{sparse} over {mask.k_len} positions, O(n·(w + g)) band " \
                              "beats full SDPA"
    elif device.type != "cuda" and not needs_grad and matmul_wins(mask, q.size(-1)):
        choice, why = "matmul", "CPU inference, a few queries over few keys: batched matmuls beat SDPA's blocked kernel"
    elif (device.type != "cuda" and needs_grad and dtype == torch.bfloat16
          and mask.q_len * mask.k_len <= MATMUL_MAX_SCORES_BF16_TRAINING):
        choice, why = "matmul", (f"CPU bf16 training, ≤ {MATMUL_MAX_SCORES_BF16_TRAINING:,} scores per head: bf16 "
                                 "matmuls beat SDPA's bf16 backward")
    elif device.type != "cuda":
        choice, why = "sdpa", "CPU: fused SDPA kernel for every mask, forward and backward"
    elif runs("flash", q, mask, dropout_p, needs_grad):
        choice, why = "flash", f"CUDA {dtype}: flash kernel ({flash.kernel_name()})"
    elif windowed and runs("flex", q, mask, dropout_p, needs_grad):
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
    """Run one attention call on the named backend (``auto`` resolved here), checking support before compute.

    Shapes, dtypes and what comes back: the kernel signature in `nmt.attention.kernels`. Raises
    AttentionBackendError, naming the site, when the backend cannot compute this call.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if need_weights and weights_problem(backend):
        raise AttentionBackendError(f"attention {site}: {weights_problem(backend)}")
    if backend == "auto":
        backend = choose_backend(site, q, mask, dropout_p, needs_grad)
    problem = static_problem(backend, q.device, q.dtype, needs_grad) or call_problem(
        backend, mask, dropout_p, q.size(-1)
    )
    if problem is not None:
        raise AttentionBackendError(f"attention {site}: {problem}")
    return kernel(backend)(q, k, v, mask, dropout_p, need_weights)
