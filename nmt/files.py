"""nmt's atomic writes: file modes, and text, gzip and JSON files written beside their target and renamed.

Checkpoints, tokenizer models and model directories are written to a temporary file or folder beside their target and
renamed into place. ``tempfile`` creates those private (0600 files, 0700 folders), and a rename keeps the mode, so
without this a model saved on a shared machine could be read by its owner only, unlike every file written with
``open``. These give them the mode ``open`` and ``mkdir`` would have: 0666 / 0777 less the process's umask.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Sequence


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


@contextlib.contextmanager
def open_output(path: str | Path, compress: bool, name: Optional[str | Path] = None) -> Iterator[IO[str]]:
    """A UTF-8 text file open for writing (a context manager), gzipped with ``compress``. The gzip header carries no
    timestamp (mtime 0) and records the file name ``name`` (default ``path``): a temporary file renamed to ``name``
    later stores the final name, so the same lines give the same bytes whatever temporary name they went through."""
    if not compress:
        with open(path, "w", encoding="utf-8") as text:
            yield text
        return
    with open(path, "wb") as raw, \
            gzip.GzipFile(filename=Path(name or path).name, mode="wb", compresslevel=1, fileobj=raw, mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8") as text:
        yield text


def write_aligned(paths: dict[str, Path], rows: Iterable[Sequence[str]], compress: bool) -> int:
    """Write aligned lines, one file per language: ``rows`` yields one line per language of ``paths`` (in its
    order), without newlines. Each file is written to a temporary file of its own (``tempfile``, unique, in the target's
    folder, so two writers of the same files never share one) and renamed once all are complete, so an interrupted run
    leaves no file that looks whole and concurrent runs each rename a complete file. Returns the rows written."""
    temporary: dict[str, Path] = {}
    count = 0
    try:
        with contextlib.ExitStack() as stack:
            files = []
            for lang, path in paths.items():
                handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.close(handle)
                temporary[lang] = Path(name)
                files.append(stack.enter_context(open_output(name, compress, path)))
            for row in rows:
                for file, line in zip(files, row):
                    file.write(line + "\n")
                count += 1
        for lang, path in paths.items():
            publish_modes(temporary[lang])
            os.replace(temporary[lang], path)
    finally:
        for name in temporary.values():
            name.unlink(missing_ok=True)  # left only when writing failed
    return count


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as indented JSON in ``path``, written to a unique temporary file beside it and renamed, so a reader
    (or a concurrent writer) never sees half a file."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as tmp:
        tmp.write(json.dumps(payload, indent=2) + "\n")
    try:
        publish_modes(tmp.name)
        os.replace(tmp.name, path)
    finally:
        Path(tmp.name).unlink(missing_ok=True)



def file_in_the_way(out: str | Path) -> Optional[str]:
    """Why no folder can be made at ``out`` — a file there or at its nearest existing ancestor ('is a file, not a
    folder' / 'PARENT is a file, not a folder') — or None."""
    for candidate in (Path(out), *Path(out).parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            return "is a file, not a folder" if candidate == Path(out) else f"{candidate} is a file, not a folder"
    return None


def check_output_folder(out: str | Path, force: bool, label: Optional[str] = None,
                        reads: Iterable[str | Path] = ()) -> None:
    """Before any work: may a command write the folder ``out`` (whole, through a rename)? Raises ValueError, one line
    starting with ``label`` (default the path; e.g. '--out PATH'): when ``out`` is '.', '..' or a symbolic link (the
    rename would move the link, not the folder); when it or an ancestor is a file; when it is, or holds, a path in
    ``reads`` that exists (what the command reads: replacing the folder would delete its own input, e.g. a run folder
    holding the model being converted), compared both as written and with links resolved; when it exists and
    ``force`` is false."""
    out, label = Path(out), label or str(out)
    if out.name in ("", ".", ".."):
        raise ValueError(f"{label}: name the folder to write, not '.' or '..'")
    if out.is_symlink():
        raise ValueError(f"{label}: is a symbolic link; give the folder it points to, or another path")
    problem = file_in_the_way(out)
    if problem is not None:
        raise ValueError(f"{label}: {problem}; choose a folder path")
    for path in reads:
        if not Path(path).exists():  # the command's own loading says it is missing
            continue
        for form in (os.path.abspath, os.path.realpath):  # realpath: no error on a link loop, unlike Path.resolve
            target, source = Path(form(out)), Path(form(path))
            if target == source or target in source.parents:
                raise ValueError(f"{label}: would replace {path} — the model being read; write to another folder")
    if out.exists() and not force:
        raise ValueError(f"{label}: already exists; add --force to replace it")
