"""The one-line messages of nmt.errors."""

import errno

import pytest

from nmt.errors import first_line, plural


@pytest.mark.parametrize("error, line", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/x.en"), "/d/x.en: No such file or directory"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", None, "b"), "a.tmp → b: Invalid cross-device link"),
    (OSError("Not a gzipped file (b'ab')"), "Not a gzipped file (b'ab')"),  # no path: the message as it is
    (ValueError("first\nsecond"), "first"),
    (KeyError(), "KeyError"),
])
def test_first_line(error, line):
    assert first_line(error) == line


def test_a_real_os_error_names_its_path(tmp_path):
    with pytest.raises(OSError) as caught:
        open(tmp_path / "missing" / "file.txt", encoding="utf-8")
    assert first_line(caught.value) == f"{tmp_path / 'missing' / 'file.txt'}: No such file or directory"


def test_plural():
    assert [plural(1, "line"), plural(2, "line")] == ["1 line", "2 lines"]
    assert [plural(1, "line is", "lines are"), plural(0, "line is", "lines are")] == ["1 line is", "0 lines are"]
