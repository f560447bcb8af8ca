"""Every module of nmt imports first, in a fresh interpreter.

Within one test session an import cycle hides: whichever test imported the cycle's other end first has loaded it, so
``from nmt.attention import Attention`` works there and fails in a user's script (it did, after the folder move). Each
module is imported in a child forked from one process that has loaded only the third-party libraries, so each child
starts with no nmt module loaded and the whole check takes seconds, not a fresh torch import per module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILDREN = r"""
import importlib, os, sys, traceback
import torch, lightning, datasets, sentencepiece, sacrebleu, hydra, matplotlib  # noqa: F401 (the heavy, shared part)
assert not [name for name in sys.modules if name == "nmt" or name.startswith("nmt.")], "nmt loaded before the fork"
failed = []
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc(limit=-3).encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(f"{name}: {message.strip().splitlines()[-1] if message else status}")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def modules() -> list[str]:
    """Every importable module under nmt/, by its dotted name (packages by their __init__)."""
    names = []
    for path in sorted((ROOT / "nmt").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_module_list_covers_the_packages():
    names = modules()
    assert {"nmt", "nmt.attention.layer", "nmt.model.seq2seq", "nmt.bench.attention", "nmt.ct2.export"} <= set(names)
    assert len(names) > 50


def test_every_module_imports_first_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-c", CHILDREN, *modules()], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, f"modules that fail to import on their own:\n{result.stdout}{result.stderr}"
