"""The exported model directory: config.json + model.safetensors + spm.model, loadable without Lightning
(nmt.decoding.loading.load_model).

Written into a temporary sibling directory and renamed into place, so a reader never sees a half-written model
(``write_directory``; the CTranslate2 export, nmt/ct2/export.py, writes its folder the same way).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import save_model

from nmt.data.tokenizer import Tokenizer
from nmt.model import Seq2Seq

CONFIG, WEIGHTS, SPM = "config.json", "model.safetensors", "spm.model"


def write_directory(directory: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create ``directory`` whole: ``fill(tmp)`` writes into a temporary sibling, which then replaces ``directory``
    (an existing one is moved aside first and removed after). On any error, or an interrupt, nothing changes."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        fill(tmp)
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


def export_model(model: Seq2Seq, tokenizer: Tokenizer, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS))  # handles the tied embedding/output matrices
        (tmp / SPM).write_bytes(tokenizer.serialized)
        payload = {"model": model.cfg.to_dict(), **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(payload, indent=2) + "\n")

    return write_directory(directory, fill)
