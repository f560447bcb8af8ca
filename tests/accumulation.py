"""Gradient normalisation under accumulation and DDP: shared by tests/test_accumulation.py and, run as a script,
one DDP rank of its two-process check (Lightning's launcher starts the second process by running this file again).

    python tests/accumulation.py OUT_DIR ACCUMULATE   # writes OUT_DIR/rank{r}.pt: the gradient clipping sees
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict

import torch

from nmt.config import DecodeConfig, ModelConfig
from nmt.config.train import OptimConfig
from nmt.data.batching import collate
from nmt.training.lit_module import TranslationModule
from nmt.training.loss import label_smoothed_loss

SMOOTHING = 0.1
# Micro-batches of very different target token counts (4 sentences vs 1 short one, and so on): averaging
# per-micro-batch means weighs their tokens differently, summing and dividing by all tokens does not.
SHAPES = [(4, 9), (1, 2), (3, 6), (2, 11)]  # (sentences, longest target length)


def sentences() -> list[tuple[list[list[int]], list[list[int]]]]:
    """(sources, targets) of each micro-batch in SHAPES: random ids of random lengths, the same in every process."""
    generator = torch.Generator().manual_seed(7)
    ids = lambda length: torch.randint(4, 60, (length,), generator=generator).tolist()  # noqa: E731 (no specials)
    batches = []
    for count, longest in SHAPES:
        lengths = [longest] + torch.randint(1, longest + 1, (count - 1,), generator=generator).tolist()
        batches.append(([ids(n + 2) for n in lengths], [ids(n) for n in lengths]))
    return batches


def batch(parts: list[tuple[list[list[int]], list[list[int]]]], position: int = 0) -> dict[str, torch.Tensor]:
    """One padded batch holding every sentence of ``parts``."""
    src = [s for part in parts for s in part[0]]
    tgt = [t for part in parts for t in part[1]]
    tensors = collate(src, tgt)
    tensors["position"] = torch.tensor([0, position])
    return tensors


class Captured(TranslationModule):
    """Keeps the gradient gradient clipping receives: the one the optimizer steps with (unclipped here)."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.captured = {name: p.grad.detach().clone() for name, p in self.named_parameters() if p.grad is not None}
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def module(cls=Captured) -> TranslationModule:
    """A 1+1-layer model without dropout (so two forward passes of one sentence agree), the same in every process."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1, dropout=0.0)
    optim = OptimConfig(label_smoothing=SMOOTHING, warmup_steps=1)
    made = cls(cfg.to_dict(), asdict(optim), asdict(DecodeConfig()), max_steps=1)
    made.loss_scale = 1 / 64  # as setup() sets 1 / data.max_tokens: exercise a scale other than 1
    return made


def oracle(parts) -> tuple[dict[str, torch.Tensor], float]:
    """The gradient of one batch holding all of ``parts``: summed loss over its target tokens, by plain autograd
    through the readable loss (not the fused one, not Lightning); and that per-token loss."""
    model = module(TranslationModule).model
    b = batch(parts)
    hidden = model.features(b["src"], b["src_lengths"], b["tgt_in"])
    loss_sum, tokens = label_smoothed_loss(torch.nn.functional.linear(hidden, model.output_weight()), b["tgt_out"],
                                           SMOOTHING)
    (loss_sum / tokens).backward()
    return {f"model.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, \
        float(loss_sum.detach()) / tokens


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """‖got − want‖ / ‖want‖ over all parameters together."""
    assert got.keys() == want.keys()
    diff = sum(float((got[k].double() - want[k].double()).pow(2).sum()) for k in want)
    norm = sum(float(want[k].double().pow(2).sum()) for k in want)
    return (diff / norm) ** 0.5


def fit(module_: TranslationModule, batches: list[dict], accumulate: int, **trainer_args):
    """One optimizer step of Lightning over ``batches`` with ``accumulate`` micro-batches per update."""
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, **trainer_args)
    trainer.fit(module_, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


if __name__ == "__main__":
    out, accumulate = sys.argv[1], int(sys.argv[2])
    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by Lightning's launcher in the process it starts
    parts = sentences()
    share = [batch([p], i) for i, p in enumerate(parts[rank * accumulate:(rank + 1) * accumulate])]
    captured = module()
    fit(captured, share, accumulate, strategy="ddp", devices=2)
    torch.save({"grad": captured.captured, "rank": rank}, os.path.join(out, f"rank{rank}.pt"))
