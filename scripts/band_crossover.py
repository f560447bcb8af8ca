"""Where `auto` switches CPU training from SDPA's fused kernel to the `band` backend (dispatch.band_wins).

Times forward+backward of both backends on windowed and sparse (window + global tokens) self-attention, alternated,
and prints, per (window, global tokens, causal), band ÷ sdpa at each length (< 1: band wins) beside the length
band_wins sets as the switch. On a shared machine use --threads 1 --clock cpu: 2 threads wait for each other whenever
another process holds a core, which inflates band's many short operations far more than SDPA's one fused kernel.

    python scripts/band_crossover.py [--threads 2] [--clock wall|cpu] [--cases 256,16,bidir 8,128,causal …]
"""

import argparse
import time

import torch

from nmt.attention import MaskSpec, attend
from nmt.attention.dispatch import band_wins
from nmt.errors import plural

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CASES = ["64,0,causal", "64,0,bidir", "8,128,causal", "8,128,bidir", "64,256,causal", "64,256,bidir",
         "256,16,causal", "256,16,bidir"]


def seconds(backend: str, q, k, v, mask: MaskSpec, clock) -> float:
    start = clock()
    out, _ = attend(backend, q, k, v, mask)
    out.backward(torch.ones_like(out))
    return clock() - start


def switch_length(window: int, global_tokens: int, causal: bool) -> int:
    """The shortest multiple of 64 at which band_wins picks band."""
    length = 64
    while not band_wins(MaskSpec(q_len=length, k_len=length, causal=causal, window=window,
                                 global_tokens=global_tokens)):
        length += 64
    return length


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--cases", nargs="+", default=CASES, help="WINDOW,GLOBAL_TOKENS,causal|bidir")
    parser.add_argument("--repeats", type=int, default=3, help="the minimum of this many alternated calls")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    print(f"batch 1, {args.heads} heads of {args.head_dim}, {plural(args.threads, 'thread')}, forward+backward, "
          f"{args.clock} time, minimum of {args.repeats}; cells: band ÷ sdpa (< 1: band wins)\n")
    print("| window | global tokens | mask | " + " | ".join(map(str, args.lengths)) + " | band_wins from |")
    print("|---|---|---|" + "---|" * (len(args.lengths) + 1))
    for case in args.cases:
        window, global_tokens, kind = case.split(",")
        window, global_tokens, causal = int(window), int(global_tokens), kind == "causal"
        cells = []
        for length in args.lengths:
            q, k, v = (torch.randn(1, args.heads, length, args.head_dim, requires_grad=True) for _ in range(3))
            mask = MaskSpec(q_len=length, k_len=length, causal=causal, window=window, global_tokens=global_tokens)
            best = {"band": float("inf"), "sdpa": float("inf")}
            for backend in best:  # warm-up
                seconds(backend, q, k, v, mask, clock)
            for _ in range(args.repeats):
                for backend in best:
                    best[backend] = min(best[backend], seconds(backend, q, k, v, mask, clock))
            cells.append(f"{best['band'] / best['sdpa']:.2f}")
        print(f"| {window} | {global_tokens} | {kind} | {' | '.join(cells)} | "
              f"{switch_length(window, global_tokens, causal)} |", flush=True)


if __name__ == "__main__":
    main()
