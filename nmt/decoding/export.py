"""The exported model directory: config.json + model.safetensors + spm.model, loadable without Lightning
(nmt.decoding.loading.load_model).

Written into a temporary sibling directory and renamed into place, so a reader never sees a half-written model
(``write_directory``; the CTranslate2 export, nmt/ct2/export.py, writes its folder the same way).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import save_model

from nmt.data.tokenizer import Tokenizer
from nmt.files import publish_modes
from nmt.model import Seq2Seq

CONFIG, WEIGHTS, SPM = "config.json", "model.safetensors", "spm.model"


def write_directory(directory: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create ``directory`` whole: ``fill(tmp)`` writes into a temporary sibling, which then replaces ``directory``.
    An existing one is renamed aside (a unique name, so two writers never share it) and removed once the new one is in
    place, or renamed back if that fails. On any error, or an interrupt before the swap, nothing changes (one right
    after it can leave the old folder beside the new one, under its ``.NAME.old.*`` name). Returns ``directory``.
    Raises NotADirectoryError when ``directory`` is a file, OSError naming ``directory`` (never a temporary name)
    when it cannot be made or replaced. Commands check their output first with nmt.files.check_output_folder."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():  # a file is never replaced by a folder
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(directory))
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    except OSError as error:  # the error names the folder asked for, not the temporary one beside it
        raise OSError(error.errno, error.strerror, str(directory)) from None
    try:
        fill(tmp)
        publish_modes(tmp)  # mkdtemp's 0700 (and any 0600 file inside) would make the model its owner's only
        try:
            _swap(tmp, directory)
        except OSError as error:  # the renames' errors name the temporary folders; the user asked for directory
            if error.errno is None:
                raise
            raise OSError(error.errno, error.strerror, str(directory)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _swap(tmp: Path, directory: Path) -> None:
    """Rename ``tmp`` to ``directory``; an existing ``directory`` is moved aside first and removed after, or moved
    back if the swap fails."""
    if not directory.exists():
        os.replace(tmp, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
    try:
        os.replace(directory, old)  # onto the fresh empty folder: os.replace may replace an empty directory
    except BaseException:
        old.rmdir()
        raise
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_model(model: Seq2Seq, tokenizer: Tokenizer, directory: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``directory`` (atomically, through ``write_directory``): config.json (``{"model": model.cfg, **extra}``),
    model.safetensors (the weights, tied matrices once) and spm.model (``tokenizer``'s bytes). Returns the directory;
    ``nmt.decoding.loading.load_model`` reads it back without unpickling anything."""
    def fill(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS))  # handles the tied embedding/output matrices
        (tmp / SPM).write_bytes(tokenizer.serialized)
        payload = {"model": model.cfg.to_dict(), **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(payload, indent=2) + "\n")

    return write_directory(directory, fill)
