"""Where `auto` switches CPU attention from SDPA's fused kernel to the `matmul` backend (dispatch.MATMUL_*).

Times both backends on decoding-step shapes — q_len queries (1 for a self-attention step, the beams for a shared
cross-attention row) over k_len padded keys — alternated, medians of 5, and prints sdpa ÷ matmul (> 1: matmul wins).
``--step``: a decoding step's self-attention instead — no mask, K/V strided views of a longer cache buffer.
``--train``: training instead — forward and backward of self-attention over T = k_len padded positions (causal with
``--causal``), the batch sized to ``--tokens`` positions, in ``--dtype`` (bfloat16: what bf16 autocast hands it).

    python scripts/matmul_crossover.py [--threads 2] [--batch 64] [--step]
    python scripts/matmul_crossover.py --train --dtype bfloat16 --head-dim 64 --k-lens 16 32 64 128 256 [--causal]
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
    parser.add_argument("--train", action="store_true", help="forward + backward of self-attention, T = k_len")
    parser.add_argument("--causal", action="store_true", help="--train: a causal mask besides the padding")
    parser.add_argument("--tokens", type=int, default=4096, help="--train: batch × T (nmt train's data.max_tokens)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        return train(args)
    B, H, D, dtype = args.batch, args.heads, args.head_dim, getattr(torch, args.dtype)
    kind = "self-attention steps (no mask, strided K/V)" if args.step else "padded keys"
    print(f"B {B}, {H} heads of {D}, {args.dtype}, {plural(args.threads, 'thread')}, {kind}; µs per call (median of "
          f"{args.repeats} × 20 calls)\n")
    print("| k_len | q_len | q_len · k_len | sdpa µs | matmul µs | sdpa ÷ matmul |\n|---|---|---|---|---|---|")
    with torch.inference_mode():
        for k_len in args.k_lens:
            for q_len in args.q_lens:
                q, k, v = (torch.randn(B, H, n, D, dtype=dtype) for n in (q_len, k_len, k_len))
                mask = MaskSpec(q_len=q_len, k_len=k_len, k_lengths=torch.randint(k_len // 2, k_len + 1, (B,)))
                if args.step:  # the cache's first k_len positions of a buffer with room for more
                    k, v = (torch.randn(B, H, k_len + 16, D, dtype=dtype)[:, :, :k_len] for _ in range(2))
                    mask = MaskSpec(q_len=q_len, k_len=k_len, q_start=k_len - q_len, causal=True)
                times = timed(lambda backend: attend(backend, q, k, v, mask), args.repeats, 20)
                sdpa, matmul = times["sdpa"], times["matmul"]
                print(f"| {k_len} | {q_len} | {q_len * k_len:,} | {sdpa:.0f} | {matmul:.0f} | {sdpa / matmul:.2f} |")


def timed(call, repeats: int, calls: int) -> dict[str, float]:
    """Median µs per call of ``call(backend)`` for sdpa and matmul, the two alternating."""
    times: dict[str, list[float]] = {"sdpa": [], "matmul": []}
    for _ in range(repeats):
        for backend in times:
            call(backend)
            start = time.perf_counter()
            for _ in range(calls):
                call(backend)
            times[backend].append((time.perf_counter() - start) / calls * 1e6)
    return {backend: statistics.median(values) for backend, values in times.items()}


def train(args: argparse.Namespace) -> None:
    """Forward + backward of one self-attention call per k_len, both backends (the ``--train`` table)."""
    dtype, H, D = getattr(torch, args.dtype), args.heads, args.head_dim
    mask_kind = "causal + padding" if args.causal else "padding"
    print(f"training: ~{args.tokens:,} positions per batch, {H} heads of {D}, {args.dtype}, {mask_kind}, "
          f"{plural(args.threads, 'thread')}; µs per forward + backward (median of {args.repeats} × 5 calls)\n")
    print("| T | batch | sdpa µs | matmul µs | sdpa ÷ matmul |\n|---|---|---|---|---|")
    for T in args.k_lens:
        B = max(1, args.tokens // T)
        q, k, v = (torch.randn(B, H, T, D, dtype=dtype, requires_grad=True) for _ in range(3))
        lengths = torch.randint(T // 2, T + 1, (B,))
        mask = MaskSpec(q_len=T, k_len=T, k_lengths=lengths, causal=args.causal)  # as the model masks padding

        def step(backend: str) -> None:
            attend(backend, q, k, v, mask)[0].sum().backward()

        times = timed(step, args.repeats, 5)
        print(f"| {T} | {B} | {times['sdpa']:.0f} | {times['matmul']:.0f} | {times['sdpa'] / times['matmul']:.2f} |")


if __name__ == "__main__":
    main()
