"""Parallel corpora through Hugging Face ``datasets``: local files (text, TSV, JSON lines, parquet; shards) or the Hub.

Every split comes out as a dataset with ``src`` and ``tgt`` text columns (nmt.data.encode cleans and encodes them).
Bad input is a DataError with one line naming the file, line or key.
"""

from __future__ import annotations

import json
import os
import socket
import zlib
from pathlib import Path
from typing import Iterable, Optional

import datasets

from nmt.config.train import DataConfig
from nmt.data.corpora import local_files, local_shards
from nmt.data.textio import TextError, iter_lines, iter_lines_at
from nmt.errors import DataError, first_line, plural

datasets.disable_progress_bars()

HUB_HOST = ("huggingface.co", 443)


def _text_error(path: Path) -> Optional[str]:
    """The one-line message of the first thing in ``path`` the text reader refuses (invalid UTF-8 with its line, a
    fake or truncated .gz), or None."""
    try:
        for _ in iter_lines(path):
            pass
    except TextError as error:
        return str(error)
    return None


def _reader_error(error: Optional[BaseException]) -> Optional[BaseException]:
    """The DataError or TextError a generator raised, from under the DatasetGenerationError datasets wraps it in."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (DataError, TextError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _json_error(path: Path) -> Optional[str]:
    """``path:line: not valid JSON (...)`` for the first JSON-lines record Python's json rejects (pyarrow's own
    message counts rows from 0 and skips blank lines), or None."""
    try:
        for number, line in enumerate(iter_lines(path), start=1):
            if line.strip():
                json.loads(line)
    except json.JSONDecodeError as error:
        at = "" if error.msg.endswith(" at") else " at"
        return f"{path}:{number}: not valid JSON ({error.msg}{at} column {error.colno})"
    except TextError as error:
        return str(error)
    return None


def _raise_read_error(paths: list[Path], error: Exception, check=None) -> None:
    """Re-raise a reading failure as one DataError line: the reader's own, else what ``check(path)`` finds (the
    first bad line), else the library's first line."""
    found = _reader_error(error)
    if found is not None:
        raise DataError(str(found)) from None
    for path in paths if check is not None else []:
        message = check(path)
        if message is not None:
            raise DataError(message) from None
    cause = error.__cause__ or error.__context__
    detail = first_line(cause) if cause is not None else first_line(error)
    raise DataError(f"could not read {', '.join(map(str, paths))}: {detail}") from None


def _text_lines(path: str, stamp: str):
    """Rows ``{"text": line}`` of a text file, read by nmt.data.textio, the reader of every command: a line ends at
    "\\n" only; a CR before it and a leading byte-order mark are dropped. (The `text` builder splits with
    str.splitlines, which also breaks at a lone \\r, \\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and U+2029: one stray inside a
    sentence on each side and every later pair is silently misaligned.) Invalid UTF-8 raises TextError naming the file
    and line. ``stamp`` (size and mtime) is only there to key the datasets cache."""
    for text in iter_lines(path):
        yield {"text": text}


def _tsv_rows(path: str, stamp: str):
    """Rows of a TSV corpus: a header naming the columns, then one record per line as nmt.data.textio reads lines, so a
    record ends at "\\n" only (pandas' reader also ended one at a lone \\r and split a pair in two, unreported). No
    quoting: a quote is text; every field stays a string ("NA" is not a missing value). Blank lines are skipped. A
    row whose field count differs from the header's is a DataError naming the file and line: pandas would fill a
    missing target with an empty one (a wrong reference at evaluation, a silently dropped pair in training)."""
    header = None
    for number, line in enumerate(iter_lines(path), start=1):
        if not line:
            continue
        fields = line.split("\t")
        if header is None:
            header = fields
        elif len(fields) != len(header):
            raise DataError(f"{path}:{number}: {plural(len(fields), 'tab-separated field')} but the header has "
                            f"{len(header)}")
        else:
            yield dict(zip(header, fields))


def _tsv_header(path: Path) -> list[str]:
    """The column names of a TSV corpus: its first non-blank line."""
    header = next((line for line in iter_lines(path) if line), None)
    if header is None:
        raise DataError(f"{path}: empty; a TSV corpus starts with a header line naming its columns (e.g. en<TAB>de)")
    return header.split("\t")


def _generate(generator, file: Path, cache_dir: str, streaming: bool):
    """A dataset from one of the line generators above; its columns are declared, so an empty file gives an empty
    dataset (datasets cannot infer columns from no rows) that the caller reports by split name."""
    stat = file.stat()
    kwargs = {"path": str(file), "stamp": f"{stat.st_size}:{stat.st_mtime_ns}"}
    columns = ["text"] if generator is _text_lines else _tsv_header(file)
    features = datasets.Features({name: datasets.Value("string") for name in columns})
    if next(generator(**kwargs), None) is None:  # from_generator refuses to build a dataset of no rows
        return datasets.Dataset.from_dict({name: [] for name in columns}, features=features)
    if streaming:
        return datasets.IterableDataset.from_generator(generator, features=features, gen_kwargs=kwargs)
    return datasets.Dataset.from_generator(generator, features=features, gen_kwargs=kwargs, cache_dir=cache_dir)


def _load_files(cfg: DataConfig, files: list[Path], streaming: bool):
    """One dataset per file: text and tsv through nmt.data.textio's line reader, jsonl and parquet through the datasets
    builders (pyarrow ends a JSON record at "\\n" only; parquet has no lines)."""
    cache_dir = str(Path(cfg.cache_dir) / "hf")
    try:
        if cfg.format in ("text", "tsv"):
            generator = _text_lines if cfg.format == "text" else _tsv_rows
            return [_generate(generator, file, cache_dir, streaming) for file in files]
        builder = "json" if cfg.format == "jsonl" else "parquet"
        return [datasets.load_dataset(builder, data_files=str(file), split="train", streaming=streaming,
                                      cache_dir=cache_dir) for file in files]
    except DataError:
        raise
    except Exception as error:  # datasets wraps a generator's error in DatasetGenerationError
        checks = {"text": _text_error, "tsv": _text_error, "jsonl": _json_error}
        _raise_read_error(files, error, checks.get(cfg.format))


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
    """The ``split`` ('train', 'valid' or 'test') as a dataset of ``src``/``tgt`` pairs (iterable when streaming).
    An empty split is an empty dataset with those two columns; callers say what it means for them."""
    split_name = getattr(cfg.splits, split)
    if split_name is None:
        raise DataError(f"data.splits.{split} is not set")
    ds = _load_pairs(cfg, split_name, streaming)
    if not streaming and ds.num_rows == 0:  # datasets' map drops the columns of an empty dataset
        string = datasets.Value("string")
        return datasets.Dataset.from_dict({"src": [], "tgt": []}, features=datasets.Features(src=string, tgt=string))
    return ds


def split_files(cfg: DataConfig, split: str) -> str:
    """How an error names a split: its config key and name, and its files or Hub dataset."""
    split_name = getattr(cfg.splits, split)
    where = cfg.hub_id if cfg.path is None else ", ".join(str(f) for f in local_files(cfg, split_name))
    return f"data.splits.{split}={split_name!r} ({where})"


def _load_pairs(cfg: DataConfig, split_name: str, streaming: bool):
    if cfg.path is None:
        return _load_hub(cfg, split_name, streaming)
    shards = local_shards(cfg, split_name)
    if cfg.format != "text":
        parts = [_to_pairs(_load_files(cfg, [shard[0]], streaming)[0], cfg, str(shard[0])) for shard in shards]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if streaming:
        return _shard_stream([(k, str(src), str(tgt)) for k, (src, tgt) in enumerate(shards)])
    parts = []
    for files in shards:
        src, tgt = _load_files(cfg, list(files), streaming)
        if src.num_rows != tgt.num_rows:
            raise DataError(f"{files[0]} has {plural(src.num_rows, 'line')} but {files[1]} has {tgt.num_rows}; "
                            "they must align")
        parts.append(datasets.concatenate_datasets([src.rename_column("text", "src"),
                                                    tgt.rename_column("text", "tgt")], axis=1))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# The column of a streamed local text pair that says where it ends: [shard index, 1-based line, byte offset just
# after it in the source file, in the target file]; what a resume seeks to (StreamBatches, `stream_from`). One list
# column: datasets encodes each column of each row in Python, and four int columns cost twice what this does.
AT = "at"

# Where a resumed pass goes on (`stream_from`): (shard index, line, source offset, target offset, the indices of the
# shards that pass read before that one). A tuple, not a list: datasets shards every list in gen_kwargs.
Resume = tuple[int, int, int, int, tuple[int, ...]]


def _shard_stream(shards: list[tuple[int, str, str]], resume: Optional[Resume] = None):
    """An iterable dataset of the ``_zip_shards`` rows of ``shards`` (index, source file, target file). A list in
    gen_kwargs is what datasets shards: one shard per file pair, which it reorders every pass after the first
    (set_epoch) and split_dataset_by_node deals out whole, so no rank reads another's lines. ``resume`` (not a list,
    so every shard's call gets it whole) makes the stream the rest of a pass (`_zip_shards`)."""
    string = datasets.Value("string")
    features = datasets.Features({"src": string, "tgt": string, AT: datasets.List(datasets.Value("int64"))})
    return datasets.IterableDataset.from_generator(_zip_shards, features=features,
                                                   gen_kwargs={"shards": shards, "resume": resume})


def _zip_shards(shards: list[tuple[int, str, str]], resume: Optional[Resume] = None):
    """Rows ``{"src", "tgt"}`` of each (index, source file, target file) shard in turn, read by nmt.data.textio like
    every other reader. Each row also holds its position ``at``: the shard's index, the pair's 1-based line number
    and the byte offsets just after it in each file. With ``resume`` (shard, line, source and target offsets, shards
    done), the shards done are skipped unopened and that shard is read from those offsets on (``line`` lines before
    them). DataError naming both files when one ends before the other, TextError (file and line) for invalid UTF-8."""
    for index, src_file, tgt_file in shards:
        line = src_start = tgt_start = 0
        if resume is not None and index in resume[4]:
            continue  # read earlier in the resumed pass
        if resume is not None and index == resume[0]:
            line, src_start, tgt_start = resume[1:4]
        tgt_it = iter_lines_at(tgt_file, tgt_start, line)
        count = line
        for s, src_end in iter_lines_at(src_file, src_start, line):
            t, tgt_end = next(tgt_it, (None, 0))
            if t is None:
                raise DataError(f"{tgt_file} ends after {plural(count, 'line')} but {src_file} goes on; "
                                "they must align")
            count += 1
            yield {"src": s, "tgt": t, AT: [index, count, src_end, tgt_end]}
        if next(tgt_it, None) is not None:
            raise DataError(f"{src_file} ends after {plural(count, 'line')} but {tgt_file} goes on; they must align")


def seek_refusal(cfg: DataConfig, world: int) -> Optional[str]:
    """Why a streamed training pass cannot be resumed by seeking its shard files (`stream_from`), or None when it
    can: only uncompressed local text shards that split_dataset_by_node hands out whole, with no
    data.max_train_examples (a `take` that counts from the start of the stream)."""
    if cfg.path is None or cfg.format != "text":
        return "only local text files can seek" if cfg.path is None else f"data.format={cfg.format} cannot seek"
    if cfg.max_train_examples is not None:
        return "data.max_train_examples counts pairs from the start of the stream"
    shards = local_shards(cfg, cfg.splits.train)
    if any(file.suffix == ".gz" for shard in shards for file in shard):
        return ".gz shards cannot seek without decompressing what comes before"
    if len(shards) % world:
        return f"{plural(len(shards), 'shard does', 'shards do')} not divide among {world} ranks"
    return None


def _names(shards) -> int:
    """A checksum of the shard files' names, in order (what their indices mean)."""
    return zlib.crc32("\n".join(f"{src.name}\t{tgt.name}" for src, tgt in shards).encode())


def shard_stamp(cfg: DataConfig, shard: int) -> list[int]:
    """What a seeking resume checks the training shards against (`seek_check`): their count, a checksum of their
    names, and the size and mtime (ns) of shard ``shard``'s source and target files."""
    shards = local_shards(cfg, cfg.splits.train)
    src, tgt = (file.stat() for file in shards[shard])
    return [len(shards), _names(shards), src.st_size, src.st_mtime_ns, tgt.st_size, tgt.st_mtime_ns]


def seek_check(cfg: DataConfig, at: list[int], stamp: list[int]) -> Optional[str]:
    """Why the saved position ``at`` (shard, line, source and target offsets) cannot be trusted in the training
    shards as they are now, or None: the shards were renamed, added or removed, the saved shard's files changed
    (size or mtime unlike `shard_stamp`'s ``stamp``), or an offset is past its file's end or not just after a
    "\\n" (not the start of a line)."""
    shards = local_shards(cfg, cfg.splits.train)
    if len(shards) != stamp[0]:
        return f"the training split has {plural(len(shards), 'shard')}, {stamp[0]} when the checkpoint was saved"
    if _names(shards) != stamp[1]:
        return "the training shard files were renamed since the checkpoint"
    shard, line, *ends = at
    for file, end, (size, mtime) in zip(shards[shard], ends, (stamp[2:4], stamp[4:6])):
        now = file.stat()
        if now.st_size != size:
            return f"{file} changed since the checkpoint ({size} bytes then, {now.st_size} now)"
        if now.st_mtime_ns != mtime:
            return f"{file} was modified since the checkpoint (its mtime differs)"
        if (end == 0) != (line == 0) or end > size:
            return f"{file}: the saved offset {end} (after line {line}) is not in the file ({size} bytes)"
        if 0 < end < size:
            with open(file, "rb") as f:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    return f"{file}: the saved offset {end} (after line {line}) is not the start of a line"
    return None


def stream_from(cfg: DataConfig, at: list[int], done: Iterable[int] = ()):
    """The training stream as `load_split` gives it (every shard, to be cleaned, split among ranks and set to its
    pass like the one it replaces) that reads only the rest of a pass: it skips the shards ``done`` (read earlier in
    that pass) without opening them and reads shard ``at[0]`` from the offsets after the pair at ``at`` (its ``at``
    column: shard, line, source and target offsets); the other shards whole, in the pass's order. Check ``at``
    with `seek_check` first."""
    shard, line, src_end, tgt_end = (int(v) for v in at)
    shards = [(k, str(src), str(tgt)) for k, (src, tgt) in enumerate(local_shards(cfg, cfg.splits.train))]
    return _shard_stream(shards, (shard, line, src_end, tgt_end, tuple(int(k) for k in done)))
