"""Corpora on disk: those that ship with nmt (Multi30k), found wherever nmt runs from, never relative to the current
directory; and the local files a data config names, checked before any library loads.

A source checkout or an editable install reads the repository's ``data/<name>/``; an installed wheel carries the same
files as ``nmt/_data/<name>/`` (pyproject's force-include). Hydra configs name a shipped corpus as
``${corpus:multi30k}``, a resolver registered by ``nmt.config.compose``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nmt.errors import DataError

if TYPE_CHECKING:
    from nmt.config.train import DataConfig

SHIPPED = ("multi30k",)
_PACKAGE = Path(__file__).resolve().parent.parent  # the nmt package


def corpus_dir(name: str) -> Path:
    """The folder of the shipped corpus ``name`` (its ``README.md`` gives provenance and citation).

    Raises ValueError for a name nmt does not ship, FileNotFoundError when the files are missing from this install.
    """
    if name not in SHIPPED:
        raise ValueError(f"unknown corpus {name!r}: nmt ships {', '.join(SHIPPED)}; for your own files set data.path")
    candidates = (_PACKAGE / "_data" / name, _PACKAGE.parent / "data" / name)  # wheel, then source checkout
    for candidate in candidates:
        if (candidate / "README.md").is_file():
            return candidate
    raise FileNotFoundError(
        f"corpus {name!r} is missing from this install (looked in {', '.join(map(str, candidates))}); "
        "reinstall nmt, or set data.path to a copy of it"
    )


def local_files(cfg: "DataConfig", split_name: str) -> list[Path]:
    """The files of split ``split_name`` under ``data.path`` (one per language for format text); DataError naming the
    folder or file when one is missing."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {cfg.path!r} is not a folder"
            + (f"; set data.path=null to load {cfg.hub_id!r} from the Hub instead" if cfg.hub_id else "")
        )
    langs = (cfg.src_lang, cfg.tgt_lang) if cfg.format == "text" else (None,)
    files = [root / cfg.file_pattern.format(split=split_name, lang=lang) for lang in langs]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: no such file (data.path={cfg.path!r}, data.file_pattern={cfg.file_pattern!r})")
    return files
