"""Pseudo-documents from Multi30k: ``k`` consecutive sentence pairs of a split joined into one line per language —
issue 31's long-input benchmark (``nmt bench long``, ``data=multi30k_docs``).

Document ``i`` of a split is its pairs ``i·k … i·k + k - 1`` joined by single spaces, the source side and the target
side in the same order, so a document is still a translation of its source. A split of ``n`` pairs gives
``floor(n / k)`` documents; its last ``n mod k`` pairs are dropped (a shorter final document would be an outlier in
every length statistic). With k = 8, 16, 32 and 64 Multi30k's ~13-word captions make documents of ~100 to ~1,000
subwords.

What they test: how training and decoding cost grow with length, per attention variant, on real text with real
vocabulary and real source/target length ratios. What they cannot test: discourse. Consecutive Multi30k lines caption
unrelated images, so nothing in a document refers across its sentences (no coreference, no topic, no ellipsis to
resolve); a model that sees one sentence at a time loses nothing, and BLEU on them measures sentence translation
under long inputs, not document translation.

    python scripts/pseudo_documents.py                       # data/multi30k_docs/k8 … k64, en and de
    nmt train data=multi30k_docs data.path=data/multi30k_docs/k64 …
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from nmt.data.textio import read_text
from nmt.files import write_aligned, write_json

KS = (8, 16, 32, 64)
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
MANIFEST = "documents.json"  # written last: a folder without it (or with other settings) is incomplete


@dataclass(frozen=True)
class DocumentSpec:
    """What `write_documents` makes: one folder ``k<k>`` per k, each with every split × language of ``pattern``
    (``{split}`` and ``{lang}`` fields; a ``.gz`` name is written gzipped, like the source)."""

    ks: tuple[int, ...] = KS
    splits: tuple[str, ...] = SPLITS
    langs: tuple[str, ...] = ("en", "de")
    pattern: str = "{split}.{lang}.gz"

    def __post_init__(self) -> None:
        # The messages name the script's flags: scripts/pseudo_documents.py prints them as they are.
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"--k ({' '.join(map(str, self.ks))}) must be one or more counts >= 1")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"--k ({' '.join(map(str, self.ks))}) repeats a count")
        if len(self.langs) < 2 or len(set(self.langs)) != len(self.langs):
            raise ValueError(f"--langs ({' '.join(self.langs)}) must be two or more different languages")
        if not self.splits:
            raise ValueError("--splits must name at least one split")
        if "{split}" not in self.pattern or "{lang}" not in self.pattern:
            raise ValueError(f"--pattern ({self.pattern!r}) needs both {{split}} and {{lang}}")

    def path(self, root: Path, k: int, split: str, lang: str) -> Path:
        """The file of ``split`` × ``lang`` in k's folder under ``root``: ``root/k<k>/<pattern>``."""
        return Path(root) / f"k{k}" / self.pattern.format(split=split, lang=lang)


def join_consecutive(lines: Sequence[str], k: int) -> list[str]:
    """``floor(len(lines) / k)`` documents: lines ``i·k … i·k + k - 1`` joined by one space each (the last
    ``len(lines) mod k`` lines are dropped). Each line is stripped first, so no document holds a double space."""
    return [" ".join(line.strip() for line in lines[start : start + k])
            for start in range(0, len(lines) - k + 1, k)]


def read_splits(source_dir: str | Path, spec: DocumentSpec) -> dict[str, dict[str, list[str]]]:
    """Every split × language of ``spec`` under ``source_dir``: {split: {lang: lines}}. ValueError naming the file
    when one is missing or the languages of a split differ in line count (they would not be aligned)."""
    splits = {}
    for split in spec.splits:
        by_lang = {}
        for lang in spec.langs:
            path = Path(source_dir) / spec.pattern.format(split=split, lang=lang)
            if not path.is_file():
                raise ValueError(f"{path}: no such file (--source {source_dir}, --splits, --langs, --pattern)")
            by_lang[lang] = read_text(path)
        counts = {lang: len(lines) for lang, lines in by_lang.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"split {split!r} is not aligned: {counts} lines under {source_dir}")
        splits[split] = by_lang
    return splits


def length_stats(values: Sequence[int]) -> dict[str, float]:
    """{"mean", "p50", "p90", "min", "max"} of lengths (words or subwords per document); zeros for none."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "min": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered), "p50": float(ordered[len(ordered) // 2]),
            "p90": float(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]),
            "min": float(ordered[0]), "max": float(ordered[-1])}


def write_documents(source_dir: str | Path, out_dir: str | Path, spec: DocumentSpec = DocumentSpec(),
                    count_subwords: Optional[Callable[[list[str]], list[int]]] = None) -> dict:
    """Write the pseudo-documents of every k into ``out_dir/k<k>/`` and each folder's ``documents.json`` (settings,
    counts and length statistics), which is written last: `documents_ready` trusts only a folder that has it. Every
    file is written to a unique temporary file beside it and renamed (`nmt.files.write_aligned`), so two runs writing
    the same folder at once both finish with whole files; the output is a function of the source files and ``spec``
    only (gzip without timestamps, the final file name in its header: the same bytes on every run).

    ``count_subwords`` (texts → subword counts), when given, adds subword statistics beside the word statistics.
    Returns {k: manifest}, the manifest being {"spec", "source", "splits": {split: {"pairs", "documents",
    "dropped_pairs", "words": {lang: stats}, "subwords": {lang: stats}?}}}.
    Raises ValueError (missing or misaligned files), OSError (``out_dir`` not writable)."""
    splits = read_splits(source_dir, spec)
    manifests = {}
    for k in spec.ks:
        folder = Path(out_dir) / f"k{k}"
        manifest = {"spec": {**asdict(spec), "k": k}, "source": str(Path(source_dir).resolve()), "splits": {}}
        for split, by_lang in splits.items():
            docs = {lang: join_consecutive(lines, k) for lang, lines in by_lang.items()}
            paths = {lang: spec.path(out_dir, k, split, lang) for lang in spec.langs}
            for path in paths.values():
                path.parent.mkdir(parents=True, exist_ok=True)
            n_docs = write_aligned(paths, zip(*docs.values()), spec.pattern.endswith(".gz"))
            pairs = len(next(iter(by_lang.values())))
            entry = {"pairs": pairs, "documents": n_docs, "dropped_pairs": pairs - n_docs * k,
                     "words": {lang: length_stats([len(d.split()) for d in texts]) for lang, texts in docs.items()}}
            if count_subwords is not None:
                entry["subwords"] = {lang: length_stats(count_subwords(texts)) for lang, texts in docs.items()}
            manifest["splits"][split] = entry
        write_json(folder / MANIFEST, manifest)
        manifests[k] = manifest
    return manifests


def documents_ready(out_dir: str | Path, k: int, spec: DocumentSpec = DocumentSpec(),
                    source_dir: Optional[str | Path] = None) -> bool:
    """Whether ``out_dir/k<k>`` was completed by `write_documents` with the same splits, languages and pattern, and
    (``source_dir`` given) from the same source folder: a folder made from another ``--source`` is not ready."""
    manifest = Path(out_dir) / f"k{k}" / MANIFEST
    if not manifest.is_file():
        return False
    try:
        written = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable or not JSON: write the folder again
        return False
    wanted = {"k": k, "splits": list(spec.splits), "langs": list(spec.langs), "pattern": spec.pattern}
    if not isinstance(written, dict) or not isinstance(written.get("spec"), dict):
        return False
    if source_dir is not None and written.get("source") != str(Path(source_dir).resolve()):
        return False
    return all(written["spec"].get(key) == value for key, value in wanted.items())


def ensure_documents(source_dir: str | Path, out_dir: str | Path, ks: Sequence[int],
                     spec: DocumentSpec = DocumentSpec(),
                     count_subwords: Optional[Callable[[list[str]], list[int]]] = None) -> dict:
    """Write the folders of ``ks`` that are not complete from ``source_dir`` yet (`documents_ready`; a few seconds
    each) and leave the others alone. Returns {k: manifest} of the folders written (empty when all were complete)."""
    missing = tuple(k for k in ks if not documents_ready(out_dir, k, spec, source_dir))
    if not missing:
        return {}
    return write_documents(source_dir, out_dir, DocumentSpec(missing, spec.splits, spec.langs, spec.pattern),
                           count_subwords)


def format_stats(manifests: dict) -> str:
    """One line per k and split: documents (pairs dropped) and per language mean / p90 / max words (and
    subwords)."""
    lines = []
    for k, manifest in manifests.items():
        for split, entry in manifest["splits"].items():
            parts = [f"k={k:<3d} {split:17s} {entry['documents']:6d} documents ({entry['dropped_pairs']} of "
                     f"{entry['pairs']} pairs dropped)"]
            for unit in ("words", "subwords"):
                for lang, s in entry.get(unit, {}).items():
                    parts.append(f"{lang} {unit} mean {s['mean']:.0f} p90 {s['p90']:.0f} max {s['max']:.0f}")
            lines.append("; ".join(parts))
    return "\n".join(lines)
