"""A training checkpoint and the model directory exported from it, made without training: for tests that check every
command treats the two alike (issue 24, fault 6)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from nmt.config import DecodeConfig
from nmt.config.train import OptimConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.export import export_model
from nmt.model import Seq2Seq


def save_checkpoint(model: Seq2Seq, tokenizer: Tokenizer, path: Path, bleu_tokenize: Optional[str] = None,
                    step: int = 1) -> Path:
    """What Lightning writes for nmt's TranslationModule: its hyper_parameters (the module's hparams), its state dict
    (the model's under ``model.``) and what on_save_checkpoint adds (the sentencepiece model among it)."""
    from nmt.training.lit_module import TranslationModule

    module = TranslationModule(model.cfg.to_dict(), asdict(OptimConfig()), asdict(DecodeConfig()), 10, bleu_tokenize)
    module.model.load_state_dict(model.state_dict())
    module.tokenizer = tokenizer
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": step}
    module.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def checkpoint_and_export(model: Seq2Seq, tokenizer: Tokenizer, run_dir: Path,
                          bleu_tokenize: Optional[str] = None) -> tuple[Path, Path]:
    """``run_dir/checkpoints/best.ckpt`` and ``run_dir/model`` exported from it as ``nmt train`` exports."""
    ckpt = save_checkpoint(model, tokenizer, run_dir / "checkpoints" / "best.ckpt", bleu_tokenize)
    directory = export_model(model, tokenizer, run_dir / "model",
                             extra={"checkpoint": "best.ckpt", "bleu_tokenize": bleu_tokenize})
    return ckpt, directory
