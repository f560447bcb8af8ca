"""Where `auto` switches CPU inference from SDPA's fused kernel to the `matmul` backend (dispatch.MATMUL_MAX_SCORES).

Times both backends on decoding-step shapes — q_len queries (1 for a self-attention step, the beams for a shared
cross-attention row) over k_len padded keys — alternated, medians of 5, and prints sdpa ÷ matmul (> 1: matmul wins).
``--step``: a decoding step's self-attention instead — no mask, K/V strided views of a longer cache buffer.

    python scripts/matmul_crossover.py [--threads 2] [--batch 64] [--step]
"""

import argparse
import statistics
import time

import torch

from nmt.attention import MaskSpec, attend
from nmt.errors import plural


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--k-lens", type=int, nargs="+", default=[34, 128, 512])
    parser.add_argument("--q-lens", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step", action="store_true", help="self-attention step: no mask, strided K/V")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    B, H, D = args.batch, args.heads, args.head_dim
    kind = "self-attention steps (no mask, strided K/V)" if args.step else "padded keys"
    print(f"B {B}, {H} heads of {D}, {plural(args.threads, 'thread')}, {kind}; µs per call (median of "
          f"{args.repeats} × 20 calls)\n")
    print("| k_len | q_len | q_len · k_len | sdpa µs | matmul µs | sdpa ÷ matmul |\n|---|---|---|---|---|---|")
    with torch.inference_mode():
        for k_len in args.k_lens:
            for q_len in args.q_lens:
                q, k, v = (torch.randn(B, H, n, D) for n in (q_len, k_len, k_len))
                mask = MaskSpec(q_len=q_len, k_len=k_len, k_lengths=torch.randint(k_len // 2, k_len + 1, (B,)))
                if args.step:  # the cache's first k_len positions of a buffer with room for more
                    k, v = (torch.randn(B, H, k_len + 16, D)[:, :, :k_len] for _ in range(2))
                    mask = MaskSpec(q_len=q_len, k_len=k_len, q_start=k_len - q_len, causal=True)
                times = {"sdpa": [], "matmul": []}
                for _ in range(args.repeats):
                    for backend in times:
                        attend(backend, q, k, v, mask)
                        start = time.perf_counter()
                        for _ in range(20):
                            attend(backend, q, k, v, mask)
                        times[backend].append((time.perf_counter() - start) / 20 * 1e6)
                sdpa, matmul = (statistics.median(times[b]) for b in ("sdpa", "matmul"))
                print(f"| {k_len} | {q_len} | {q_len * k_len:,} | {sdpa:.0f} | {matmul:.0f} | {sdpa / matmul:.2f} |")


if __name__ == "__main__":
    main()
