"""Every relative link in the README and docs/ reaches a file, and every #anchor a heading of it (GitHub's slugs)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target), [text](<target>), [text](target "title"); and reference definitions "[name]: target".
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.M)
FENCE = re.compile(r"^ {0,3}```.*?^ {0,3}```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lowercase, punctuation but hyphens and
    underscores dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(page: Path) -> frozenset[str]:
    """The #anchors of a page's ATX headings (outside code fences), repeats numbered -1, -2 as GitHub does."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for m in re.finditer(r"^ {0,3}#{1,6} +(.+?)(?: +#+)? *$", text, re.M):
        base = slug(m.group(1))
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return frozenset(found)


def links(page: Path) -> list[str]:
    """The link targets of a page, outside code fences and inline code."""
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [m.group(1) for m in (*LINK.finditer(text), *DEFINITION.finditer(text))]


def test_slug_follows_github():
    assert slug("BLEU at one budget — `scripts/long_bleu.sh`") == "bleu-at-one-budget--scriptslong_bleush"
    assert slug("Results — one run, 2 threads, quiet machine") == "results--one-run-2-threads-quiet-machine"
    assert slug("sparse-16+8 / GQA-2 (v1.0)") == "sparse-168--gqa-2-v10"
    assert slug("Setup ([guide](x.md))") == "setup-guide"


def test_links_are_found_in_every_form_and_not_in_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('[a](one.md "title") [b](<two.md>) `[c](code.md)`\n[ref]: three.md#x\n'
                    "```\n[d](fenced.md)\n```\n# Intro\n## Intro\n", encoding="utf-8")
    assert links(page) == ["one.md", "two.md", "three.md#x"]
    assert anchors(page) == {"intro", "intro-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not followed offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
