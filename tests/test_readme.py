"""The ```python examples of the README and of every docs/*.md page run as written and print something.

```py blocks need a trained model and are not run.
"""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks() -> list[tuple[str, str]]:
    """(page relative to the repository root, code) for every ```python block, in page order."""
    return [
        (page.relative_to(ROOT).as_posix(), block)
        for page in PAGES
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    ]


def test_documented_python_examples_run(capsys):
    blocks = python_blocks()
    assert blocks, "no ```python example in README.md or docs/*.md"
    for page, block in blocks:
        exec(compile(block, page, "exec"), {})
        assert capsys.readouterr().out.strip(), f"a ```python example in {page} printed nothing"
