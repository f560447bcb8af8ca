"""The LightningModule: label-smoothed cross-entropy (nmt.training.loss), AdamW with warmup, validation loss and BLEU.

Normalisation (fairseq's): an update's gradient is the gradient of its summed token losses divided by its target
tokens, however it was split — into ``trainer.accumulate_grad_batches`` micro-batches, and across DDP ranks. So an
update accumulated from N micro-batches equals one batch holding them all; a short micro-batch's tokens weigh what
any other token weighs (averaging per-micro-batch means weighed them more).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any, Optional

import lightning as L
import torch
import torch.distributed as dist

from nmt.config import DecodeConfig, ModelConfig
from nmt.config.train import OptimConfig, TrainConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.flags import MAX_SOURCE_LEN
from nmt.evaluation.scoring import bleu, translate_and_score
from nmt.model import build_model
from nmt.training.loss import ProjectedLoss


def lr_lambda(cfg: OptimConfig, max_steps: int):
    """Multiplier of cfg.lr at each step: linear warmup, then 1/√step decay or a cosine down to min_lr."""
    warmup = max(cfg.warmup_steps, 1)

    def inverse_sqrt(step: int) -> float:
        step = step + 1
        return min(step / warmup, math.sqrt(warmup / step))

    def cosine(step: int) -> float:
        step = step + 1
        if step < warmup:
            return step / warmup
        progress = min((step - warmup) / max(max_steps - warmup, 1), 1.0)
        floor = cfg.min_lr / cfg.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return inverse_sqrt if cfg.scheduler == "inverse_sqrt" else cosine


class TranslationModule(L.LightningModule):
    """Holds the Seq2Seq model; hyperparameters are plain dicts, so checkpoints load with ``weights_only=True``."""

    def __init__(self, model: dict, optim: dict, decode: dict, max_steps: int, bleu_tokenize: Optional[str] = None,
                 val_max_sentences: Optional[int] = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(ModelConfig.from_dict(model))
        self.optim_cfg = OptimConfig(**optim)
        self.decode_cfg = DecodeConfig(**decode)
        self.max_steps = max_steps
        self.bleu_tokenize = bleu_tokenize
        self.val_max_sentences = val_max_sentences  # validation BLEU on the first N sentences (None: all)
        self.tokenizer: Optional[Tokenizer] = None  # from the datamodule in setup(); for validation BLEU
        self.init_from: Optional[str] = None  # the model directory the run started from; kept in its checkpoints
        self.valid_sources: list[str] = []
        self.valid_references: list[str] = []
        # Validation BLEU truncates sources here: setup() raises it to data.max_len, so a validation source as long as
        # the longest training pair is translated whole (long-document data keeps pairs past 1,024 subwords).
        self.valid_max_len = MAX_SOURCE_LEN
        self.data_position = torch.tensor([0, -1])
        self.stream_states: Optional[list] = None  # per rank, from a checkpoint: where each rank's stream resumes
        self._tick: Optional[float] = None
        self._valid_loss = [0.0, 0]
        self._update = [0.0, 0]  # this update's summed training loss and target tokens, on this rank, so far
        # Micro-batch loss sums are multiplied by this before backward (setup: 1 / data.max_tokens), so gradients in
        # fp16 stay near a per-token mean's size (GradScaler's initial scale was tuned for that); the division in
        # on_before_optimizer_step takes it out again. Any constant shared by all micro-batches and ranks is exact.
        self.loss_scale = 1.0
        self.loss = ProjectedLoss()

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule
        if data is not None:
            self.loss_scale = 1.0 / data.cfg.max_tokens
            self.valid_max_len = max(MAX_SOURCE_LEN, data.cfg.max_len)
        if data is not None and data.tokenizer is not None:
            self.tokenizer = data.tokenizer
            self.valid_sources, self.valid_references = list(data.valid_set["src"]), list(data.valid_set["tgt"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["src"], batch["src_lengths"], batch["tgt_in"])

    def _loss(self, batch: dict[str, torch.Tensor], smoothing: float) -> tuple[torch.Tensor, int]:
        hidden = self.model.features(batch["src"], batch["src_lengths"], batch["tgt_in"])
        return self.loss(hidden, self.model.output_weight(), batch["tgt_out"], smoothing)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The micro-batch's loss sum, scaled so that Lightning's division by accumulate_grad_batches cancels: the
        update's gradient accumulates as the plain sum over its micro-batches, normalised before the step."""
        loss_sum, n_tokens = self._loss(batch, self.optim_cfg.label_smoothing)
        self._update[0] += float(loss_sum.detach())
        self._update[1] += n_tokens
        self.data_position = batch["position"].detach().cpu()
        now = time.perf_counter()
        if self._tick is not None:
            self.log("tok_per_s", n_tokens / max(now - self._tick, 1e-9), prog_bar=True, on_step=True)
        self._tick = now
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss_sum * (self.trainer.accumulate_grad_batches * self.loss_scale)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Divide the accumulated gradient by the update's target tokens, summed over micro-batches and ranks.

        Lightning calls this after the update's last backward and before gradient clipping; under 16-mixed after
        the GradScaler has unscaled the gradients (lightning.pytorch.plugins.precision.amp), so clipping and the
        step see the normalised gradient in every precision. DDP has averaged the gradients over ranks: the factor
        multiplies that mean back into a sum.
        """
        totals = torch.tensor(self._update, dtype=torch.float64, device=self.device)  # (loss sum, tokens)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # all ranks' (identity on one device)
        self._update = [0.0, 0]
        tokens = max(float(totals[1]), 1.0)
        factor = self.trainer.world_size / (self.loss_scale * tokens)
        for parameter in self.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(factor)
        # The update's per-token mean over all its micro-batches and ranks (the quantity whose gradient is taken).
        self.log("train_loss", float(totals[0]) / tokens, prog_bar=True, on_step=True)

    def on_validation_epoch_start(self) -> None:
        self._valid_loss = [0.0, 0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss_sum, n_tokens = self._loss(batch, 0.0)
        self._valid_loss[0] += float(loss_sum)
        self._valid_loss[1] += n_tokens

    def on_validation_epoch_end(self) -> None:
        totals = torch.tensor(self._valid_loss, dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        self.log("val_loss", float(totals[0] / totals[1].clamp(min=1)), prog_bar=True, sync_dist=False)
        if self.tokenizer is not None and self.valid_sources and not self.trainer.sanity_checking:
            self.log("val_bleu", self._validation_bleu(), prog_bar=True, sync_dist=False)
        self._tick = None  # validation time is not training throughput

    def _validation_bleu(self) -> float:
        """Each rank translates its share; BLEU is computed on the gathered corpus (same on every rank)."""
        sources, references = self.valid_sources, self.valid_references
        if self.val_max_sentences is not None:
            sources, references = sources[: self.val_max_sentences], references[: self.val_max_sentences]
        rank, world = self.global_rank, self.trainer.world_size
        _, hypotheses = translate_and_score(
            self.model, self.tokenizer, sources[rank::world], references[rank::world], self.decode_cfg,
            max_len=self.valid_max_len,
        )
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, hypotheses)
            hypotheses = [None] * len(sources)
            for r, part in enumerate(gathered):
                hypotheses[r::world] = part
        return bleu(hypotheses, references, self.bleu_tokenize)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, self.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Exact resumption: the RNG that drives dropout, and the last batch consumed.
        checkpoint["nmt_rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["nmt_cuda_rng"] = torch.cuda.get_rng_state_all()
        checkpoint["nmt_data_position"] = self.data_position
        states = self._stream_states()
        if states is not None:
            checkpoint["nmt_stream_state"] = states
        if self.tokenizer is not None:  # a checkpoint is self-contained for `nmt translate --model x.ckpt`
            checkpoint["nmt_spm"] = torch.frombuffer(bytearray(self.tokenizer.serialized), dtype=torch.uint8)
        checkpoint["nmt_init_from"] = self.init_from

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "nmt_rng" in checkpoint:
            torch.set_rng_state(checkpoint["nmt_rng"])
        if "nmt_cuda_rng" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["nmt_cuda_rng"])
        self.data_position = checkpoint.get("nmt_data_position", self.data_position)
        self.init_from = checkpoint.get("nmt_init_from", self.init_from)
        self.stream_states = checkpoint.get("nmt_stream_state")

    def _stream_states(self) -> Optional[list]:
        """Every rank's ``{"position": its last batch's [epoch, index], "state": TranslationData.stream_state}``
        (tensors, ints and strings), gathered to rank 0, which writes the checkpoint: each rank's stream is its own.
        None when not streaming, and on the other ranks."""
        data = self._trainer.datamodule if self._trainer is not None else None
        if data is None or not getattr(getattr(data, "cfg", None), "streaming", False):
            return None
        state = {"position": self.data_position, "state": data.stream_state(self.data_position)}
        if not (dist.is_available() and dist.is_initialized()):
            return [state]
        # Lightning calls this hook on every rank and rank 0 writes the file: gather to it alone, since each
        # state holds up to a buffer of pending batches.
        states = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(state, states, dst=0)
        return states


def module_from_configs(cfg: TrainConfig) -> TranslationModule:
    """The LightningModule of a training run: the model, optimiser, validation decoding and BLEU settings."""
    return TranslationModule(cfg.model.to_dict(), asdict(cfg.optim), asdict(cfg.decode), cfg.trainer.max_steps,
                             cfg.data.bleu_tokenize, cfg.trainer.val_max_sentences)
