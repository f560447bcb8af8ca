"""The exported model directory: config.json + model.safetensors + spm.model, loadable without Lightning.

Written into a temporary sibling directory and renamed into place, so a reader never sees a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from nmt.config import ModelConfig
from nmt.model import Seq2Seq, build_model
from nmt.tokenizer import Tokenizer

CONFIG, WEIGHTS, SPM = "config.json", "model.safetensors", "spm.model"


def export_model(model: Seq2Seq, tokenizer: Tokenizer, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(model, str(tmp / WEIGHTS))  # handles the tied embedding/output matrices
        shutil.copyfile(tokenizer.model_file, tmp / SPM)
        payload = {"model": model.cfg.to_dict(), **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Tokenizer, dict]:
    directory = Path(directory)
    payload = json.loads((directory / CONFIG).read_text())
    model = build_model(ModelConfig.from_dict(payload["model"]))
    load_model(model, str(directory / WEIGHTS), device=str(device))
    return model.to(device).eval(), Tokenizer(directory / SPM), payload
