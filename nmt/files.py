"""File modes for nmt's atomic writes.

Checkpoints, tokenizer models and model directories are written to a temporary file or folder beside their target and
renamed into place. ``tempfile`` creates those private (0600 files, 0700 folders), and a rename keeps the mode, so
without this a model saved on a shared machine could be read by its owner only, unlike every file written with
``open``. These give them the mode ``open`` and ``mkdir`` would have: 0666 / 0777 less the process's umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_mode(is_dir: bool) -> int:
    """0o777 (folders) or 0o666 (files) less the current umask, e.g. 0o755 / 0o644 under umask 022."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def publish_modes(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the default modes, before it is renamed into place."""
    path = Path(path)
    if path.is_dir():
        for inner in path.rglob("*"):
            os.chmod(inner, default_mode(inner.is_dir()))
    os.chmod(path, default_mode(path.is_dir()))
