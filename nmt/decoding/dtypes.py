"""A loaded model in the number format decoding asks for (``--dtype``): float32, bfloat16 or int8.

int8 is dynamic quantization (Jacob et al. 2018; torch's ``torch.ao.quantization.quantize_dynamic``): every linear
layer's weight stored as int8 with one scale per output row (as CTranslate2's int8), the activations quantized per
call, the product computed by fbgemm's int8 kernels (x86; qnnpack on Arm); embeddings, layer norms and attention
stay float32. It is the path with real CPU kernels in eager mode in torch 2.13: torchao 0.18's
``Int8DynamicActivationInt8WeightConfig`` ran decoding-step products 25-40x slower than float32 without
``torch.compile`` on this project's CPU, where torch's ran them 1.7-3x faster (``python scripts/int8_linear.py``
with torchao installed). torch has marked its quantized tensors deprecated (pytorch/pytorch#184982) without removing
them; a torch without them gets a one-line error naming the flag.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from nmt.decoding.flags import FlagError, check_dtype
from nmt.model import Seq2Seq
from nmt.model.packed_linear import PackedLinear
from nmt.precision import cuda_bf16, emulated_bf16, resolve_dtype

log = logging.getLogger(__name__)


class DtypeError(FlagError):
    """A --dtype this device or torch cannot decode in; the message names the flag."""


def inference_model(model: Seq2Seq, dtype: str, device: str) -> tuple[Seq2Seq, str]:
    """(``for_inference`` of ``model``, the dtype it is in) with ``auto`` resolved (nmt.precision.resolve_dtype) and
    the choice logged as a warning, which the commands print on stderr; so is an explicit bfloat16 on a CPU that
    only emulates it (auto never picks it there), since it then decodes slower than float32."""
    picked, why = resolve_dtype(dtype, device)
    if dtype == "auto":
        log.warning("--dtype auto: %s (%s)", picked, why)
    elif picked == "bfloat16" and (emulated := emulated_bf16(device)) is not None:
        log.warning("--dtype bfloat16: this CPU shows no bf16 matrix instructions (%s), so bf16 is emulated and "
                    "decodes slower than float32 (docs/performance.md)", emulated)
    return for_inference(model, picked, device), picked


def for_inference(model: Seq2Seq, dtype: str, device: str) -> Seq2Seq:
    """``model`` in ``dtype``, never changing ``model`` itself: float32 returns ``model`` (the same object: nothing
    to convert, and no second copy of the weights for the common case), bfloat16 a copy cast to bf16, int8 a
    quantized copy (CPU only). DtypeError for int8 off the CPU or without torch's dynamic quantization, and for
    bfloat16 on a CUDA GPU without it."""
    if dtype == "float32":
        return model
    if dtype == "bfloat16":
        if device.startswith("cuda") and not cuda_bf16(device):
            raise DtypeError(f"--dtype bfloat16: this GPU ({torch.cuda.get_device_name(device)}) has no bf16 units "
                             "(before Ampere); use --dtype float32")
        return _bf16_copy(model)
    if dtype == "int8":
        return quantize_int8(model, device)
    raise DtypeError(f"--dtype {dtype!r}: choose auto, float32, bfloat16 or int8")


def _bf16_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its floating-point parameters and buffers in bf16, made without a float32 copy
    first: the deep copy is handed each tensor's bf16 version (tied weights stay tied; ``model`` is untouched).
    Peak memory grows by the bf16 weights only (half the float32 ones), not by a float32 copy and then bf16."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in memo or not tensor.is_floating_point():
            continue
        cast = tensor.detach().to(torch.bfloat16)
        memo[id(tensor)] = nn.Parameter(cast, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else cast
    return copy.deepcopy(model, memo)


def quantize_int8(model: nn.Module, device: str = "cpu") -> nn.Module:
    """A copy of ``model`` whose linear layers (attention projections, feed-forward, output projection) hold
    int8 weights: ``torch.ao.quantization.quantize_dynamic`` with a scale per output row
    (per_channel_dynamic_qconfig). The output projection shares its weight with the target embedding when tied;
    the copy quantizes the projection and keeps the embedding float32."""
    check_dtype("int8", device)
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:  # pragma: no cover - a future torch without torch.ao quantization
        raise DtypeError(f"--dtype int8 needs torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} "
                         "lacks; use --dtype float32 (or nmt export ct2 --quantization int8)") from None
    if torch.backends.quantized.engine == "none":
        raise DtypeError("--dtype int8: this torch build has no quantized engine (fbgemm, x86 or qnnpack)")
    with warnings.catch_warnings():
        # torch 2.13 warns on every quantized tensor it creates that such tensors are deprecated (see the module
        # docstring): a warning per layer that says nothing a user can act on.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return quantize_dynamic(_plain_linears(copy.deepcopy(model).cpu()), {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, mapping={nn.Linear: DynamicLinear}, inplace=True).eval()


def _plain_linears(model: nn.Module) -> nn.Module:
    """``model`` with every PackedLinear a plain nn.Linear over the same parameters: PackedLinear computes the same,
    but quantize_dynamic converts only modules whose class is nn.Linear itself."""
    for parent in list(model.modules()):
        for name, packed in list(parent.named_children()):
            if isinstance(packed, PackedLinear):
                plain = nn.Linear(packed.in_features, packed.out_features, bias=packed.bias is not None,
                                  device="meta")  # its parameters are replaced below: nothing to allocate
                plain.weight = packed.weight
                if packed.bias is not None:
                    plain.bias = packed.bias
                setattr(parent, name, plain)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored: its parameters (tied ones once, as Seq2Seq.parameter_count counts
    them), plus the int8 weights and float32 biases of dynamically quantized linear layers, which are not
    parameters."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    for module in model.modules():
        if hasattr(module, "_packed_params") and hasattr(module, "weight") and callable(module.weight):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size() + (0 if bias is None else bias.numel() * 4)
    return total
