"""The one reader of text files: training and validation corpora, `nmt translate`, `nmt evaluate` (sources,
references, hypotheses) and TSV corpora all read lines here, so every command sees the same sentences.

A line ends at "\\n" only: a CR before it is dropped (CRLF files), and so is a CR that ends the file; a lone CR,
vertical tab, form feed, U+0085, U+2028 or U+2029 inside a line stays in it (``str.splitlines`` would split there,
and one stray character on one side of a parallel corpus misaligns every later pair). A UTF-8 byte-order mark
at the start of the file is dropped (a file of nothing else has no lines). A final newline ends the last line;
without one the last line still counts.
``.gz`` files are decompressed. Imports neither torch nor datasets.
"""

from __future__ import annotations

import gzip
import logging
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Optional

from nmt.errors import first_line, plural

BOM = "\ufeff"

log = logging.getLogger("nmt")


class TextError(ValueError):
    """A text file that cannot be read as UTF-8 lines; the message names the file (and line) in one line."""


def open_binary(path: str | Path) -> BinaryIO:
    """The file's bytes, decompressed when its name ends in ``.gz``. TextError naming the file when it is absent."""
    path = Path(path)
    if not path.is_file():
        raise TextError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_lines(raw_lines: Iterable[bytes], source: str, errors: str = "strict",
                 invalid: Optional[list[int]] = None, first: int = 1) -> Iterator[str]:
    """Decoded lines of an iterable of byte chunks that each end at b"\\n" (a binary file, ``io.BytesIO``);
    ``first`` is the 1-based number of its first line (past 1 when reading on from the middle of a file).

    ``errors='strict'``: a line that is not UTF-8 raises TextError naming ``source`` and the 1-based line.
    ``errors='replace'``: invalid bytes become U+FFFD and the line's number is appended to ``invalid``.
    Reading errors (a ``.gz`` file that is not gzip, a truncated one) raise TextError naming ``source``.
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
    number = first - 1
    try:
        for number, raw in enumerate(raw_lines, start=first):
            if number == 1 and raw == BOM.encode():  # a file holding only a byte-order mark holds no line
                return
            line = raw[:-1] if raw.endswith(b"\n") else raw
            line = line[:-1] if line.endswith(b"\r") else line
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                if errors == "strict":
                    raise TextError(f"{source}:{number}: invalid UTF-8 ({error.reason} at byte {error.start}); "
                                    "convert the file to UTF-8 (e.g. iconv)") from None
                text = line.decode("utf-8", errors="replace")
                if invalid is not None:
                    invalid.append(number)
            yield text[1:] if number == 1 and text.startswith(BOM) else text
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a truncated .gz ends in EOFError
        where = f"{source}:{number + 1}" if number else source
        raise TextError(f"{where}: unreadable ({first_line(error)})") from None


def iter_lines(path: str | Path, errors: str = "strict", invalid: Optional[list[int]] = None) -> Iterator[str]:
    """The lines of a text file (plain or ``.gz``), one at a time; see ``decode_lines`` for ``errors``."""
    with open_binary(path) as f:
        yield from decode_lines(f, str(path), errors, invalid)


def iter_lines_at(path: str | Path, offset: int = 0, line: int = 0) -> Iterator[tuple[str, int]]:
    """The lines of a text file from byte ``offset`` on (the start of line ``line`` + 1, ``line`` lines before it),
    each with the byte offset just after it (its "\\n" included): where a later read seeks to go on after that line.
    Decoded as ``iter_lines`` does (errors='strict'); TextError names the file and the line's number in the whole
    file. A ``.gz`` file's offsets count decompressed bytes, and seeking one decompresses everything before."""
    with open_binary(path) as f:
        f.seek(offset)
        end = [offset]  # decode_lines takes one chunk per line it yields: `end` is then just past the yielded line

        def chunks() -> Iterator[bytes]:
            for chunk in f:
                end[0] += len(chunk)
                yield chunk

        for text in decode_lines(chunks(), str(path), first=line + 1):
            yield text, end[0]


def read_lines(path: str | Path | None, errors: str = "replace") -> tuple[list[str], list[int]]:
    """All lines of a file, or of stdin when ``path`` is None or "-", and the numbers of lines whose invalid
    UTF-8 was replaced (empty with ``errors='strict'``, which raises instead)."""
    invalid: list[int] = []
    if path is None or str(path) == "-":
        return list(decode_lines(sys.stdin.buffer, "<stdin>", errors, invalid)), invalid
    return list(iter_lines(path, errors, invalid)), invalid


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8, gzip-compressed when the name ends in ``.gz`` (as the readers expect)."""
    path = Path(path)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def some(numbers: list[int], limit: int = 10) -> str:
    """The first ``limit`` line numbers, comma-separated, with an ellipsis when there are more."""
    return ", ".join(map(str, numbers[:limit])) + (" …" if len(numbers) > limit else "")


def read_text(path: str | Path) -> list[str]:
    """The lines of a source, reference or hypothesis file as every command reads them (training and validation
    included): .gz decompressed, split at "\\n" only, CRLF and a leading byte-order mark dropped. Invalid UTF-8 is
    replaced (U+FFFD) with a warning naming the lines; a missing file is a one-line error (ValueError)."""
    lines, invalid = read_lines(path, errors="replace")
    if invalid:
        log.warning("%s: %s not valid UTF-8; invalid bytes replaced by U+FFFD (lines %s)",
                    path, plural(len(invalid), "line is", "lines are"), some(invalid))
    return lines


def read_aligned(first: str | Path, second: str | Path, what: str = "score") -> tuple[list[str], list[str]]:
    """Two files read with `read_text` that must align line for line (source and reference, hypothesis and
    reference), with at least one line. Raises ValueError naming both files and their counts, or the empty one
    (``what``: the verb of "nothing to …")."""
    a, b = read_text(first), read_text(second)
    if len(a) != len(b):
        raise ValueError(f"{first} has {plural(len(a), 'line')} but {second} has {len(b)}")
    if not b:
        raise ValueError(f"{second} has no lines: nothing to {what}")
    return a, b
