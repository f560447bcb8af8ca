"""A WMT-size parallel corpus without the internet: Multi30k's sentence pairs, shuffled and recombined.

Real WMT14 en–de (4.5M pairs) needs the Hugging Face Hub. For measuring what size costs — reading, sentencepiece,
encoding, batching, streaming — the text only needs WMT's scale and a realistic spread of lengths, not its content.
Each line here joins 1, 2 or 3 Multi30k pairs (probabilities `SENTENCES_PER_LINE`), the source sides joined in the
same order as the target sides, so the pairs stay translations of each other. Multi30k captions average ~12 words;
two on average per line gives ~25, near WMT14's ~23 words per English sentence, with a spread from ~5 to ~80.
With 29,000 training pairs to draw from, lines of two or three are almost never repeated (29,000² ≈ 8·10⁸
combinations), so a 4.5M-line corpus is mostly distinct lines rather than copies of 29,000.

    python scripts/synthetic_corpus.py --pairs 4500000 --out data/synthetic_4.5M
    nmt train data=local data.path=data/synthetic_4.5M model=small …
"""

from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from nmt.data.corpora import corpus_dir
from nmt.data.textio import read_text
from nmt.files import write_aligned

SENTENCES_PER_LINE = {1: 0.25, 2: 0.5, 3: 0.25}
CHUNK = 100_000  # lines drawn and written at a time: the index arrays stay a few MB whatever the corpus size


@dataclass(frozen=True)
class SyntheticCorpus:
    """What `write_corpus` makes: ``pairs`` training lines, and ``valid`` / ``test`` lines drawn the same way from
    Multi30k's validation and test_2016_flickr pairs (no training sentence appears in them)."""

    pairs: int
    valid: int = 1000
    test: int = 1000
    src_lang: str = "en"
    tgt_lang: str = "de"
    seed: int = 0
    compress: bool = False
    shards: int = 1

    def __post_init__(self) -> None:
        for name in ("pairs", "valid", "test", "shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        for lang in (self.src_lang, self.tgt_lang):
            if not (corpus_dir("multi30k") / f"train.{lang}.gz").is_file():
                raise ValueError(f"Multi30k has no language {lang!r} (en, de, fr, cs)")
        if self.shards > self.pairs:
            raise ValueError(f"shards ({self.shards}) must be at most pairs ({self.pairs})")
        if self.src_lang == self.tgt_lang:
            raise ValueError(f"src_lang and tgt_lang are both {self.src_lang!r}")


def draw_lines(n: int, pool: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index tuples of ``n`` lines over ``pool`` sentence pairs, ``CHUNK`` lines at a time: each chunk is an int32
    array (lines, 3) whose row holds the 1–3 pair indices of a line, -1 padding the unused slots."""
    counts, probabilities = list(SENTENCES_PER_LINE), list(SENTENCES_PER_LINE.values())
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        per_line = rng.choice(counts, size=size, p=probabilities)  # (size,)
        picks = rng.integers(0, pool, size=(size, 3), dtype=np.int32)  # (size, 3)
        picks[np.arange(3)[None, :] >= per_line[:, None]] = -1
        yield picks


def _split_lines(sources: list[str], targets: list[str], n: int, rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    for picks in draw_lines(n, len(sources), rng):
        for row in picks.tolist():
            chosen = [i for i in row if i >= 0]
            yield " ".join(sources[i] for i in chosen), " ".join(targets[i] for i in chosen)


def _hashed(lines: Iterator[tuple[str, str]], hashes: array) -> Iterator[tuple[str, str]]:
    """``lines`` unchanged, each pair's ``hash`` appended to ``hashes`` as it goes by (for `distinct_share`)."""
    for pair in lines:
        hashes.append(hash(pair))
        yield pair


def distinct_share(hashes: array) -> float:
    """The share (0–1) of distinct lines among the training lines whose hashes `write_corpus` collected: 8 bytes a
    line, one sort (under a second at 4.5M lines)."""
    return len(np.unique(np.frombuffer(hashes, dtype=np.int64))) / max(1, len(hashes))


def _write_split(out_dir: Path, names: list[str], lines: Iterator[tuple[str, str]], n: int,
                 corpus: SyntheticCorpus) -> dict[str, Path]:
    """Write ``n`` lines into ``len(names)`` consecutive shards (``names``: file names with a ``{lang}`` field), each
    under a temporary name and then renamed. Returns {file name without .gz: path}."""
    written = {}
    bounds = [n * k // len(names) for k in range(len(names) + 1)]  # shard k holds lines bounds[k] .. bounds[k+1]-1
    for name, size in zip(names, np.diff(bounds).tolist()):
        paths = {lang: out_dir / name.format(lang=lang) for lang in (corpus.src_lang, corpus.tgt_lang)}
        write_aligned(paths, itertools.islice(lines, size), corpus.compress)
        for path in paths.values():
            written[path.name.removesuffix(".gz") if corpus.compress else path.name] = path
    return written


def write_corpus(out_dir: str | Path, corpus: SyntheticCorpus, hashes: Optional[array] = None) -> dict[str, Path]:
    """Write train/valid/test ``.{lang}`` files (``.gz`` with ``compress``) into ``out_dir``, the layout
    ``data=local`` reads (``"data.file_pattern='{split}.{lang}.gz'"`` when compressed). With ``shards`` > 1 the
    training lines go, in order, into ``train.00000.{lang}``, ``train.00001.{lang}``, … (read with
    ``data.splits.train='train.*'``); valid and test stay one file each. The lines are the same whatever the shard
    count. Deterministic for a seed. Each file is written under a temporary name and renamed, so an interrupted run
    leaves no half corpus that looks whole. Returns {"train.en": path, …} ("train.00000.en", … when sharded).
    ``hashes`` (an ``array("q")``), when given, gets the hash of each training (source, target) line pair, for
    `distinct_share`.
    Raises ValueError (from SyntheticCorpus) for bad settings, OSError when ``out_dir`` cannot be written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = corpus_dir("multi30k")
    rng = np.random.default_rng(corpus.seed)
    suffix = ".gz" if corpus.compress else ""
    written = {}
    for split, source, n in (("train", "train", corpus.pairs), ("valid", "val", corpus.valid),
                             ("test", "test_2016_flickr", corpus.test)):
        sources = [s.strip() for s in read_text(data / f"{source}.{corpus.src_lang}.gz")]
        targets = [t.strip() for t in read_text(data / f"{source}.{corpus.tgt_lang}.gz")]
        shards = corpus.shards if split == "train" else 1
        names = [f"{split}.{{lang}}{suffix}"] if shards == 1 else \
            [f"{split}.{k:05d}.{{lang}}{suffix}" for k in range(shards)]
        lines = _split_lines(sources, targets, n, rng)
        if split == "train" and hashes is not None:
            lines = _hashed(lines, hashes)
        written.update(_write_split(out_dir, names, lines, n, corpus))
    return written
