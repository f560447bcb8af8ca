"""The backend registry: one entry per attention backend, with what it can do as plain data.

The config checks (`AttentionConfig`, `ModelConfig` per site), `Attention`'s constructor, the call-time checks
before every kernel call and ``auto``'s choice all read `REGISTRY`, so each rule about what a backend supports is
written once: as a field of its entry here. Adding a backend is one kernel module plus one line in `REGISTRY`.

This module imports no torch (the config modules need it, and `nmt train` checks a config before loading torch):
kernels and kernel-specific checks are named ``"module:function"`` and imported on first use. The checks take
torch objects (devices, dtypes, a MaskSpec) but only read their attributes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Optional

ANY_DEVICE = ("cpu", "cuda")
SHORT_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


class AttentionBackendError(RuntimeError):
    """A backend was asked for something it cannot compute; the message says what and what to use instead."""


@dataclass(frozen=True)
class Backend:
    """One attention backend: its kernel and its capabilities.

    kernel: ``"module:function"`` with the kernel signature of `nmt.attention.kernels` (imported on first use).
    why: one clause naming what the kernel computes, which explains its limits (it ends each refusal's message).
    instead: the backends to suggest where this one cannot run.
    devices: device types it runs on; backward: those on which it also has a backward pass.
    dtypes: the only input dtypes it takes (torch names, e.g. ``"bfloat16"``), or () for any.
    dropout, global_tokens: whether it applies attention dropout / global tokens.
    needs_window: it computes sliding windows only.
    cross, cross_window: whether it may serve a cross-attention site / a windowed one.
    weights: whether it returns the attention weights (``need_weights``).
    full_scores: it holds every (query, key) score of a call at once (B·n_heads·T·S elements), so its memory grows
        with length²; the benchmark checks such calls against free memory first.
    device_check, call_check: ``"module:function"`` for what only the kernel module knows, or None:
        ``device_check(device, dtype) -> Optional[str]`` (e.g. the GPU's compute capability) and
        ``call_check(mask, dropout_p, head_dim) -> Optional[str]`` (e.g. how the kernel aligns masks).
    """

    name: str
    kernel: str
    why: str = ""
    instead: str = "backend sdpa or auto"
    devices: tuple[str, ...] = ANY_DEVICE
    backward: tuple[str, ...] = ANY_DEVICE
    dtypes: tuple[str, ...] = ()
    dropout: bool = True
    global_tokens: bool = True
    needs_window: bool = False
    cross: bool = True
    cross_window: bool = True
    weights: bool = False
    full_scores: bool = False
    device_check: Optional[str] = None
    call_check: Optional[str] = None

    def refuse(self, limit: str) -> str:
        """A refusal: what this backend cannot do (naming the values), why, and what to use instead."""
        why = f": {self.why}" if self.why else ""
        return f"backend {self.name!r} {limit}{why}; use {self.instead}"


_KERNELS = "nmt.attention.kernels"
REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("math", f"{_KERNELS}:math_attention", weights=True, full_scores=True),
    Backend("sdpa", f"{_KERNELS}:sdpa_attention"),
    Backend("flex", f"{_KERNELS}:flex_attention_kernel", backward=("cuda",), dropout=False, instead="backend sdpa",
            why="FlexAttention takes no dropout and, on CPU, computes no gradients"),
    Backend("flash", "nmt.attention.flash:flash_attention", devices=("cuda",), dtypes=("float16", "bfloat16"),
            global_tokens=False, cross_window=False, instead="backend sdpa, flex or auto",
            why="flash kernels run on CUDA in fp16/bf16 and take only causal, window and padding masks, aligned "
                "bottom-right per sequence",
            device_check="nmt.attention.flash:device_problem", call_check="nmt.attention.flash:call_problem"),
    Backend("band", "nmt.attention.band:band_attention", needs_window=True, cross=False,
            instead="backend sdpa, flex or auto",
            why="it computes sliding-window attention (plus global tokens) only, block by block over one sequence's "
                "positions"),
    Backend("matmul", f"{_KERNELS}:matmul_attention", full_scores=True),
)}
BACKENDS = ("auto", *REGISTRY)  # the names a config may give; auto picks one of the others per call


@functools.cache
def _load(path: str) -> Callable[..., Any]:
    module, name = path.split(":")
    return getattr(import_module(module), name)


def kernel(backend: str) -> Callable[..., Any]:
    """The kernel function of a registered backend (imported on first use)."""
    return _load(REGISTRY[backend].kernel)


@functools.lru_cache(maxsize=1024)  # runs at every attention call (twice under auto): the registry is constant
def mask_problem(backend: str, *, window: Optional[int], global_tokens: int, dropout: float) -> Optional[str]:
    """Why ``backend`` cannot compute this window / global tokens / dropout, or None: checked on the config and again
    on every call (a MaskSpec carries the same window and global tokens)."""
    spec = REGISTRY.get(backend)
    if spec is None:
        return None
    if not spec.dropout and dropout > 0:
        return spec.refuse(f"cannot apply attention dropout (dropout={dropout})") + " or dropout 0"
    if spec.needs_window and window is None:
        return spec.refuse("needs a window (window=None)")
    if not spec.global_tokens and global_tokens > 0:
        return spec.refuse(f"cannot express global tokens (global_tokens={global_tokens})")
    return None


def site_problem(backend: str, *, window: Optional[int], cross: bool) -> Optional[str]:
    """Why ``backend`` cannot serve this site (only the model knows whether a site is cross-attention), or None."""
    spec = REGISTRY.get(backend)
    if spec is None or not cross:
        return None
    if not spec.cross:
        return spec.refuse("is for self-attention only (not cross-attention)")
    if not spec.cross_window and window is not None:
        return spec.refuse(f"cannot window cross-attention (window={window}) between source and target positions")
    return None


def static_problem(backend: str, device: Any, dtype: Any, needs_grad: bool) -> Optional[str]:
    """Why ``backend`` cannot run on this torch device / dtype / mode at all, or None. Checked before any compute."""
    spec = REGISTRY.get(backend)
    if spec is None:
        return None
    # Backends for any device skip reading device.type (a fresh string per read; this runs at every call).
    if spec.devices != ANY_DEVICE and device.type not in spec.devices:
        where = " or ".join(d.upper() for d in spec.devices)
        return spec.refuse(f"needs a {where} device (got {device.type})")
    if spec.dtypes and str(dtype).removeprefix("torch.") not in spec.dtypes:
        wanted = " or ".join(SHORT_DTYPES.get(d, d) for d in spec.dtypes)
        return spec.refuse(f"needs {wanted} inputs (got {dtype}; train with {wanted} precision)")
    if needs_grad and spec.backward != ANY_DEVICE and device.type not in spec.backward:
        import torch  # only reached with torch tensors in hand

        return spec.refuse(f"has no backward pass on {device.type.upper()} in torch {torch.__version__}") + " to train"
    return _load(spec.device_check)(device, dtype) if spec.device_check else None


def call_problem(backend: str, mask: Any, dropout_p: float, head_dim: int) -> Optional[str]:
    """Why ``backend`` cannot compute this particular call (its MaskSpec, dropout, head size), or None."""
    spec = REGISTRY.get(backend)
    if spec is None:
        return None
    problem = mask_problem(backend, window=mask.window, global_tokens=mask.global_tokens, dropout=dropout_p)
    if problem is None and spec.call_check:
        problem = _load(spec.call_check)(mask, dropout_p, head_dim)
    return problem


def weights_problem(backend: str) -> Optional[str]:
    """Why ``backend`` cannot return attention weights, or None."""
    if backend in REGISTRY and REGISTRY[backend].weights:
        return None
    able = " or ".join(repr(name) for name, spec in REGISTRY.items() if spec.weights)
    return f"only backend {able} returns attention weights (asked of {backend!r})"
