"""Which number format fits the hardware: ``trainer.precision=auto`` and ``nmt translate --dtype auto``.

bf16 pays on a CPU only where the CPU has bf16 matrix instructions — Intel AMX (``amx_bf16``, Sapphire Rapids on)
or AVX512-BF16 (``avx512_bf16``: Cooper Lake, Zen 4 on), or Arm's BF16 extension (``bf16``, e.g. Graviton 3);
elsewhere oneDNN emulates it and a bf16 matmul runs slower than fp32. So ``auto`` reads the CPU's flags (Linux:
/proc/cpuinfo; macOS: sysctl) instead of assuming, and says what it found. On CUDA, ``auto`` is bf16 where the GPU
has it (Ampere on) and fp16 mixed precision elsewhere. Imports no torch at module level.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Optional

BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX512-BF16, Arm FEAT_BF16 (cpuinfo "Features")
# Lightning's precision values (lightning.fabric.connector._PRECISION_INPUT_STR) and ours.
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true",
              "64", "transformer-engine", "transformer-engine-float16")
DTYPES = ("auto", "float32", "bfloat16", "int8")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> Optional[set[str]]:
    """The CPU's feature flags, lower case: the ``flags`` (x86) or ``Features`` (Arm) line of ``cpuinfo`` on Linux,
    the ``hw.optional.arm.FEAT_*`` sysctls set to 1 on macOS (``FEAT_BF16`` → ``bf16``); None where neither can be
    read (the caller then assumes no bf16)."""
    path = Path(cpuinfo)
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return set(value.lower().split())
        return set()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "hw.optional.arm"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return {line.split(":")[0].rsplit("FEAT_", 1)[-1].lower()
                for line in out.splitlines() if "FEAT_" in line and line.strip().endswith(": 1")}
    return None


def cpu_bf16(flags: Optional[set[str]] = None) -> tuple[bool, str]:
    """(whether the CPU has bf16 matrix instructions, why in words naming the flags seen): reads ``cpu_flags()``
    unless ``flags`` is given (tests pass them)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return False, "the CPU's flags could not be read"
    found = [flag for flag in BF16_FLAGS if flag in flags]
    if found:
        return True, f"the CPU has {', '.join(found)}"
    vector = sorted(flag for flag in flags if flag.startswith(("avx", "amx", "sve", "asimd")))
    vector_flags = ", ".join(vector) or "none"
    return False, f"the CPU has no {', '.join(BF16_FLAGS[:2])} or Arm bf16; its vector flags: {vector_flags}"


def emulated_bf16(device: str) -> Optional[str]:
    """Why bf16 would be emulated on ``device`` (a CPU without bf16 matrix instructions: ``cpu_bf16``'s reason), or
    None where it is not (a CPU with them; GPUs, which nmt.decoding.dtypes checks itself)."""
    if not device.startswith("cpu"):
        return None
    has, why = cpu_bf16()
    return None if has else why


def cuda_bf16(device: str = "cuda") -> bool:
    """Whether the CUDA GPU ``device`` (cuda or cuda:N) computes bf16 in hardware: compute capability 8.0 (Ampere)
    or newer. ``torch.cuda.is_bf16_supported()`` also says True where bf16 is only emulated (V100, T4)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def resolve_precision(precision: str, accelerator: str) -> tuple[str, str]:
    """``trainer.precision`` as Lightning takes it, and why: ``auto`` becomes bf16-mixed on a CPU with bf16 matrix
    instructions, else 32-true; on CUDA bf16-mixed where the GPU has bf16 units (Ampere on), else 16-mixed; on MPS
    (asked for, or what ``auto`` finds on a Mac) 32-true; anything else is returned as given. ``accelerator`` is
    trainer.accelerator (cpu, gpu, cuda, mps or auto)."""
    if precision != "auto":
        return precision, "as configured"
    import torch

    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return ("bf16-mixed", "the GPU has bf16 units") if cuda_bf16() else ("16-mixed", "the GPU has no bf16 units")
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "32-true", "MPS: fp32"
    has, why = cpu_bf16()
    return ("bf16-mixed" if has else "32-true"), why


def resolve_dtype(dtype: str, device: str) -> tuple[str, str]:
    """``nmt translate --dtype`` on ``device``: one of float32, bfloat16, int8, and why. ``auto`` is bfloat16 on a
    CPU with bf16 matrix instructions or a CUDA GPU with bf16 units, else float32 — the format the hardware computes
    fastest without quantizing; int8, a lossier format (see docs/performance.md), is asked for by name."""
    if dtype != "auto":
        return dtype, "as asked"
    if device.startswith("cuda"):
        return ("bfloat16", "the GPU has bf16 units") if cuda_bf16(device) else ("float32", "the GPU has no bf16 units")
    if device.startswith("mps"):
        return "float32", "MPS: fp32"
    has, why = cpu_bf16()
    return ("bfloat16" if has else "float32"), why
