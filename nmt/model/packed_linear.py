"""Linear layers at CPU inference through oneDNN, with their weights packed once.

(rows, d_model) × (d_model, vocab) is the largest product of a decoding step. On the CPU, torch's ``F.linear`` runs
it through MKL's sgemm; oneDNN with the weight reordered ahead of time into its blocked layout (what torch.compile's
CPU freezing does) runs the same product 1.3–1.6× as fast on the project's AVX2 CPU (`python
scripts/packed_linear.py`). On its AVX-512 (Zen 4) CPU the packed path also runs the attention input and
feed-forward projections of the `small` model faster, 1.02–1.33× at 64 to 1,024 rows, 1 and 2 threads (`python
scripts/packed_linear.py --threads T --d-model D_IN --vocab D_OUT --rows 64 320 1024` for 256 → 768, 256 → 1,024 and
1,024 → 256), so those are PackedLinear too, packed on CPUs with AVX-512; the square 256 → 256 products (the
attention output projection and cross-attention's query projection) ran 0.89–0.92× at a decoding step's 64 rows and
stay ``nn.Linear``.
oneDNN's call costs ~20 µs more than `F.linear`'s, which small products do not earn back: a `PackedLinear` packs
only a weight of at least MIN_PACKED_WEIGHT elements in a call of at least MIN_PACKED_MACS multiply-adds (1 thread,
Zen 4: 256 → 768 over 1 row ran 0.52× packed, over 8 to 64 rows 0.98–1.06×; 128 → 384 lost at every row count up to
64, 0.22–0.86×; 256 → 8,000 and 128 → 8,000 won from 1 row, 1.09–2.31×).
The packed copy is kept per weight and rebuilt when the weight changes (an optimizer step, a load, a move), so
validation during training and decoding after it see the current weights. Training, autograd, autocast and other devices
or dtypes take ``F.linear``.
"""

from __future__ import annotations

import functools
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _available() -> bool:
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
    except (AttributeError, RuntimeError):
        return False


AVAILABLE = _available()
MIN_PACKED_WEIGHT = 256 * 768  # elements: the smallest weight measured to gain (module docstring)
MIN_PACKED_MACS = 2**20  # multiply-adds per call (rows · d_in · d_out), below which the call's overhead dominates

# id(weight) → (weak reference to it, (data_ptr, version, shape), packed weight), dropped with the weight; kept here
# rather than on the model, which then holds no opaque oneDNN tensor (those cannot be deep-copied). Keyed by id:
# a WeakKeyDictionary would compare tensors with == on a hash collision.
_packed: dict[int, tuple[weakref.ref, tuple, Tensor]] = {}


def packs(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
    """Whether ``linear(x, weight, bias)`` takes the packed oneDNN path (which has no autograd: never where a
    gradient is wanted, of the bias either)."""
    # plain conditions, no generators: this runs for every packed layer at every decoding step
    return (AVAILABLE and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32)
            and not weight.is_inference()  # no version counter to notice in-place changes by
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad))))


@functools.cache
def avx512() -> bool:
    """The CPU has AVX-512 (``avx512f``), where packing also paid for the smaller projections (module docstring)."""
    from nmt.precision import cpu_flags

    return "avx512f" in (cpu_flags() or set())


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x (..., d_in), weight (d_out, d_in), bias (d_out,) or None → (..., d_out)."""
    if not packs(x, weight, bias):
        return F.linear(x, weight, bias)
    key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cached = _packed.get(id(weight))
    if cached is None or cached[0]() is not weight or cached[1] != key:
        if cached is None or cached[0]() is not weight:
            weakref.finalize(weight, _packed.pop, id(weight), None)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        cached = _packed[id(weight)] = weakref.ref(weight), key, packed
    rows = x.reshape(-1, x.size(-1)).contiguous()  # (rows, d_in)
    out = torch.ops.mkldnn._linear_pointwise(rows, cached[2], bias, "none", [], "")  # (rows, d_out)
    return out.view(*x.shape[:-1], weight.size(0))


class PackedLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose CPU inference runs packed; with ``avx512_only``, only on
    a CPU with AVX-512 (the attention input and feed-forward projections: on the AVX2 CPU a decoding step's products
    gained nothing from packing, which would then only hold a second copy of the weight). Weights and calls below
    MIN_PACKED_WEIGHT and MIN_PACKED_MACS take ``F.linear``: there oneDNN's per-call cost outweighs the gain."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, avx512_only: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.avx512_only = avx512_only

    def forward(self, x: Tensor) -> Tensor:
        small = self.in_features * self.out_features < MIN_PACKED_WEIGHT or \
            x.numel() * self.out_features < MIN_PACKED_MACS
        if small or (self.avx512_only and not avx512()):
            return F.linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)
