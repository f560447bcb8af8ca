"""Training and evaluation pairs made ready for the model: cleaned, encoded with sentencepiece and filtered by length.

Encoded pairs get ``src_ids`` and ``tgt_ids`` (int32 subword ids) and ``src_len`` and ``tgt_len`` (their counts).
Dropped pairs are counted and logged, never silently lost (CleaningStats).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import datasets
import numpy as np

from nmt.config.train import DataConfig
from nmt.data.batching import subword_lengths
from nmt.data.tokenizer import Tokenizer
from nmt.errors import plural

log = logging.getLogger(__name__)


@dataclass
class CleaningStats:
    """What cleaning dropped from a split, and the kept pairs' subword lengths ``(src, tgt)`` (arrays (kept,), int32;
    None when streaming): read before the kept rows are selected, because through the index mapping the selection
    leaves, even a 4-byte column takes seconds per 500k pairs to read. When streaming, the counts grow as pairs go
    by; StreamBatches logs them and starts them again (`reset`) at the end of each pass."""

    split: str
    total: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0
    lengths: Optional[tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False)

    @property
    def kept(self) -> int:
        return self.total - self.empty - self.too_long - self.bad_ratio

    def __str__(self) -> str:
        return (
            f"{self.split}: {self.total} pairs; dropped {self.empty} empty or whitespace-only, {self.too_long} too "
            f"long, {self.bad_ratio} over the length ratio; kept {self.kept}"
        )

    def reset(self) -> None:
        """Zero the drop counts (not ``lengths``): a streaming pass starts counting afresh."""
        self.total = self.empty = self.too_long = self.bad_ratio = 0


# int32 ids: half the Arrow cache and memory map of datasets' default int64, and every vocabulary fits.
IDS = datasets.List(datasets.Value("int32"))
PARALLEL_FROM = 100_000  # pairs: below this, starting worker processes costs more than it saves


def _with_ids(features):
    length = datasets.Value("int32")
    return datasets.Features({**features, "src_ids": IDS, "tgt_ids": IDS, "src_len": length, "tgt_len": length})


def encode_processes(cfg: DataConfig, rows: int) -> Optional[int]:
    """``num_proc`` for encoding ``rows`` pairs: ``data.num_proc``, else one per usable CPU core (at most 8) from
    PARALLEL_FROM pairs up; None (datasets' one process) for 1."""
    count = cfg.num_proc
    if count is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
        count = min(cores, 8) if rows >= PARALLEL_FROM else 1
    return count if count > 1 and rows > count else None


def _non_empty_rows(src: list[str], tgt: list[str]) -> list[bool]:
    return [bool(s.strip()) and bool(t.strip()) for s, t in zip(src, tgt)]


def drop_empty(ds):
    """The pairs of an Arrow-backed dataset whose two sides both hold a non-space character, filtered in batches (one
    Python call per 1,000 rows, not one per row)."""
    return ds.filter(_non_empty_rows, batched=True, input_columns=["src", "tgt"])


def _clean_stream(ds, tokenizer: Tokenizer, cfg: DataConfig, stats: CleaningStats):
    """A streamed dataset's pairs cleaned and encoded as they are read, each rule counting into ``stats`` what it
    drops (the prepared path counts with array operations instead)."""
    max_len, max_ratio = cfg.max_len, cfg.max_ratio

    def non_empty(pair):
        stats.total += 1
        keep = bool(pair["src"].strip()) and bool(pair["tgt"].strip())
        stats.empty += not keep
        return keep

    def encode_pair(pair):
        src, tgt = tokenizer.encode([pair["src"], pair["tgt"]])
        return {"src_ids": src, "tgt_ids": tgt}

    def rules(pair) -> tuple[bool, bool]:
        fits, ratio_ok = length_rules(len(pair["src_ids"]), len(pair["tgt_ids"]), max_len, max_ratio)
        return bool(fits), bool(ratio_ok)

    def short(pair):
        keep = rules(pair)[0]
        stats.too_long += not keep
        return keep

    def balanced(pair):  # sees only pairs `short` kept, as the prepared path counts a ratio only where a pair fits
        keep = rules(pair)[1]
        stats.bad_ratio += not keep
        return keep

    # One pair per call: datasets resumes a batched map by re-reading and re-encoding its whole batch, an unbatched
    # one at the next pair (and one call per pair costs nothing beside a training step). Two length filters, not one:
    # a checkpoint's datasets state follows the chain's shape, and checkpoints from earlier versions hold two.
    return ds.filter(non_empty).map(encode_pair).filter(short).filter(balanced)


def length_rules(src_len, tgt_len, max_len: int, max_ratio: float):
    """(fits, ratio_ok) of pairs with ``src_len`` and ``tgt_len`` subwords — two int arrays (the prepared path, one
    value per pair) or two ints (one streamed pair): both sides at most ``max_len``; the longer side at most
    ``max_ratio`` times the shorter (at least 1). A pair is kept when both hold; a pair over ``max_len`` counts as too
    long whatever its ratio. The one statement of the rules, so the two paths drop the same pairs."""
    fits = (src_len <= max_len) & (tgt_len <= max_len)
    ratio_ok = np.maximum(src_len, tgt_len) <= max_ratio * np.maximum(1, np.minimum(src_len, tgt_len))
    return fits, ratio_ok


def clean_and_encode(ds, tokenizer: Tokenizer, cfg: DataConfig, split: str, streaming: bool = False,
                     stats: Optional[CleaningStats] = None):
    """Training pairs: drop empty/whitespace-only pairs, encode, drop pairs over ``max_len`` subwords or over the
    length ratio. Returns (dataset with src_ids/tgt_ids, CleaningStats) for the caller to log (TranslationData.setup:
    once, though Lightning's prepare_data encodes the split first); when streaming the counts go into ``stats`` (a new
    one when None) as the pairs are read, for StreamBatches to log per pass.
    A streamed dataset keeps its other columns (a local text stream's ``at``)."""
    stats = stats if stats is not None else CleaningStats(split)
    if streaming:
        return _clean_stream(ds, tokenizer, cfg, stats), stats
    max_len, max_ratio = cfg.max_len, cfg.max_ratio

    def encode(batch):
        src, tgt = tokenizer.encode(batch["src"]), tokenizer.encode(batch["tgt"])
        return {"src_ids": src, "tgt_ids": tgt, "src_len": [len(s) for s in src], "tgt_len": [len(t) for t in tgt]}

    stats.total = ds.num_rows
    ds = drop_empty(ds)
    stats.empty = stats.total - ds.num_rows
    if ds.num_rows == 0:  # datasets maps no rows to no new columns; the caller says no pairs are left
        stats.lengths = (np.zeros(0, np.int32), np.zeros(0, np.int32))
        return ds, stats
    # 10,000 rows a call: sentencepiece already spreads a call over the cores; bigger calls cut the per-call cost.
    ds = ds.map(encode, batched=True, batch_size=10_000, features=_with_ids(ds.features),
                num_proc=encode_processes(cfg, ds.num_rows))
    # The length rules on the length columns, as arrays: no Python call per row.
    a, b = subword_lengths(ds, "src_ids"), subword_lengths(ds, "tgt_ids")
    fits, ratio_ok = length_rules(a, b, max_len, max_ratio)
    stats.too_long, stats.bad_ratio = int((~fits).sum()), int((fits & ~ratio_ok).sum())
    stats.lengths = (a, b)
    if not (fits & ratio_ok).all():
        keep = np.flatnonzero(fits & ratio_ok)
        ds, stats.lengths = ds.select(keep), (a[keep], b[keep])
    return ds, stats


def encode_eval(ds, tokenizer: Tokenizer, cfg: DataConfig, split: str):
    """Validation/test pairs: every pair kept (BLEU needs them all), subwords truncated at ``max_len``."""
    max_len = cfg.max_len

    def encode(batch):
        src, tgt = tokenizer.encode(batch["src"]), tokenizer.encode(batch["tgt"])
        src_ids, tgt_ids = [s[:max_len] for s in src], [t[:max_len] for t in tgt]
        return {
            "src_ids": src_ids,
            "tgt_ids": tgt_ids,
            "src_len": [len(s) for s in src_ids],
            "tgt_len": [len(t) for t in tgt_ids],
            "truncated": [max(len(s), len(t)) > max_len for s, t in zip(src, tgt)],
        }

    ds = ds.map(encode, batched=True)
    truncated = sum(ds["truncated"])
    if truncated:
        log.warning("%s: %s longer than data.max_len=%d subwords %s truncated", split, plural(truncated, "pair"),
                    max_len, "was" if truncated == 1 else "were")
    return ds
