"""``nmt bench train``: training steps of nmt against the same model built from ``torch.nn.Transformer``.

Both models get the same dimensions (a ``conf/model`` preset), the same real Multi30k token-budget batches, the same
label-smoothed loss (nmt computes it as ``nmt train`` does, fused with the output projection on CPU: nmt.training.loss),
AdamW, gradient clipping and fp32; the reference is what a PyTorch user would write: shared
scaled embeddings, sinusoidal positions, ``nn.Transformer(batch_first=True, norm_first=…)`` with key-padding masks
and a causal target mask, and a tied output projection. The two alternate step by step on the same batches (the
machine is noisy); reported are the medians over repeats of target tokens/s and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import statistics
import sys
import time
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.bench.common import environment, markdown_table, parse_bench_args, write_results
from nmt.config import ModelConfig
from nmt.data.tokenizer import PAD_ID
from nmt.errors import UsageParser, plural
from nmt.model import Seq2Seq, build_model
from nmt.precision import cpu_bf16
from nmt.training.loss import ProjectedLoss, label_smoothed_loss


class TorchTransformer(nn.Module):
    """The reference: ``torch.nn.Transformer`` with the embeddings, positions and output layer of ``nmt.model``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD_ID)
        self.scale = math.sqrt(d)
        self.transformer = nn.Transformer(
            d, cfg.n_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.d_ff, cfg.dropout, cfg.activation,
            batch_first=True, norm_first=cfg.norm == "pre",
        )
        # nmt applies cfg.dropout to residuals and FFN but attention-weight dropout per site (default 0); the same
        # here, which also keeps nn.MultiheadAttention on its fused SDPA kernel.
        attention_dropout = cfg.site("encoder_self").dropout
        for module in self.transformer.modules():
            if isinstance(module, nn.MultiheadAttention):
                module.dropout = attention_dropout
        position = torch.arange(4096)[:, None]
        inv_freq = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        table = torch.zeros(4096, d)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * inv_freq), torch.cos(position * inv_freq)
        self.register_buffer("positions", table, persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.dropout(self.embed(tokens) * self.scale + self.positions[: tokens.size(1)])

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        src_pad = src == PAD_ID  # (B, S) True = padding
        tgt_pad = tgt_in == PAD_ID  # (B, T)
        T = tgt_in.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=src.device).triu(1)  # True = may not attend
        hidden = self.transformer(
            self._embed(src), self._embed(tgt_in), tgt_mask=causal, src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad, tgt_is_causal=True,
        )
        return F.linear(hidden, self.embed.weight)  # (B, T, vocab), tied


def real_batches(max_tokens: int, count: int, overrides: list[str]) -> list[dict]:
    """The first ``count`` training batches of the configured corpus."""
    from nmt.config.compose import compose_config, to_train_config
    from nmt.data.datamodule import TranslationData

    cfg = to_train_config(compose_config([f"data.max_tokens={max_tokens}", *overrides]))
    data = TranslationData(cfg.data, cfg.seed)
    data.setup()
    return list(itertools.islice(iter(data.train_batches()), count))


def model_config(preset: str, overrides: list[str]) -> ModelConfig:
    """The preset as ``nmt train model=<preset> <overrides>`` would build it (vocabulary = data.vocab_size)."""
    from nmt.config.compose import compose_config
    from nmt.config.compose import model_config as resolve

    return resolve(compose_config([f"model={preset}", *overrides]))


BF16 = "nmt bf16-mixed"


class Trainee:
    """One system under test: its model, its optimizer and the time and target tokens its steps took."""

    def __init__(self, model: nn.Module, bf16: bool = False) -> None:
        self.model, self.bf16 = model.train(), bf16  # bf16: under CPU autocast, as trainer.precision=bf16-mixed
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
        self.seconds, self.tokens = 0.0, 0
        self.loss = ProjectedLoss()

    def step(self, batch: dict) -> None:
        """A full training step (forward, loss, backward, clipping, AdamW), timed."""
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if isinstance(self.model, Seq2Seq):  # the loss as nmt train computes it
                hidden = self.model.features(batch["src"], batch["src_lengths"], batch["tgt_in"])
                loss_sum, n_tokens = self.loss(hidden, self.model.output_weight(), batch["tgt_out"], 0.1)
            else:
                logits = self.model(batch["src"], batch["src_lengths"], batch["tgt_in"])
                loss_sum, n_tokens = label_smoothed_loss(logits, batch["tgt_out"], 0.1)
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.seconds += time.perf_counter() - start
        self.tokens += n_tokens


def tokens_per_second(models: dict[str, nn.Module], work: list[dict], warmup: int,
                      around: Callable[[str], ContextManager] = lambda name: contextlib.nullcontext()
                      ) -> dict[str, float]:
    """Target tokens/s of each model's training steps over ``work``, the models alternating step by step.

    Alternating per step (and rotating who goes first on every batch, so that with n systems each goes first, second,
    … in turn, as `nmt.bench.translate.time_systems` does) spreads the machine's slow drifts — other load, clock
    changes, a cache warmed by the previous system — over all systems alike; timing one system's whole run after the
    other's does not.
    ``around(name)`` is entered around each step of system ``name`` (nmt bench long records the attention backends
    each system's steps ran on).
    """
    trainees = {name: Trainee(model, bf16=name == BF16) for name, model in models.items()}
    order = list(trainees.items())
    for index, batch in enumerate(work):
        first = index % len(order)
        for name, trainee in order[first:] + order[:first]:
            with around(name):
                trainee.step(batch)
        if index + 1 == warmup:  # allocator and kernel warm-up is not throughput
            for trainee in trainees.values():
                trainee.seconds, trainee.tokens = 0.0, 0
    return {name: trainee.tokens / trainee.seconds for name, trainee in trainees.items()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = UsageParser(prog="nmt bench train", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], help="conf/model presets")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (after 3 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096, help="batch budget (padded tokens)")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="time nmt under bf16 autocast (trainer.precision=bf16-mixed) beside fp32 (default: where "
                             "the CPU has bf16 matrix instructions; elsewhere bf16 is emulated, several times slower)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.cache_dir=DIR attention=gqa")
    args = parse_bench_args(parser, argv)
    if args.bf16 is None:
        args.bf16 = cpu_bf16()[0]
    for name in ("steps", "repeats", "max_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} ({getattr(args, name)}) must be >= 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    warmup = 3
    try:
        configs = {name: model_config(name, args.overrides) for name in args.models}  # checked before data work
        work = real_batches(args.max_tokens, args.steps + warmup, args.overrides)
    except Exception as error:  # config or data problems: one line, as nmt train prints them
        from nmt.config.compose import config_error_line

        print(f"nmt bench train: {config_error_line(error)}", file=sys.stderr)
        return 2
    systems = ["nmt", "torch.nn.Transformer"] + [BF16] * args.bf16
    measured: dict[str, dict[str, list[float]]] = {name: {s: [] for s in systems} for name in configs}
    sizes = {}
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            models = {}
            for system in systems:  # each built from the same seed
                torch.manual_seed(0)
                models[system] = TorchTransformer(cfg) if system == "torch.nn.Transformer" else build_model(cfg)
                sizes[(name, system)] = sum(p.numel() for p in models[system].parameters())
            torch.manual_seed(0)
            for system, speed in tokens_per_second(models, work, warmup).items():
                measured[name][system].append(speed)
    rows, summary = [], {}
    for name, runs in measured.items():
        ours, ref = statistics.median(runs["nmt"]), statistics.median(runs["torch.nn.Transformer"])
        summary[name] = {"nmt": ours, "torch.nn.Transformer": ref, "ratio": ours / ref, "runs": runs,
                         "parameters": {s: sizes[(name, s)] for s in runs}}
        bf16 = statistics.median(runs[BF16]) if args.bf16 else None
        if bf16 is not None:
            summary[name].update({BF16: bf16, "bf16_over_fp32": bf16 / ours})
        rows.append([name, f"{ours:,.0f}", f"{ref:,.0f}", f"{ours / ref:.2f}×",
                     f"{sizes[(name, 'nmt')]:,} / {sizes[(name, 'torch.nn.Transformer')]:,}",
                     "—" if bf16 is None else f"{bf16:,.0f}", "—" if bf16 is None else f"{bf16 / ours:.2f}×"])
    env = environment()
    markdown = "\n".join([
        f"Training throughput, target tokens/s (median of {args.repeats}; {args.steps} steps of "
        f"≤ {args.max_tokens}-token Multi30k batches, fp32 unless named; {env['device']}, "
        f"{plural(env['threads'], 'thread')}, torch {env['torch']}; {cpu_bf16()[1]}):", "",
        markdown_table(["model", "nmt", "torch.nn.Transformer", "nmt ÷ reference", "parameters (nmt / reference)",
                        "nmt bf16-mixed", "bf16 ÷ fp32 (target ≥ 1.5 for small on a bf16 CPU)"], rows),
    ])
    results = {"environment": env, "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "tokens_per_s": summary}
    json_path, md_path = write_results(args.out, "train", results, markdown)
    print(markdown)
    print(f"\n(JSON: {json_path}, Markdown: {md_path})")
    return 0
