"""nmt.data.textio, the one text reader: every command reads the same lines from the same bytes (issue 24, fault 4)."""

import gzip
import io
import sys

import pytest

from nmt.data.textio import TextError, decode_lines, iter_lines, iter_lines_at, read_lines, write_text

# A byte-order mark, CRLF endings, a lone CR / U+2028 / U+0085 / form feed inside lines, a blank line, a
# whitespace-only line, and no final newline.
HOSTILE = "\ufeffA dog.\r\nA cat\rsits.\r\nLine\u2028sep \u0085next\x0c.\r\n\r\n  \t \nlast, no newline".encode()
LINES = ["A dog.", "A cat\rsits.", "Line\u2028sep \u0085next\x0c.", "", "  \t ", "last, no newline"]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_lines_end_at_newline_only_and_bom_and_cr_are_dropped(tmp_path, suffix):
    path = tmp_path / f"x.txt{suffix}"
    path.write_bytes(gzip.compress(HOSTILE) if suffix else HOSTILE)
    assert list(iter_lines(path)) == LINES
    assert read_lines(path) == (LINES, [])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_offsets_read_on_from_any_line(tmp_path, suffix):
    """Each line comes with the byte offset after it; reading from one of those offsets (with its line count) gives the
    lines after it, the same as from the start, and an invalid line after it keeps its number in the whole file."""
    path = tmp_path / f"x.txt{suffix}"
    path.write_bytes(gzip.compress(HOSTILE) if suffix else HOSTILE)
    read = list(iter_lines_at(path))
    assert [text for text, _ in read] == LINES and read[-1][1] == len(HOSTILE)
    assert read[0][1] == len("\ufeffA dog.\r\n".encode())  # the byte-order mark and the CR are bytes of line 1
    for line, (_, offset) in enumerate(read):
        assert list(iter_lines_at(path, offset, line + 1)) == read[line + 1:]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(HOSTILE[:read[2][1]] + b"bad \xff\n")
    with pytest.raises(TextError, match=r"bad\.txt:4: invalid UTF-8"):
        list(iter_lines_at(bad, read[1][1], 2))


@pytest.mark.parametrize("data, lines", [
    (b"", []), (b"\n", [""]), (b"a\n", ["a"]), (b"a", ["a"]), (b"a\n\n", ["a", ""]), (b"a\r", ["a"]),
    (b"\xef\xbb\xbf", []), (b"\xef\xbb\xbf\n", [""]),
    (b"x\n\xef\xbb\xbfy\n", ["x", "\ufeffy"]),  # only a leading mark is a byte-order mark
])
def test_edges(data, lines):
    assert list(decode_lines(io.BytesIO(data), "mem")) == lines


def test_invalid_utf8_strict_names_file_and_line_or_is_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\nGr\xfc\xdfe\nok\n\xff\n")
    with pytest.raises(TextError, match=r"bad.txt:2: invalid UTF-8 \(invalid start byte at byte 2\)"):
        list(iter_lines(path))
    lines, invalid = read_lines(path, errors="replace")
    assert lines == ["ok", "Gr\ufffd\ufffde", "ok", "\ufffd"] and invalid == [2, 4]


def test_missing_and_fake_gzip_files_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(TextError, match=r"nope.txt: no such file"):
        read_lines(tmp_path / "nope.txt")
    fake = tmp_path / "fake.gz"
    fake.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(TextError, match=r"fake.gz: unreadable \(Not a gzipped file"):
        read_lines(fake)


def test_stdin_is_read_the_same(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(HOSTILE)))
    assert read_lines(None) == (LINES, [])


def test_gz_output_is_compressed(tmp_path):
    write_text(tmp_path / "out.txt.gz", "a\nb\n")
    assert gzip.decompress((tmp_path / "out.txt.gz").read_bytes()) == b"a\nb\n"
    write_text(tmp_path / "out.txt", "a\n")
    assert (tmp_path / "out.txt").read_bytes() == b"a\n"


def test_training_translate_and_evaluate_read_the_same_lines(tmp_path):
    """The readers of every command are this one: the corpus reader of training and validation, `nmt evaluate`'s
    and `nmt translate`'s."""
    from nmt.data.load import _text_lines
    from nmt.data.textio import read_text
    from nmt.decoding.translate import read_input

    for name, data in (("x.txt", HOSTILE), ("x.txt.gz", gzip.compress(HOSTILE))):
        path = tmp_path / name
        path.write_bytes(data)
        assert [row["text"] for row in _text_lines(str(path), "stamp")] == LINES
        assert read_text(path) == LINES
        assert read_input(str(path)) == LINES
