"""A new user's first minutes: the corpus and configs found from anywhere, `nmt train` answering config errors before
it loads anything heavy, failed starts leaving no run folder, the progress bar and log free of noise, and a wheel
that trains and translates from an empty directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nmt.config.overrides import check_command_line, schema_keys
from nmt.data import corpora
from nmt.data.corpora import corpus_dir
from nmt.precision import PRECISIONS
from nmt.training.train import main as train_main
from nmt.training.train import remove_failed_start

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "lightning", "datasets", "transformers")


def run(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


# -- the corpus and the configs ------------------------------------------------------------------------------------


def test_multi30k_is_found_in_the_checkout_and_preferred_inside_an_installed_package(tmp_path, monkeypatch):
    assert corpus_dir("multi30k") == ROOT / "data" / "multi30k"
    assert (corpus_dir("multi30k") / "tok" / "train.lc.norm.tok.de.gz").is_file()
    installed = tmp_path / "nmt"
    (installed / "_data" / "multi30k").mkdir(parents=True)
    (installed / "_data" / "multi30k" / "README.md").write_text("shipped\n")
    monkeypatch.setattr(corpora, "_PACKAGE", installed)
    assert corpus_dir("multi30k") == installed / "_data" / "multi30k"
    with pytest.raises(ValueError, match="unknown corpus 'wmt': nmt ships multi30k"):
        corpus_dir("wmt")
    monkeypatch.setattr(corpora, "_PACKAGE", tmp_path / "empty" / "nmt")
    with pytest.raises(FileNotFoundError, match="corpus 'multi30k' is missing from this install"):
        corpus_dir("multi30k")


def test_no_code_config_or_test_names_a_folder_outside_the_repository():
    outside = ("../" + "shared", "/" + "shared/data", "parents" + "[3]")
    offenders = [
        f"{path.relative_to(ROOT)}: {needle}"
        for folder in ("nmt", "tests", "scripts", ".ci")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in (".py", ".yaml", ".sh", "") and "__pycache__" not in path.parts
        for needle in outside
        if needle in path.read_text(errors="replace")
    ]
    assert not offenders


def test_the_data_config_resolves_to_the_shipped_corpus_from_any_directory(tmp_path):
    process = run(["-c", "from nmt.config.compose import compose_config, to_train_config; "
                         "print(to_train_config(compose_config(['data=multi30k_tok'])).data.path)"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == str(ROOT / "data" / "multi30k")


# -- checking the command line before any work ----------------------------------------------------------------------


def test_the_config_check_imports_nothing_heavy():
    code = ("import sys; from nmt.training.train import main; from nmt.config.overrides import check_command_line; "
            "print(check_command_line(['attention=gqa', 'trainer.max_steps=5'])); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    process = run(["-c", code])
    assert process.returncode == 0, process.stderr
    assert process.stdout.split("\n")[:2] == ["None", "[]"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["+trainer.max_stpes=10"], "unknown key trainer.max_stpes; did you mean trainer.max_steps?"),
        (["trainer.max_stpes=10"], "unknown key trainer.max_stpes; did you mean trainer.max_steps?"),
        (["++model.atention.cross.window=4"], "unknown key model.atention.cross.window; did you mean "
                                             "model.attention.cross.window?"),
        (["atention=gqa"], "unknown key atention; did you mean attention?"),
        (["attention=nope"], "attention=nope: no such option; options: flash, gqa, mha, mqa, sliding_window, "
                             "sliding_window_16, sliding_window_64, sparse, sparse_long"),
        (["experiment=cpu_smok"], "experiment=cpu_smok: no such option; options: cpu_smoke, quickstart"),
        (["-m", "attention=mha,gqq"], "attention=gqq: no such option"),
        (["trainer.max_steps=abc"], "trainer.max_steps=abc: Value 'abc' of type 'str' could not be converted"),
        (["data.max_tokens=100"], "data.max_tokens (100) must hold one sentence of data.max_len (250) + 2"),
        (["-m", "attention=mha,gqa", "model.attention.cross.window=0"], "window (0) must be >= 1"),
        (["data=local", "data.path=/nonexistent-folder"], "data.path '/nonexistent-folder' is not a folder"),
        # What a shell leaves of data.file_pattern="{split}.{lang}.gz": the override named, and how to quote it.
        (["data.file_pattern={split}.{lang}.gz"], "cannot read the override 'data.file_pattern={split}.{lang}.gz': "
         "no viable alternative at input '{split}'; quote the value for Hydra inside quotes for the shell: "
         "\"data.file_pattern='{split}.{lang}.gz'\""),
    ],
)
def test_config_errors_are_one_line_with_status_2_and_no_run_folder(argv, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_main([*argv, f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmt train: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not run_dir.exists()


def test_every_schema_key_and_group_passes_the_key_check():
    keys = schema_keys()
    assert {"trainer.max_steps", "model.attention.cross.n_kv_heads", "data.splits.valid", "decode.beam"} <= set(keys)
    assert check_command_line(["model.attention.decoder_self.window=4", "data.splits.valid=val", "seed=3",
                               "hydra.job.name=x", "attention=[sliding_window,gqa]"]) is None


def test_a_users_own_config_folder_adds_experiments(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 7\n")
    assert check_command_line(["--config-dir", str(tmp_path), "experiment=mine"]) is None
    assert "experiment=mine: no such option" in check_command_line(["experiment=mine"])
    assert check_command_line([f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"]) is None
    process = run(["-m", "nmt.cli", "train", "--config-dir", str(tmp_path), "experiment=mine", "--cfg", "job"],
                  cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert "  max_steps: 7\n" in process.stdout


def test_help_lists_the_groups_and_loads_no_training_library():
    process = run(["-c", "import sys; from nmt.training.train import main; main(['--help'])"])
    assert process.returncode == 0, process.stderr
    assert "nmt train: train an encoder-decoder Transformer" in process.stdout
    assert ("attention: flash, gqa, mha, mqa, sliding_window, sliding_window_16, sliding_window_64, sparse, "
            "sparse_long") in process.stdout
    # The config it prints shows only the default precision (32-true): the footer names every accepted value.
    assert f"trainer.precision takes: {', '.join(PRECISIONS)}." in process.stdout and "auto" in PRECISIONS
    assert "continues it.\ninit_from=DIR starts a new run from a model directory's weights" in process.stdout


# -- failed starts, the progress bar and the log --------------------------------------------------------------------


def test_a_start_that_fails_in_the_run_removes_its_folder_but_never_an_older_one(tmp_path):
    bad = tmp_path / "corpus"
    bad.mkdir()
    for split in ("train", "valid"):
        (bad / f"{split}.en").write_bytes(b"a dog\n")
        (bad / f"{split}.de").write_bytes(b"ein \xff Hund\n")  # invalid UTF-8: found only when the data is read
    run_dir = tmp_path / "run"
    args = ["-m", "nmt.cli", "train", "data=local", f"data.path={bad}", f"data.cache_dir={tmp_path / 'cache'}",
            "trainer.enable_progress_bar=false"]
    process = run([*args, f"hydra.run.dir={run_dir}"])
    assert process.returncode == 2 and "train.de:1: invalid UTF-8" in process.stderr, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    assert not run_dir.exists()
    older = tmp_path / "older"
    older.mkdir()
    (older / "notes.txt").write_text("mine\n")
    os.utime(older / "notes.txt", (0, 0))
    remove_failed_start(older, started=1.0)
    assert (older / "notes.txt").is_file()


@pytest.mark.parametrize("earlier", ["checkpoints/last.ckpt", "model/config.json"])
def test_a_fresh_run_never_starts_over_a_finished_one(earlier, tmp_path, capsys):
    """Re-running a command into its own run folder replaced the trained model with the new run's files one by one."""
    run_dir = tmp_path / "run"
    (run_dir / earlier).parent.mkdir(parents=True)
    (run_dir / earlier).write_text("an earlier run's")
    args = ["experiment=cpu_smoke", f"hydra.run.dir={run_dir}"]
    assert check_command_line(args) == (f"hydra.run.dir={run_dir} already holds a run ({earlier}); add resume=true "
                                        "to continue it, or name another hydra.run.dir")
    assert train_main(args) == 2 and capsys.readouterr().err.startswith(f"nmt train: hydra.run.dir={run_dir} already")
    assert (run_dir / earlier).read_text() == "an earlier run's"
    assert check_command_line([*args, "resume=true"]) is None
    assert check_command_line(["experiment=cpu_smoke", f"hydra.run.dir={tmp_path / 'new'}"]) is None


def test_the_progress_bar_counts_steps_not_a_negative_epoch_total():
    from types import SimpleNamespace

    from nmt.training.trainer import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(global_step=5, max_steps=20, max_epochs=-1)
    assert bar._get_train_description(0) == "Epoch 0"


@pytest.mark.parametrize("global_step, ready, accumulate, total", [
    (0, 0, 1, 20),     # a fresh run: the steps it will take
    (0, 0, 2, 40),     # two batches per step (trainer.accumulate_grad_batches=2): Lightning's bar read 40/20
    (600, 561, 1, 600),  # resumed 561 batches into an epoch, 39 steps left: Lightning's bar read 600/39
    (10, 4, 2, 44),    # resumed, accumulating: 4 batches run, 20 more for the 10 steps left
])
def test_the_progress_bar_total_counts_batches_as_its_position_does(global_step, ready, accumulate, total):
    from types import SimpleNamespace

    from nmt.training.trainer import StepProgressBar

    progress = SimpleNamespace(current=SimpleNamespace(ready=ready))
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(global_step=global_step, max_steps=global_step + (20 if global_step < 600 else 39),
                                   max_epochs=-1, accumulate_grad_batches=accumulate, num_training_batches=1000,
                                   fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    assert bar.total_train_batches == total
    bar._trainer.num_training_batches = 30  # an epoch shorter than what is left: the epoch's batches
    assert bar.total_train_batches == min(30, total)


# -- a wheel, installed apart from the checkout ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_wheel_carries_configs_and_corpus_and_trains_and_translates_from_an_empty_directory(tmp_path):
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    built = run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
                timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("nmt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"nmt/conf/train.yaml", "nmt/conf/experiment/quickstart.yaml", "nmt/_data/multi30k/README.md",
            "nmt/_data/multi30k/tok/test_2016_flickr.lc.norm.tok.de.gz", "nmt/analysis/viewer.html"} <= names
    installed = run(["-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    located = run(["-c", "import nmt, nmt.data.corpora as c; print(nmt.__file__); print(c.corpus_dir('multi30k'))"],
                  cwd=empty, env=env)
    assert located.stdout.split() == [str(site / "nmt" / "__init__.py"), str(site / "nmt" / "_data" / "multi30k")]
    trained = run(["-m", "nmt.cli", "train", "experiment=cpu_smoke", "trainer.max_steps=4",
                   "trainer.val_every_n_steps=2", "trainer.val_max_sentences=4", "data.max_train_examples=2000",
                   "data.vocab_size=500", "trainer.enable_progress_bar=false", "hydra.run.dir=run"],
                  cwd=empty, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "weights_only` was not set" not in trained.stdout + trained.stderr
    translated = subprocess.run([sys.executable, "-m", "nmt.cli", "translate", "--model", "run/model", "--beam", "2"],
                                input="A dog runs.\n\nTwo men.\n", cwd=empty, env=env, capture_output=True,
                                text=True, timeout=300)
    assert translated.returncode == 0, translated.stderr[-2000:]
    assert len(translated.stdout.split("\n")) == 4 and translated.stdout.split("\n")[1] == ""
    viewed = run(["-m", "nmt.cli", "analyze", "attention", "--model", "run/model", "--sentence", "A dog runs.",
                  "--out", "view.html"], cwd=empty, env=env)  # the page template comes from the wheel too
    assert viewed.returncode == 0 and "A dog runs." in (empty / "view.html").read_text(), viewed.stderr[-2000:]


@pytest.mark.parametrize("command", [["average"], ["report"], ["convert"], ["analyze", "heads"],
                                     ["analyze", "attention"], ["bench", "attention"], ["bench", "train"],
                                     ["bench", "translate"], ["translate"], ["evaluate"], ["export", "ct2"]])
def test_every_commands_bad_flag_is_one_line_with_status_2(command, capsys):
    """argparse's own error prints the whole usage block: every command's parser gives one line instead."""
    from nmt.cli import main

    assert main([*command, "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # A missing required argument is reported before an unknown flag, so the line names one or the other.
    assert len(err) == 1 and err[0].startswith("nmt " + " ".join(command) + ": "), err
    assert "--no-such-flag" in err[0] or "required" in err[0], err


@pytest.mark.parametrize("command", [["analyze", "heads"], ["analyze", "attention"]])
@pytest.mark.parametrize("flag", [["--nbest", "2"], ["--dtype", "bfloat16"]])
def test_analyze_commands_refuse_the_decoding_flags_they_would_ignore(command, flag, capsys):
    """Attention weights and gradients come from one float32 hypothesis per line: --nbest and --dtype, which
    translate and evaluate honour, are errors here rather than silently ignored."""
    from nmt.cli import main

    assert main([*command, "--model", "m", "--src", "s", "--ref", "r", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nmt {' '.join(command)}: unrecognized arguments: {' '.join(flag)}"], err


def test_only_the_analyze_flags_can_be_excluded():
    """Leaving out --beam or --sampling would break decode_config; a name that is not a flag would do nothing."""
    import argparse

    from nmt.decoding.flags import add_decode_flags

    for name in ("beam", "device", "nope"):
        with pytest.raises(ValueError, match=f"exclude \\['{name}'\\] is not one of \\['nbest', 'dtype'\\]"):
            add_decode_flags(argparse.ArgumentParser(), exclude=(name,))
