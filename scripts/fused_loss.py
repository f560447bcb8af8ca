"""Training steps with the fused CPU loss (nmt.training.loss.ProjectedLoss) against the readable one
(F.linear + F.cross_entropy).

Two copies of the same model (a conf/model preset, same seed) train on the same real Multi30k token-budget batches,
alternating step by step (who goes first swaps every batch), each a full step: forward, label-smoothed loss (0.1),
backward, clipping, AdamW. Prints target tokens/s of each, median over repeats, and fused ÷ readable (> 1: fused
wins), plus the largest difference between the two copies' parameters after the run.

    python scripts/fused_loss.py [--model tiny] [--threads 2] [--steps 20] [--repeats 3] [--max-tokens 4096]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nmt.bench.train import model_config, real_batches
from nmt.errors import plural
from nmt.model import build_model
from nmt.training.loss import ProjectedLoss, label_smoothed_loss


def readable(model, batch):
    logits = F.linear(model.features(batch["src"], batch["src_lengths"], batch["tgt_in"]), model.output_weight())
    return label_smoothed_loss(logits, batch["tgt_out"], 0.1)


def fused_with(criterion):
    def fused(model, batch):
        hidden = model.features(batch["src"], batch["src_lengths"], batch["tgt_in"])
        return criterion(hidden, model.output_weight(), batch["tgt_out"], 0.1)

    return fused


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="conf/model preset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat (after 3 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warmup = 3
    cfg = model_config(args.model, [])
    work = real_batches(args.max_tokens, args.steps + warmup, [])
    speeds = {"fused": [], "readable": []}
    difference = 0.0
    for _ in range(args.repeats):
        systems = {}
        for name, loss in (("fused", fused_with(ProjectedLoss())), ("readable", readable)):
            torch.manual_seed(0)
            model = build_model(cfg).train()
            systems[name] = [model, torch.optim.AdamW(model.parameters(), lr=1e-4), loss, 0.0, 0]
        order = list(systems.values())
        for index, batch in enumerate(work):
            for system in order if index % 2 == 0 else order[::-1]:
                model, optimizer, loss_fn, _, _ = system
                torch.manual_seed(index)  # the same dropout masks for both copies
                start = time.perf_counter()
                loss_sum, n_tokens = loss_fn(model, batch)
                optimizer.zero_grad(set_to_none=True)
                (loss_sum / n_tokens).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                if index >= warmup:
                    system[3] += time.perf_counter() - start
                    system[4] += n_tokens
        for name, (_, _, _, seconds, tokens) in systems.items():
            speeds[name].append(tokens / seconds)
        with torch.no_grad():
            pairs = zip(systems["fused"][0].parameters(), systems["readable"][0].parameters())
            difference = max(difference, max(float((a - b).abs().max()) for a, b in pairs))
    fused, ref = statistics.median(speeds["fused"]), statistics.median(speeds["readable"])
    print(f"model {args.model}, {plural(args.threads, 'thread')}, {args.steps} steps of ≤ {args.max_tokens}-token "
          f"Multi30k batches, median of {args.repeats}; target tokens/s\n")
    print("| fused | readable | fused ÷ readable | max parameter difference after the run |\n|---|---|---|---|")
    print(f"| {fused:,.0f} | {ref:,.0f} | {fused / ref:.2f}× | {difference:.1e} |")


if __name__ == "__main__":
    main()
