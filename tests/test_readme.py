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


def quickstart_commands() -> list[str]:
    """The `nmt …` lines of the README's Quickstart block (continuation lines joined), in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in block.splitlines() if "nmt " in line]


def test_the_readme_quickstart_trains_translates_and_reports(tmp_path):
    """The Quickstart's own commands, with the run folder moved to tmp_path, a shorter run and 20 test sentences."""
    import gzip
    import os
    import subprocess
    import sys

    commands = quickstart_commands()
    assert [c.split("nmt ")[1].split()[0] for c in commands] == ["train", "translate", "evaluate"]
    for lang in ("en", "de"):
        with gzip.open(ROOT / f"data/multi30k/test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            (tmp_path / f"test.{lang}").write_text("".join(next(f) for _ in range(20)), encoding="utf-8")
    run_dir = tmp_path / "quickstart"
    short = (" trainer.max_steps=6 trainer.val_every_n_steps=3 trainer.val_max_sentences=10 "
             "data.max_train_examples=3000 data.vocab_size=600 "
             f"data.cache_dir={tmp_path / 'cache'} trainer.enable_progress_bar=false")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        command = command.replace("runs/quickstart", str(run_dir))
        command = command.replace("data/multi30k/test_2016_flickr.", f"{tmp_path}/test.").replace(".gz", "")
        if " nmt train " in f" {command} ":
            command += short
        process = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, env=env,
                                 timeout=600)
        assert process.returncode == 0, f"{command}\n{process.stderr[-3000:]}"
        if "nmt translate" in command:
            assert len(process.stdout.splitlines()) == 1 and process.stdout.strip()
    assert (run_dir / "model" / "model.safetensors").is_file()
    report = (run_dir / "eval" / "report.md").read_text()
    assert "| bleu |" in report and (run_dir / "eval" / "alignment.png").is_file()
