"""The decoding flags of ``nmt translate``, ``nmt evaluate`` and ``nmt analyze`` (which has no ``--nbest`` or
``--dtype``), declared once from DecodeConfig's fields so the commands cannot drift, and the checks that turn a bad
value into one line naming the flag.

``--beam`` defaults to 5, or to 1 with ``--sampling`` (sampling draws one hypothesis); ``--sampling`` with an
explicit ``--beam`` above 1 is an error naming both flags. ``--max-source-len`` defaults to 1024 subwords in both
commands: longer sources are truncated with a warning (validation BLEU during training truncates at the larger of 1024
and data.max_len, so it translates whole every source training would keep). Imports no torch at module level.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, fields

from nmt.config import DecodeConfig
from nmt.errors import plural
from nmt.precision import DTYPES

DEFAULT_BEAM = 5
DEFAULT_BATCH_TOKENS = 4096
# Both commands truncate the same: `nmt translate` + sacreBLEU scores what `nmt evaluate` scores. 1024 subwords cuts
# no realistic test sentence (250 did: an evaluation silently lost content that a translation kept).
MAX_SOURCE_LEN = 1024

HELP = {
    "beam": f"beam size (default {DEFAULT_BEAM}; 1 is greedy search; --sampling implies 1)",
    "nbest": "N > 1: the N best hypotheses of each line as Moses n-best lines, index ||| text ||| score (N <= --beam; "
             "nmt evaluate writes them to REPORT/nbest.txt and scores the best)",
    "length_penalty": "GNMT's alpha: a hypothesis scores log P / ((5 + length) / 6)^alpha",
    "max_len_a": "maximum output length: a * source subwords + b",
    "max_len_b": "maximum output length: a * source subwords + b",
    "min_len": "no end of sentence before this many subwords",
    "sampling": "draw each next subword at random (with --top-k, --top-p, --temperature, --seed) instead of searching",
    "top_k": "sample among the k most likely subwords (0: all)",
    "top_p": "sample among the most likely subwords whose probabilities add up to p (nucleus sampling)",
    "temperature": "divide the logits by this before sampling",
    "seed": "seed of the sampling generator",
}


class FlagError(ValueError):
    """A command-line value that cannot be used; the message names the flag."""


def flag(name: str) -> str:
    """The flag of a DecodeConfig field: max_len_b → --max-len-b."""
    return "--" + name.replace("_", "-")


def to_flags(message: str) -> str:
    """A DecodeConfig message with its config keys (decode.max_len_b) written as flags (--max-len-b)."""
    return re.sub(r"\bdecode\.([a-z_]+)", lambda m: flag(m.group(1)), message)


EXCLUDABLE = ("nbest", "dtype")


def add_decode_flags(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """DecodeConfig's fields as flags (defaults from DecodeConfig, but --beam's), and the batching, source-length,
    device and dtype flags the decoding commands share. ``exclude`` leaves out flags of EXCLUDABLE that a command has
    no use for (``nmt analyze`` decodes one float32 hypothesis per line), so giving them is an error rather than
    silently ignored; ``decode_config`` then takes the field's default. Raises ValueError for any other name."""
    if not set(exclude) <= set(EXCLUDABLE):
        raise ValueError(f"add_decode_flags: exclude {sorted(set(exclude) - set(EXCLUDABLE))} is not one of "
                         f"{list(EXCLUDABLE)}")
    group = parser.add_argument_group("decoding")
    for field in fields(DecodeConfig):
        if field.name in exclude:
            continue
        default = field.default if field.default is not MISSING else None
        if field.name == "beam":
            group.add_argument("--beam", type=int, default=None, help=HELP["beam"])
        elif isinstance(default, bool):
            group.add_argument(flag(field.name), action="store_true", help=HELP.get(field.name))
        else:
            group.add_argument(flag(field.name), type=type(default), default=default,
                               help=f"{HELP.get(field.name, '')} (default {default})".strip())
    group.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                       help=f"source subwords per batch (default {DEFAULT_BATCH_TOKENS})")
    group.add_argument("--max-source-len", type=int, default=MAX_SOURCE_LEN,
                       help=f"longer sources are truncated, with a warning (default {MAX_SOURCE_LEN} subwords)")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    if "dtype" not in exclude:
        group.add_argument("--dtype", choices=DTYPES, default="float32",
                           help="number format of the model: float32 (default); bfloat16; int8 (CPU: linear layers "
                                "dynamically quantized); auto: bfloat16 where the CPU has bf16 matrix instructions "
                                "(AMX, AVX512-BF16, Arm BF16) or the GPU has bf16, float32 elsewhere")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """The DecodeConfig the flags ask for; FlagError naming the flag(s) when they cannot be used together."""
    if args.sampling and args.beam is not None and args.beam != 1:
        raise FlagError(f"--sampling draws one hypothesis per line: it cannot be combined with --beam {args.beam} "
                        "(leave --beam out, or give --beam 1)")
    nbest = getattr(args, "nbest", DecodeConfig.nbest)
    if args.sampling and nbest != 1:
        raise FlagError(f"--sampling draws one hypothesis per line: --nbest {nbest} needs beam search "
                        "(leave --sampling out)")
    for name in ("batch_tokens", "max_source_len"):
        if getattr(args, name) < 1:
            raise FlagError(f"{flag(name)} ({getattr(args, name)}) must be >= 1")
    values = {f.name: getattr(args, f.name) for f in fields(DecodeConfig) if hasattr(args, f.name)}
    if values["beam"] is None:
        values["beam"] = 1 if args.sampling else DEFAULT_BEAM
    try:
        return DecodeConfig(**values)
    except ValueError as error:
        raise FlagError(to_flags(str(error))) from None


def check_device(name: str) -> str:
    """``name`` when torch can run there; FlagError naming --device otherwise (an unknown name, no CUDA or MPS, a
    CUDA index beyond the visible devices)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlagError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FlagError(f"--device {name}: no CUDA device is visible on this machine; use --device cpu")
        if device.index is not None and device.index >= count:
            raise FlagError(f"--device {name}: only {plural(count, 'CUDA device')} visible "
                            f"(cuda:0 … cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise FlagError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise FlagError(f"--device {name}: nmt runs on cpu, cuda or mps")
    return name


def check_dtype(dtype: str, device: str) -> str:
    """``dtype`` when it can run on ``device``; FlagError for int8 off the CPU (torch's dynamic quantization has CPU
    kernels only)."""
    if dtype == "int8" and not device.startswith("cpu"):
        raise FlagError(f"--dtype int8 runs on the CPU (torch's dynamic quantization has CPU kernels only), not "
                        f"--device {device}: use --dtype bfloat16 or float32 there")
    return dtype
