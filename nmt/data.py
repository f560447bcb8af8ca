"""Parallel corpora through Hugging Face ``datasets``: local files or the Hub, cleaned, encoded and filtered.

Every split comes out as a dataset with ``src`` and ``tgt`` text columns; training pairs also get ``src_ids`` and
``tgt_ids``. Bad input is a DataError with one line naming the file, line or key.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import datasets

from nmt.corpora import local_files
from nmt.errors import DataError, first_line
from nmt.tokenizer import Tokenizer
from nmt.train_config import DataConfig

log = logging.getLogger(__name__)
datasets.disable_progress_bars()

HUB_HOST = ("huggingface.co", 443)


@dataclass
class CleaningStats:
    split: str
    total: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0

    @property
    def kept(self) -> int:
        return self.total - self.empty - self.too_long - self.bad_ratio

    def __str__(self) -> str:
        return (
            f"{self.split}: {self.total} pairs; dropped {self.empty} empty or whitespace-only, {self.too_long} too "
            f"long, {self.bad_ratio} over the length ratio; kept {self.kept}"
        )


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_invalid_utf8_line(path: Path) -> Optional[tuple[int, str]]:
    """(1-based line number, reason) of the first line that is not UTF-8, or None."""
    try:
        with _open_text(path) as f:
            for number, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    return number, f"{error.reason} at byte {error.start}"
    except (OSError, EOFError) as error:  # e.g. a .gz file that is not gzip
        return 0, f"unreadable: {first_line(error)}"
    return None



def _raise_for_encoding(paths: list[Path], error: Exception) -> None:
    for path in paths:
        found = first_invalid_utf8_line(path)
        if found is not None:
            line, reason = found
            if line == 0:
                raise DataError(f"{path}: {reason}") from None
            raise DataError(f"{path}:{line}: invalid UTF-8 ({reason}); convert the file to UTF-8 (e.g. iconv)") from None
    cause = error.__cause__ or error.__context__
    detail = first_line(cause) if cause is not None else first_line(error)
    raise DataError(f"could not read {', '.join(map(str, paths))}: {detail}") from None


def _text_lines(path: str, stamp: str):
    """Lines of a text file split at "\\n" only (a CR before it dropped, a byte-order mark too), as `nmt translate`,
    `nmt evaluate` and fairseq read them. The `text` builder splits with str.splitlines, which also breaks at a lone
    \\r, \\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and U+2029: one stray inside a sentence on each side and every
    later pair is silently misaligned. ``stamp`` (size and mtime) is only there to key the datasets cache."""
    with _open_text(Path(path)) as f:
        for number, raw in enumerate(f, start=1):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            line = line[:-1] if line.endswith(b"\r") else line
            text = line.decode("utf-8")  # invalid UTF-8 raises; _raise_for_encoding names the file and line
            yield {"text": text[1:] if number == 1 and text.startswith("\ufeff") else text}


def _load_text(file: Path, cache_dir: str, streaming: bool):
    stat = file.stat()
    kwargs = {"path": str(file), "stamp": f"{stat.st_size}:{stat.st_mtime_ns}"}
    if streaming:
        return datasets.IterableDataset.from_generator(_text_lines, gen_kwargs=kwargs)
    return datasets.Dataset.from_generator(_text_lines, gen_kwargs=kwargs, cache_dir=cache_dir)


def _check_tsv_fields(path: Path) -> None:
    """Every row holds as many tab-separated fields as the header: pandas would fill a row without its tab with an
    empty target (a wrong reference at evaluation, a silently dropped pair in training). Blank lines are skipped, as
    pandas does."""
    with _open_text(path) as f:
        fields = None
        for number, raw in enumerate(f, start=1):
            if not raw.strip(b"\r\n"):
                continue
            count = raw.count(b"\t") + 1
            if fields is None:
                fields = count
            elif count != fields:
                raise DataError(
                    f"{path}:{number}: {count} tab-separated field{'s' * (count != 1)} but the header has {fields}"
                )


def _builder(cfg: DataConfig) -> tuple[str, dict]:
    if cfg.format == "tsv":
        # na_filter off: pandas would otherwise turn sentences such as "NA" or "null" into missing values.
        return "csv", {"sep": "\t", "quoting": 3, "na_filter": False, "keep_default_na": False}
    return ("json" if cfg.format == "jsonl" else "parquet"), {}


def _load_files(cfg: DataConfig, files: list[Path], streaming: bool):
    try:
        if cfg.format == "text":
            return [_load_text(file, str(Path(cfg.cache_dir) / "hf"), streaming) for file in files]
        builder, kwargs = _builder(cfg)
        if cfg.format == "tsv":
            for file in files:
                _check_tsv_fields(file)
        return [
            datasets.load_dataset(
                builder,
                data_files=str(file),
                split="train",
                streaming=streaming,
                cache_dir=str(Path(cfg.cache_dir) / "hf"),
                **kwargs,
            )
            for file in files
        ]
    except DataError:
        raise
    except Exception as error:  # datasets wraps decoding errors in DatasetGenerationError
        _raise_for_encoding(files, error)


def _to_pairs(ds, cfg: DataConfig, where: str):
    """Columns ``src``, ``tgt`` from a ``translation`` dict column or from columns named by language."""
    columns = ds.column_names or []
    if "translation" in columns:
        src, tgt = cfg.src_lang, cfg.tgt_lang
        return ds.map(
            lambda batch: {
                "src": [t.get(src) or "" for t in batch["translation"]],
                "tgt": [t.get(tgt) or "" for t in batch["translation"]],
            },
            batched=True,
            remove_columns=columns,
        )
    missing = [lang for lang in (cfg.src_lang, cfg.tgt_lang) if lang not in columns]
    if missing:
        raise DataError(
            f"{where}: no column {' or '.join(map(repr, missing))} (columns: {', '.join(columns)}); "
            "expected a column per language or a 'translation' column"
        )
    ds = ds.select_columns([cfg.src_lang, cfg.tgt_lang])
    src, tgt = cfg.src_lang, cfg.tgt_lang
    # Missing values become empty strings (then dropped and counted as empty pairs); numbers become text.
    as_text = lambda values: ["" if v is None else str(v) for v in values]  # noqa: E731
    return ds.map(lambda b: {"src": as_text(b[src]), "tgt": as_text(b[tgt])}, batched=True, remove_columns=[src, tgt])


def _hub_reachable() -> bool:
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
        return True
    except OSError:
        return False


def _load_hub(cfg: DataConfig, split_name: str, streaming: bool):
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not offline and not _hub_reachable():
        raise DataError(
            f"cannot reach the Hugging Face Hub to load {cfg.hub_id!r}: train from local files instead "
            "(data=local data.path=DIR, or data.path=DIR with the hub dataset's config), or set HF_HUB_OFFLINE=1 "
            "to use a copy already in the cache"
        )
    try:
        ds = datasets.load_dataset(
            cfg.hub_id,
            cfg.hub_config,
            split=split_name,
            streaming=streaming,
            cache_dir=str(Path(cfg.cache_dir) / "hf"),
        )
    except Exception as error:
        raise DataError(f"data.hub_id {cfg.hub_id!r} split {split_name!r}: {first_line(error)}") from None
    return _to_pairs(ds, cfg, f"{cfg.hub_id}[{split_name}]")


def load_split(cfg: DataConfig, split: str, streaming: bool = False):
    """The ``split`` ('train', 'valid' or 'test') as a dataset of ``src``/``tgt`` pairs (iterable when streaming)."""
    split_name = getattr(cfg.splits, split)
    if split_name is None:
        raise DataError(f"data.splits.{split} is not set")
    if cfg.path is None:
        return _load_hub(cfg, split_name, streaming)
    files = local_files(cfg, split_name)
    if cfg.format != "text":
        return _to_pairs(_load_files(cfg, files, streaming)[0], cfg, str(files[0]))
    src, tgt = _load_files(cfg, files, streaming)
    if streaming:
        return datasets.IterableDataset.from_generator(_zip_lines, gen_kwargs={"files": tuple(files), "pair": (src, tgt)})
    if src.num_rows != tgt.num_rows:
        raise DataError(f"{files[0]} has {src.num_rows} lines but {files[1]} has {tgt.num_rows}; they must align")
    return datasets.concatenate_datasets([src.rename_column("text", "src"), tgt.rename_column("text", "tgt")], axis=1)


def _zip_lines(files, pair):
    src, tgt = pair
    src_it, tgt_it = iter(src), iter(tgt)
    count = 0
    for s in src_it:
        t = next(tgt_it, None)
        if t is None:
            raise DataError(f"{files[1]} ends after {count} lines but {files[0]} goes on; they must align")
        count += 1
        yield {"src": s["text"], "tgt": t["text"]}
    if next(tgt_it, None) is not None:
        raise DataError(f"{files[0]} ends after {count} lines but {files[1]} goes on; they must align")


def clean_and_encode(ds, tokenizer: Tokenizer, cfg: DataConfig, split: str, streaming: bool = False):
    """Training pairs: drop empty/whitespace-only pairs, encode, drop pairs over ``max_len`` subwords or over the
    length ratio. Returns (dataset with src_ids/tgt_ids, CleaningStats); counts are logged (lazily when streaming)."""
    stats = CleaningStats(split)
    max_len, max_ratio = cfg.max_len, cfg.max_ratio

    def encode(batch):
        return {"src_ids": tokenizer.encode(batch["src"]), "tgt_ids": tokenizer.encode(batch["tgt"])}

    def non_empty(pair):
        return bool(pair["src"].strip()) and bool(pair["tgt"].strip())

    def short(pair):
        return len(pair["src_ids"]) <= max_len and len(pair["tgt_ids"]) <= max_len

    def balanced(pair):
        a, b = len(pair["src_ids"]), len(pair["tgt_ids"])
        return max(a, b) <= max_ratio * max(1, min(a, b))

    if streaming:
        return ds.filter(non_empty).map(encode, batched=True).filter(short).filter(balanced), stats
    stats.total = ds.num_rows
    ds = ds.filter(non_empty)
    stats.empty = stats.total - ds.num_rows
    ds = ds.map(encode, batched=True)
    before = ds.num_rows
    ds = ds.filter(short)
    stats.too_long = before - ds.num_rows
    before = ds.num_rows
    ds = ds.filter(balanced)
    stats.bad_ratio = before - ds.num_rows
    log.info("%s", stats)
    return ds, stats


def encode_eval(ds, tokenizer: Tokenizer, cfg: DataConfig, split: str):
    """Validation/test pairs: every pair kept (BLEU needs them all), subwords truncated at ``max_len``."""
    max_len = cfg.max_len

    def encode(batch):
        src, tgt = tokenizer.encode(batch["src"]), tokenizer.encode(batch["tgt"])
        return {
            "src_ids": [s[:max_len] for s in src],
            "tgt_ids": [t[:max_len] for t in tgt],
            "truncated": [max(len(s), len(t)) > max_len for s, t in zip(src, tgt)],
        }

    ds = ds.map(encode, batched=True)
    truncated = sum(ds["truncated"])
    if truncated:
        log.warning("%s: %d pairs longer than data.max_len=%d subwords were truncated", split, truncated, max_len)
    return ds
