"""``nmt bench attention``: every attention variant on every backend the device has, across sequence lengths.

For each (variant, backend, length, forward | forward+backward): median time over repeats, peak memory of one call,
and the growth exponent between consecutive lengths (time ∝ length^exponent: 1 is linear, 2 quadratic). A case a
backend cannot run is a row that says why (FlexAttention has no backward on CPU; band computes plain windows
only); a case that would not fit in memory says how much it would need, and one whose call is predicted from the
shorter lengths to take more than --max-seconds says so. ``sparse-sqrt`` scales its window and global tokens with the
length (w = g = √n, so O(n·√n) kernels grow with exponent 1.5), and every row's peak memory at the longest length is
set beside what ``math`` would need there (its estimate, also when math cannot run). Then the KV-cache bytes per
decoded token of MHA, GQA and MQA, counted from the tensors a decoding layer holds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from nmt.attention import Attention, AttentionBackendError, AttentionConfig, MaskSpec, attend
from nmt.attention.backends import REGISTRY, call_problem, static_problem
from nmt.attention.dispatch import choose_backend
from nmt.bench.common import environment, markdown_table, median_seconds, parse_bench_args, peak_bytes, write_results
from nmt.decoding.flags import FlagError, check_device
from nmt.errors import UsageParser, plural

MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Variant:
    name: str
    n_kv_heads: Optional[int] = None  # None: MHA
    window: Optional[int] = None
    global_tokens: int = 0
    sqrt: bool = False  # window = global_tokens = round(√length), whatever window / global_tokens say

    def mask_sizes(self, length: int) -> tuple[Optional[int], int]:
        """(window, global_tokens) at this length."""
        if self.sqrt:
            root = max(1, round(math.sqrt(length)))
            return root, root
        return self.window, self.global_tokens


def variants(n_heads: int, window: int, global_tokens: int) -> list[Variant]:
    return [
        Variant("mha"),
        Variant(f"gqa-{max(n_heads // 4, 1)}", n_kv_heads=max(n_heads // 4, 1)),
        Variant("mqa", n_kv_heads=1),
        Variant(f"window-{window}", window=window),
        Variant(f"sparse-{window}+{global_tokens}", window=window, global_tokens=global_tokens),
        Variant("sparse-sqrt", sqrt=True),
    ]


# Kernels for a few queries (decoding steps); at full length they materialize the scores like math: --backends names
# them to measure anyway.
DECODING_KERNELS = ("matmul",)


def backends_for(device: torch.device) -> list[str]:
    """The registry's backends that run on this device type (and auto)."""
    return [name for name, spec in REGISTRY.items()
            if device.type in spec.devices and name not in DECODING_KERNELS] + ["auto"]


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def math_bytes_needed(rows: int, length: int, element: int, backward: bool) -> int:
    """What the math oracle holds at once: the (batch · heads = rows, length, length) scores in fp32, their masked
    copy and the softmax (forward), plus as many again for the gradients (backward)."""
    scores = rows * length * length * max(element, 4)
    return scores * (6 if backward else 3)


def why_not(backend: str, mask: MaskSpec, head_dim: int, backward: bool, device: torch.device,
            dtype: torch.dtype) -> Optional[str]:
    problem = static_problem(backend, device, dtype, backward) or call_problem(backend, mask, 0.0, head_dim)
    return problem.split(";")[0] if problem else None


def prepare_case(backend: str, variant: Variant, length: int, mode: str, args, device, dtype):
    """The case's row, and the call to measure (None with the row's ``why`` when the backend cannot run it)."""
    backward = mode == "forward+backward"
    n_kv = variant.n_kv_heads or args.heads
    window, global_tokens = variant.mask_sizes(length)
    mask = MaskSpec(q_len=length, k_len=length, causal=args.causal, window=window, global_tokens=global_tokens)
    need = math_bytes_needed(args.batch * args.heads, length, torch.finfo(dtype).bits // 8, backward)
    row = {"variant": variant.name, "backend": backend, "length": length, "mode": mode, "window": window,
           "global_tokens": global_tokens, "math_estimate_bytes": need}
    problem = why_not(backend, mask, args.head_dim, backward, device, dtype)
    if problem is None and backend in REGISTRY and REGISTRY[backend].full_scores:
        if need > 0.7 * available_bytes(device):
            problem = f"needs ~{need / 2**30:.0f} GiB (scores are length²), more than is free"
    if problem is not None:
        return {**row, "status": "unsupported", "why": problem}, None
    generator = torch.Generator(device="cpu").manual_seed(0)

    def tensor(heads: int) -> torch.Tensor:
        x = torch.randn(args.batch, heads, length, args.head_dim, generator=generator).to(device, dtype)
        return x.requires_grad_(backward)

    q, k, v = tensor(args.heads), tensor(n_kv), tensor(n_kv)
    if backend == "auto":  # the row says which kernel auto's rule chose for this case
        row["picked"] = choose_backend("bench", q, mask, 0.0, backward)
    grad = torch.randn(args.batch, args.heads, length, args.head_dim, generator=generator).to(device, dtype)

    def call() -> None:
        if backward:
            for t in (q, k, v):
                t.grad = None
            out, _ = attend(backend, q, k, v, mask)
            out.backward(grad)
        else:
            with torch.no_grad():
                attend(backend, q, k, v, mask)

    return row, call


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(row: dict, call, repeats: int, device, clock: str = "wall") -> dict:
    try:
        seconds, times = median_seconds(call, repeats, device, clock=CLOCKS[clock])
    except (AttentionBackendError, NotImplementedError, RuntimeError) as error:  # a kernel that refuses at run time
        return {**row, "status": "failed", "why": str(error).splitlines()[0][:160]}
    return {**row, "status": "ok", "seconds": seconds, "times": times}


def kv_cache_bytes_per_token(args, device, dtype, tokens: int = 64) -> dict[str, dict]:
    """Decode ``tokens`` steps through one causal self-attention layer per head layout and count the bytes of the
    K/V tensors its cache holds, per token."""
    d_model = args.heads * args.head_dim
    result = {}
    for name, n_kv in [("mha", args.heads), (f"gqa-{max(args.heads // 4, 1)}", max(args.heads // 4, 1)), ("mqa", 1)]:
        layer = Attention(d_model, AttentionConfig(n_heads=args.heads, n_kv_heads=n_kv), causal=True).to(device, dtype)
        cache = layer.new_cache()
        with torch.no_grad():
            for _ in range(tokens):
                layer(torch.randn(1, 1, d_model, device=device, dtype=dtype), cache=cache)
        allocated = cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes()
        result[name] = {"n_kv_heads": n_kv, "bytes_per_token": allocated // tokens}
    mha = result["mha"]["bytes_per_token"]
    for entry in result.values():
        entry["fraction_of_mha"] = entry["bytes_per_token"] / mha
    return result


def predict_seconds(done: list[tuple[int, float]], length: int) -> float:
    """Time of one call at ``length`` extrapolated from the series so far: the last measured growth exponent
    (at least 1, and 2 while there is only one point)."""
    if not done:
        return 0.0
    (n2, t2) = done[-1]
    exponent = 2.0
    if len(done) > 1:
        (n1, t1) = done[-2]
        exponent = max(1.0, math.log(t2 / t1) / math.log(n2 / n1))
    return t2 * (length / n2) ** exponent


def growth(rows: list[dict]) -> dict[tuple, list[Optional[float]]]:
    """Per (variant, backend, mode): log(t₂/t₁)/log(n₂/n₁) between consecutive measured lengths."""
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        if r["status"] == "ok":
            series.setdefault((r["variant"], r["backend"], r["mode"]), []).append((r["length"], r["seconds"]))
    return {key: [math.log(t2 / t1) / math.log(n2 / n1) for (n1, t1), (n2, t2) in zip(points, points[1:])]
            for key, points in series.items()}


def _length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def longest_length_table(rows: list[dict], lengths: list[int]) -> str:
    """Each series measured at the longest length: its peak memory against what math would need there (math's
    estimate, `math_bytes_needed`) and its time against the previous length's (4 for a linear kernel at 4× the
    length, 8 for n·√n, 16 for quadratic)."""
    longest, previous = lengths[-1], (lengths[-2] if len(lengths) > 1 else None)
    by_key = {(r["variant"], r["backend"], r["mode"], r["length"]): r for r in rows if r["status"] == "ok"}
    table = []
    for (variant, backend, mode, length), r in by_key.items():
        if length != longest:
            continue
        before = by_key.get((variant, backend, mode, previous))
        ratio = f"{r['seconds'] / before['seconds']:.2f}" if before else ""
        fraction = r["peak_bytes"] / r["math_estimate_bytes"]
        table.append([variant, backend, mode, f"{r['peak_bytes'] / 2**20:,.1f}",
                      f"{r['math_estimate_bytes'] / 2**30:,.2f}", f"1/{1 / fraction:,.0f}" if fraction > 0 else "0",
                      ratio])
    header = ["variant", "backend", "mode", "peak MiB", "math would need GiB", "peak ÷ math's",
              f"time {_length(longest)} ÷ {_length(previous)}" if previous else "time ratio"]
    return markdown_table(header, table)


def render(rows: list[dict], kv: dict, lengths: list[int], args, env: dict) -> str:
    exponents = growth(rows)
    by_key: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        by_key.setdefault((r["variant"], r["backend"], r["mode"]), {})[r["length"]] = r
    header = ["variant", "backend", "mode", *[f"{_length(n)} ms / MiB" for n in lengths], "growth exponents"]
    table = []
    for (variant, backend, mode), cells in by_key.items():
        picks = sorted({r["picked"] for r in cells.values() if "picked" in r})
        shown = f"{backend} → {'/'.join(picks)}" if picks else backend
        row, shown_why = [variant, shown, mode], None
        for n in lengths:
            r = cells.get(n)
            if r is None:
                row.append("")
            elif r["status"] == "ok":
                row.append(f"{r['seconds'] * 1e3:,.1f} / {r['peak_bytes'] / 2**20:,.1f}")
            else:  # the reason once per row, where it first applies
                row.append("—" if r["why"] == shown_why else f"— ({r['why']})")
                shown_why = r["why"]
        row.append(", ".join(f"{e:.2f}" for e in exponents.get((variant, backend, mode), [])))
        table.append(row)
    kv_rows = [[name, e["n_kv_heads"], f"{e['bytes_per_token']:,}", f"{e['fraction_of_mha']:.4f}"]
               for name, e in kv.items()]
    shape = (f"batch {args.batch}, {args.heads} heads × {args.head_dim}, "
             f"{'causal' if args.causal else 'bidirectional'} self-attention, {args.dtype}, median of {args.repeats} "
             f"({args.clock} time); {env['device']}, {plural(env['threads'], 'thread')}, torch {env['torch']}")
    return "\n".join([
        f"Attention kernels: {shape}. Cells: median time (ms) / peak memory added by one call (MiB); '—' = cannot run.",
        "", markdown_table(header, table), "",
        f"At {_length(lengths[-1])}: peak memory against what math would need (its estimate: scores, masked copy and "
        "softmax in fp32, twice that with gradients), and time against the previous length:", "",
        longest_length_table(rows, lengths), "",
        "KV-cache bytes per decoded token of one self-attention layer (allocated K and V tensors):", "",
        markdown_table(["layout", "n_kv_heads", "bytes/token", "÷ MHA"], kv_rows),
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = UsageParser(prog="nmt bench attention", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--variants", nargs="+", help="names to keep (default: all), e.g. mha window-256")
    parser.add_argument("--backends", nargs="+", help="backends to try (default: all the device has)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--global-tokens", type=int, default=16)
    parser.add_argument("--causal", action="store_true",
                        help="decoder self-attention (default: encoder, bidirectional)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time: on a shared machine run with OMP_NUM_THREADS=1 "
                             "and --clock cpu, which time spent waiting for a core does not inflate (with more threads "
                             "CPU time sums them, spin-waits included)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="skip a case whose one call is predicted (from the shorter lengths) to take longer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--out", default="outputs/bench")
    args = parse_bench_args(parser, argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    for name in ("batch", "heads", "head_dim", "window", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} ({getattr(args, name)}) must be >= 1")
    if min(args.lengths) < 1:
        parser.error(f"--lengths ({args.lengths}) must all be >= 1")
    if args.global_tokens < 0:
        parser.error(f"--global-tokens ({args.global_tokens}) must be >= 0")
    known = [*REGISTRY, "auto"]
    unknown = [name for name in args.backends or [] if name not in known]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(map(repr, unknown))}; the backends are {', '.join(known)}")
    try:
        check_device(args.device)  # nmt translate's check: unknown names, no CUDA or MPS, an index past the devices
    except FlagError as error:
        parser.error(str(error))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    chosen = variants(args.heads, args.window, args.global_tokens)
    if args.variants:
        unknown = set(args.variants) - {v.name for v in chosen}
        if unknown:
            print(f"nmt bench attention: unknown variant(s) {sorted(unknown)}; known: {[v.name for v in chosen]}",
                  file=sys.stderr)
            return 2
        chosen = [v for v in chosen if v.name in args.variants]
    backends = args.backends or backends_for(device)
    lengths = sorted(args.lengths)
    rows, calls = [], []
    for variant in chosen:
        for backend in backends:
            for mode in args.modes:
                done: list[tuple[int, float]] = []  # (length, seconds) measured so far in this series
                for length in lengths:
                    row, call = prepare_case(backend, variant, length, mode, args, device, dtype)
                    predicted = predict_seconds(done, length)
                    if call is not None and predicted > args.max_seconds:
                        row, call = {**row, "status": "skipped", "why": f"~{predicted:.0f} s per call predicted "
                                     f"(> --max-seconds {args.max_seconds:g})"}, None
                    if call is not None:
                        row = measure(row, call, args.repeats, device, args.clock)
                        if row["status"] == "ok":
                            done.append((length, row["seconds"]))
                    rows.append(row)
                    calls.append(call if row["status"] == "ok" else None)
                    shown = f"{row['seconds'] * 1e3:.1f} ms" if row["status"] == "ok" else row["why"]
                    print(f"  {variant.name:16s} {backend:6s} {mode:17s} {length:6d}: {shown}", file=sys.stderr)
    # Memory in a second pass: measuring it makes every large allocation a fresh mmap, which would slow the timings.
    for row, call in zip(rows, calls):
        if call is not None:
            row["peak_bytes"] = peak_bytes(call, device)
    kv = kv_cache_bytes_per_token(args, device, dtype)
    env = environment()
    markdown = render(rows, kv, lengths, args, env)
    results = {"environment": env, "settings": {k: v for k, v in vars(args).items() if k != "out"}, "cases": rows,
               "growth_exponents": {" / ".join(k): v for k, v in growth(rows).items()}, "kv_cache": kv}
    json_path, md_path = write_results(args.out, "attention", results, markdown)
    print(markdown)
    print(f"\n(JSON: {json_path}, Markdown: {md_path})")
    return 0
