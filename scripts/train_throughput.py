"""Training throughput (target tokens/s) of nmt's model presets on Multi30k en→de batches, on this machine.

    python scripts/train_throughput.py [--models tiny small] [--steps 20] [--repeats 3] [--max-tokens 4096] [overrides…]

Each measurement times full training steps (forward, label-smoothed loss, backward, clipping, AdamW) on the same
real token-budget batches; the presets alternate within each repeat, and the median over repeats is reported.
Prints a Markdown table and writes JSON to outputs/bench/train_throughput.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from nmt.datamodule import TranslationData
from nmt.lit_module import label_smoothed_loss
from nmt.model import build_model
from nmt.schema import compose_config, to_train_config


def batches(max_tokens: int, count: int, overrides: list[str]) -> list[dict]:
    cfg = to_train_config(compose_config([f"data.max_tokens={max_tokens}", *overrides]))
    data = TranslationData(cfg.data, cfg.seed)
    data.setup()
    return list(itertools.islice(iter(data.train_batches()), count))


def tokens_per_second(model_name: str, work: list[dict], overrides: list[str], warmup: int = 3) -> float:
    cfg = to_train_config(compose_config([f"model={model_name}", *overrides]))
    model = build_model(cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98))

    def step(batch):
        logits = model(batch["src"], batch["src_lengths"], batch["tgt_in"])
        loss_sum, n_tokens = label_smoothed_loss(logits, batch["tgt_out"], 0.1)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return n_tokens

    for batch in work[:warmup]:
        step(batch)
    start, tokens = time.perf_counter(), 0
    for batch in work[warmup:]:
        tokens += step(batch)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--out", default="outputs/bench/train_throughput.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the data, e.g. data.cache_dir=DIR")
    args = parser.parse_args()
    work = batches(args.max_tokens, args.steps + 3, args.overrides)
    results: dict[str, list[float]] = {name: [] for name in args.models}
    for _ in range(args.repeats):
        for name in args.models:
            results[name].append(tokens_per_second(name, work, args.overrides))
    summary = {
        "threads": torch.get_num_threads(),
        "max_tokens": args.max_tokens,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "tokens_per_s": {name: {"median": statistics.median(v), "all": v} for name, v in results.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"| model | target tokens/s (median of {args.repeats}) | runs |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")
    print(f"\n{torch.get_num_threads()} threads, batches of <= {args.max_tokens} tokens, torch {torch.__version__}")


if __name__ == "__main__":
    main()
