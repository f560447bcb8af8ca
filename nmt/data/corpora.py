"""Corpora on disk: those that ship with nmt (Multi30k), found wherever nmt runs from, never relative to the current
directory; and the local files a data config names, checked before any library loads.

A source checkout or an editable install reads the repository's ``data/<name>/``; an installed wheel carries the same
files as ``nmt/_data/<name>/`` (pyproject's force-include). Hydra configs name a shipped corpus as
``${corpus:multi30k}``, a resolver registered by ``nmt.config.compose``.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
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
    """The files of split ``split_name`` under ``data.path``, every shard's (see `local_shards`) in shard order."""
    return [file for shard in local_shards(cfg, split_name) for file in shard]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def local_shards(cfg: "DataConfig", split_name: str) -> list[tuple[Path, ...]]:
    """The shards of split ``split_name`` under ``data.path``: one tuple per shard, a file per language for format
    text (src, tgt), else one file. A glob in the split name or ``data.file_pattern`` (``data.splits.train='train.*'``
    reads train.00000.en, train.00001.en, …) names several shards, sorted by name; each source shard pairs with the
    target shard of the same name but for the language. DataError naming the folder or file when one is missing or
    a shard has no partner."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"data.path {cfg.path!r} is not a folder"
            + (f"; set data.path=null to load {cfg.hub_id!r} from the Hub instead" if cfg.hub_id else "")
        )
    langs = (cfg.src_lang, cfg.tgt_lang) if cfg.format == "text" else (None,)
    names = [cfg.file_pattern.format(split=split_name, lang=lang) for lang in langs]
    where = f"data.path={cfg.path!r}, data.file_pattern={cfg.file_pattern!r}"
    if not _is_glob(names[0]):
        for file in (root / name for name in names):
            if not file.is_file():
                compressed = file.with_name(file.name + ".gz")
                hint = (f"; {compressed.name} is there: add \"data.file_pattern='{cfg.file_pattern}.gz'\" (quoted so, "
                        "for the shell and Hydra)") if compressed.is_file() else ""
                raise DataError(f"{file}: no such file ({where}){hint}")
        return [tuple(root / name for name in names)]
    per_lang = [_glob_keys(root, name) for name in names]  # [{wildcard parts: path}] per language
    if not per_lang[0]:
        raise DataError(f"{root / names[0]}: no file matches ({where}, split name {split_name!r})")
    for this, other in itertools.permutations(per_lang, 2):
        for key, file in this.items():
            if key not in other:
                raise DataError(f"{file}: no partner shard in the other language ({where})")
    return [tuple(files[key] for files in per_lang) for key in sorted(per_lang[0], key=lambda k: str(per_lang[0][k]))]


def _glob_keys(root: Path, pattern: str) -> dict[tuple[str, ...], Path]:
    """The files matching glob ``pattern`` under ``root``, keyed by what its wildcards matched, so the shards of two
    languages pair up by key."""
    regex = re.compile(_wildcard_groups(pattern))
    found = {}
    for file in root.glob(pattern):
        match = regex.match(file.relative_to(root).as_posix())
        if file.is_file() and match:
            found[match.groups()] = file
    return found


def _wildcard_groups(pattern: str) -> str:
    """A regex matching what glob ``pattern`` matches, with a group per wildcard (``*``, ``?``, ``[...]``)."""
    parts, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        end = pattern.find("]", i + 2) if char == "[" else -1
        if char in "*?":
            parts.append("(.*)" if char == "*" else "(.)")
        elif end > 0:
            parts.append("(" + fnmatch.translate(pattern[i:end + 1])[4:-3] + ")")  # (?s:[...])\Z -> [...]
            i = end
        else:
            parts.append(re.escape(char))
        i += 1
    return "".join(parts) + r"\Z"
