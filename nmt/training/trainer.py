"""The Lightning side of ``nmt train``: callbacks, the Trainer, and ``train(cfg)`` — the function tests call directly.

``nmt train`` (``nmt.training.train``) imports this module only after the config has composed and validated, so a typo
is reported before Lightning, datasets and torch load.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from nmt.config.compose import to_train_config
from nmt.config.train import TrainConfig
from nmt.data.datamodule import TranslationData
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.export import export_model
from nmt.decoding.loading import load_model
from nmt.files import publish_modes
from nmt.precision import resolve_precision
from nmt.training.init_from import check_init_from
from nmt.training.lit_module import TranslationModule, module_from_configs

log = logging.getLogger(__name__)
# Lightning 2.6's pytree helper trips over torch 2.13's own deprecation on every fit: noise to a user, nothing to do.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


class BatchTrace(Callback):
    """Writes each rank's consumed batch positions and a fingerprint of their tokens (``trace_batches=true``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch, index = batch["position"].tolist()
        digest = hash(tuple(batch["src"].flatten().tolist())) & 0xFFFFFFFF
        with open(self.directory / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step} {epoch} {index} {digest:08x}\n")


class ValidateLastStep(Callback):
    """Validate after the last update too, as fairseq does: Lightning validates only every ``val_check_interval``
    batches, so with ``max_steps`` off that grid the final updates were never scored and could not become best.ckpt.
    Lightning validates once more when ``should_stop`` is raised by the end of a batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, then renames it into place: a kill at any
    moment leaves the previous checkpoint intact (fsspec's transaction stages in /tmp, which may be another
    filesystem, where the final move is a copy)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            torch.save(checkpoint, tmp)
        publish_modes(tmp.name)  # tempfile's 0600 would make the checkpoint its owner's only
        os.replace(tmp.name, path)


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar for step-bounded training: 'Epoch 3' and 'step 1200/8000' where Lightning wrote
    'Epoch 3/-2' (max_epochs - 1, and max_epochs is -1 when trainer.max_steps bounds the run)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Epoch {current_epoch}"

    @property
    def total_train_batches(self) -> int | float:
        """The bar's total in the unit it counts (batches of this epoch, from its first): Lightning caps it at the
        optimizer steps left, which counts neither the batches a resumed epoch already ran (the bar read 8/4) nor
        the several batches of an accumulated step."""
        trainer = self.trainer
        if trainer.max_epochs != -1 or not trainer.max_steps or trainer.max_steps < 0:
            return trainer.num_training_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # this epoch's batches before this start
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(trainer.num_training_batches, done + left)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return {"step": f"{trainer.global_step}/{trainer.max_steps}", **super().get_metrics(trainer, pl_module)}


def _compute_dtype(precision: str) -> torch.dtype:
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def check_accelerator(accelerator: str) -> str:
    """``accelerator`` (trainer.accelerator) when it can run here; ValueError for a GPU without CUDA."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but no CUDA device is visible; use trainer=cpu")
    return accelerator


def check_runtime(cfg: TrainConfig, module: TranslationModule) -> None:
    """Failures we can see before touching data: a device that is absent, a precision it lacks, a backend that
    cannot run there."""
    accelerator = check_accelerator(cfg.trainer.accelerator)
    if (cfg.trainer.precision.startswith("bf16") and accelerator in ("gpu", "cuda")
            and not torch.cuda.is_bf16_supported()):
        raise ValueError(f"trainer.precision={cfg.trainer.precision}: this GPU has no bf16; "
                         "use trainer.precision=16-mixed")
    uses_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    on_mps = accelerator == "mps" or (accelerator == "auto" and not uses_cuda and torch.backends.mps.is_available())
    if not uses_cuda and not on_mps and cfg.trainer.precision in ("16-mixed", "16"):
        # Lightning would run bf16-mixed instead (CPU autocast), while config.yaml recorded 16-mixed
        raise ValueError(f"trainer.precision={cfg.trainer.precision}: fp16 mixed precision needs a CUDA GPU; on a "
                         "CPU use trainer.precision=bf16-mixed or auto")
    device = torch.device("cuda" if uses_cuda else "cpu")
    module.model.check_backends(device, _compute_dtype(cfg.trainer.precision), training=True)


def build_trainer(cfg: TrainConfig, run_dir: Path) -> L.Trainer:
    t = cfg.trainer
    checkpoints = run_dir / "checkpoints"
    callbacks: list[Callback] = [
        # best.ckpt by validation BLEU; save_last also refreshes last.ckpt after every validation has run (unless the
        # periodic callback below owns last.ckpt: two owners would make Lightning write last-v1.ckpt).
        # No version counter on either callback: a resume whose callback state does not carry over (another
        # checkpoint spacing, a copied run directory) would otherwise write last-v1.ckpt and leave the stale
        # last.ckpt for the next resume=true to go back to.
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_bleu", mode="max", save_top_k=1,
                        save_last=not t.checkpoint_every_n_steps, enable_version_counter=False),
        EarlyStopping(monitor="val_bleu", mode="max", patience=t.patience, check_on_train_epoch_end=False),
        ValidateLastStep(),
    ]
    if t.checkpoint_every_n_steps:  # the newest keep_checkpoints step-N.ckpt (for averaging), last.ckpt too
        callbacks.append(ModelCheckpoint(dirpath=checkpoints, filename="step-{step:07d}", auto_insert_metric_name=False,
                                         monitor="step", mode="max", save_top_k=t.keep_checkpoints, save_last=True,
                                         every_n_train_steps=t.checkpoint_every_n_steps,
                                         enable_version_counter=False))
    if t.enable_progress_bar:
        callbacks.append(StepProgressBar())
    if cfg.trace_batches:
        callbacks.append(BatchTrace(run_dir / "batch_trace"))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches,  # Lightning counts batches here
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        fast_dev_run=t.fast_dev_run or False,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        use_distributed_sampler=False,  # batches are sharded by rank in nmt.data.batching
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        # One version folder per (re)start: a resumed run appends logs/version_1 instead of overwriting version_0.
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tb")],
        default_root_dir=run_dir,
    )


def train(cfg: TrainConfig | DictConfig, run_dir: Optional[str | Path] = None) -> Path:
    """Train, checkpoint, and export the best model to ``<run_dir>/model``; returns the run directory."""
    if isinstance(cfg, DictConfig):
        cfg = to_train_config(cfg)
    run_dir = Path(run_dir or cfg.run_dir or "outputs/run")
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, verbose=False)
    cfg = resolved_precision(cfg, run_dir)
    module = module_from_configs(cfg)
    check_runtime(cfg, module)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if cfg.resume:
        if last.exists():
            ckpt_path = str(last)
        else:
            log.warning("resume=true but %s does not exist: starting from scratch", last)
    if ckpt_path is not None:
        tokenizer = resume_from(cfg, module, last)
    else:
        tokenizer = start_from(cfg, module) if cfg.init_from else None
    data = TranslationData(cfg.data, cfg.seed, tokenizer)
    trainer = build_trainer(cfg, run_dir)
    if trainer.global_rank == 0:
        OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    if not cfg.trainer.fast_dev_run:
        # The final state, whatever step the periodic saves last fell on; all of it (optimizer, loops) for resume.
        trainer.save_checkpoint(last, weights_only=False)
        if trainer.global_rank == 0:
            export_best(trainer, module, data, run_dir, init_from=module.init_from)
    return run_dir


def resolved_precision(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """``cfg`` (a copy) with ``trainer.precision=auto`` resolved for this machine (nmt.precision), logged with why, so
    config.yaml records what ran; a warning when a resumed run's config.yaml recorded another precision than the one
    it now continues in (auto on other hardware, or a precision not repeated on resuming). ValueError for a GPU
    accelerator without CUDA (before auto is resolved, so the log does not describe a GPU that is not there)."""
    precision = cfg.trainer.precision
    if precision == "auto":
        check_accelerator(cfg.trainer.accelerator)
        precision, why = resolve_precision("auto", cfg.trainer.accelerator)
        log.info("trainer.precision=auto: %s (%s)", precision, why)
    recorded = run_dir / "config.yaml"
    if cfg.resume and recorded.exists():
        before = OmegaConf.load(recorded).get("trainer", {}).get("precision")
        if before not in (None, precision):
            now = f"auto picks {precision} on this machine" if cfg.trainer.precision == "auto" else f"is {precision}"
            log.warning("trainer.precision %s, but this run trained in %s until now (its config.yaml); set "
                        "trainer.precision=%s to keep it", now, before, before)
    return replace(cfg, trainer=replace(cfg.trainer, precision=precision))


def start_from(cfg: TrainConfig, module: TranslationModule) -> Tokenizer:
    """``init_from=DIR`` on a fresh run: DIR's weights in the module and its sentencepiece model for the run; the
    optimizer and schedule start afresh. ValueError (one line) where DIR's model config differs from the run's
    (`nmt.training.init_from`: checked before any heavy import too)."""
    check_init_from(cfg)  # again: train() may be called with a config that never went through the command line
    model, tokenizer = load_model(cfg.init_from)
    module.model.load_state_dict(model.state_dict())
    module.init_from = cfg.init_from
    log.info("init_from: weights and sentencepiece model of %s", cfg.init_from)
    return tokenizer


def resume_from(cfg: TrainConfig, module: TranslationModule, checkpoint: Path) -> Optional[Tokenizer]:
    """A resumed run keeps what it started with, whatever ``data.*`` or ``init_from`` say now: the sentencepiece
    model saved in ``checkpoint`` (a tokenizer trained afresh from today's data settings would give the weights
    other subwords) and the init_from it recorded, for the exported model's config.json. None for a checkpoint
    without a tokenizer (older nmt): the data settings' tokenizer, as then. ValueError where a repeated init_from
    no longer matches the run's model config (nmt.training.init_from), as on a fresh start."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    module.init_from = saved.get("nmt_init_from", cfg.init_from)  # a checkpoint without the key predates it
    if cfg.init_from is not None:
        check_init_from(cfg)
        if module.init_from is None or os.path.realpath(module.init_from) != os.path.realpath(cfg.init_from):
            log.warning("init_from=%s is ignored: this run resumes %s, which started from %s", cfg.init_from,
                        checkpoint, module.init_from or "scratch")
    if "nmt_spm" not in saved:
        return None
    log.info("resume: the sentencepiece model saved in %s", checkpoint)
    return Tokenizer.from_serialized(bytes(saved["nmt_spm"].numpy().tobytes()))


def export_best(trainer: L.Trainer, module: TranslationModule, data: TranslationData, run_dir: Path,
                init_from: Optional[str] = None) -> None:
    best = trainer.checkpoint_callbacks[0].best_model_path or str(run_dir / "checkpoints" / "last.ckpt")
    if Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    extra = {"checkpoint": Path(best).name, "bleu_tokenize": data.cfg.bleu_tokenize}
    if init_from is not None:  # where the run started: the model it fine-tuned or uptrained
        extra["init_from"] = str(init_from)
    export_model(module.model.cpu(), data.tokenizer, run_dir / "model", extra=extra)
    log.info("exported %s → %s", Path(best).name, run_dir / "model")
