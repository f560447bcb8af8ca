"""Which int8 path `nmt translate --dtype int8` takes on CPU: torch's dynamic quantization (torch.ao, fbgemm) against
float32 `F.linear` and, where installed, torchao's `Int8DynamicActivationInt8WeightConfig` in eager mode.

Times each on (rows, d_in) × (d_in, d_out) products of a decoding step, alternated, medians of 5, and prints
float32 ÷ int8 (> 1: int8 wins) with the largest relative difference from float32.

    python scripts/int8_linear.py [--threads 1] [--rows 64 320] [--shapes 256x1024 1024x256 256x8000]
"""

import argparse
import copy
import importlib.util
import statistics
import time
import warnings

import torch
from torch import nn


def _paths(linear: nn.Linear) -> dict:
    from nmt.decoding.dtypes import quantize_int8

    paths = {"float32": linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths["torch.ao int8"] = quantize_int8(nn.Sequential(copy.deepcopy(linear)))
        if importlib.util.find_spec("torchao") is not None:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            model = nn.Sequential(copy.deepcopy(linear))
            quantize_(model, Int8DynamicActivationInt8WeightConfig())
            paths["torchao int8"] = model
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 320])
    parser.add_argument("--shapes", nargs="+", default=["256x1024", "1024x256", "256x8000"], help="d_in x d_out")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.threads} thread(s); µs per call (median of {args.repeats} × {args.calls} calls); torchao "
          f"{'installed' if importlib.util.find_spec('torchao') else 'not installed'}\n")
    print("| rows | d_in × d_out | path | µs | float32 ÷ path | max relative difference |\n|---|---|---|---|---|---|")
    with torch.inference_mode():
        for shape in args.shapes:
            d_in, d_out = (int(n) for n in shape.split("x"))
            paths = _paths(nn.Linear(d_in, d_out))
            for rows in args.rows:
                x = torch.randn(rows, d_in)
                times = {name: [] for name in paths}
                for _ in range(args.repeats):
                    for name, run in paths.items():
                        run(x)
                        start = time.perf_counter()
                        for _ in range(args.calls):
                            run(x)
                        times[name].append((time.perf_counter() - start) / args.calls * 1e6)
                exact = paths["float32"](x)
                for name, run in paths.items():
                    error = ((run(x) - exact).abs().max() / exact.abs().max()).item()
                    speed = statistics.median(times["float32"]) / statistics.median(times[name])
                    print(f"| {rows} | {d_in} × {d_out} | {name} | {statistics.median(times[name]):.0f} | "
                          f"{speed:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
