"""The output projection at CPU inference: `F.linear` (MKL sgemm) against the packed oneDNN path
(nmt.model.packed_linear).

Times both on (rows, d_model) × (d_model, vocab), alternated, medians of 7, and prints F.linear ÷ packed (> 1: packed
wins), the packed path's GFLOP/s (2 · rows · d_model · vocab per call) and the largest difference between the outputs.

    python scripts/packed_linear.py [--threads 2] [--d-model 128] [--vocab 8000] [--rows 1 64 320]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nmt.errors import plural
from nmt.model import packed_linear


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 320])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    if not packed_linear.AVAILABLE:
        raise SystemExit("packed_linear.py: this torch build has no oneDNN linear ops; F.linear is the only path")
    torch.set_num_threads(args.threads)
    weight = torch.randn(args.vocab, args.d_model)
    print(f"d_model {args.d_model}, vocab {args.vocab}, {plural(args.threads, 'thread')}; µs per call "
          f"(median of {args.repeats} × {args.calls} calls)\n")
    print("| rows | F.linear µs | packed µs | F.linear ÷ packed | packed GFLOP/s | max abs difference |\n"
          "|---|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in args.rows:
            x = torch.randn(rows, args.d_model)
            paths = {"F.linear": lambda: F.linear(x, weight), "packed": lambda: packed_linear.linear(x, weight)}
            times = {name: [] for name in paths}
            for _ in range(args.repeats):
                for name, run in paths.items():
                    run()
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        run()
                    times[name].append((time.perf_counter() - start) / args.calls * 1e6)
            plain, packed = (statistics.median(times[name]) for name in paths)
            difference = (paths["F.linear"]() - paths["packed"]()).abs().max().item()
            gflops = 2 * rows * args.d_model * args.vocab / packed / 1e3
            print(f"| {rows} | {plain:.0f} | {packed:.0f} | {plain / packed:.2f} | {gflops:.0f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
