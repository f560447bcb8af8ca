"""`nmt bench data`: each stage of nmt train's data preparation timed in a real run, cold and cached, beside a
baseline checkout; bad options are one line."""

import json
import re
from pathlib import Path

import pytest

from nmt.bench import main
from nmt.bench.data import STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_data_times_every_stage_cold_then_cached(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    assert main(["data", "--pairs", "20000", "--work", str(work), "--out", str(out), "--model", "tiny"]) == 0
    runs = {run["run"]: run for run in json.loads((out / "data.json").read_text())["runs"]}
    assert set(runs) == {"cold", "cached"}
    assert set(runs["cold"]["seconds"]) == set(STAGES)  # every stage ran and was timed
    for run in runs.values():
        assert 0 < run["to_first_step"] <= run["total"] and run["peak_total_bytes"] > 0
        assert all(run["peak_bytes"][stage] > 0 for stage in run["seconds"])
    # Cold trains sentencepiece; the cached restart reuses it (and the rest of the cache).
    assert "sentencepiece: training" in (work / "run_20000_this_cold" / "probe.log").read_text()
    assert "sentencepiece: reusing" in (work / "run_20000_this_cached" / "probe.log").read_text()
    table = capsys.readouterr().out
    assert "| 20,000 | cold |" in table and "| 20,000 | cached |" in table


def test_probe_skips_a_stage_the_measured_checkout_lacks(tmp_path, monkeypatch):
    """A baseline without a stage's function (say drop_empty) is still measured: that time counts in the caller's."""
    from nmt.bench import data_probe
    from nmt.data.batching import TrainBatches
    from nmt.training.lit_module import TranslationModule

    # Registered with monkeypatch so that teardown puts back the originals the probe is about to wrap.
    monkeypatch.setattr(TrainBatches, "epoch_batches", TrainBatches.epoch_batches)
    monkeypatch.setattr(TranslationModule, "training_step", TranslationModule.training_step)
    monkeypatch.setattr(data_probe, "STAGES", [("nmt.data.encode", "no_such_function", "clean"),
                                               ("nmt.no_such_module", "f", "read"),
                                               ("nmt.data.batching", "TrainBatches.epoch_batches", "batching")])
    original = TrainBatches.epoch_batches
    data_probe.install(data_probe.Recorder(str(tmp_path / "stages.jsonl")))
    assert TrainBatches.epoch_batches is not original and TrainBatches.epoch_batches.__wrapped__ is original
    assert TranslationModule.training_step.__wrapped__ is not None


def test_probe_counts_nested_stages_once(tmp_path):
    from nmt.bench.data_probe import Recorder

    recorder = Recorder(str(tmp_path / "stages.jsonl"))
    inner = recorder.wrap(lambda: None, "clean")
    outer = recorder.wrap(lambda: inner(), "encode")
    outer()
    records = [json.loads(line) for line in (tmp_path / "stages.jsonl").read_text().splitlines()]
    clean, encode = records
    assert (clean["stage"], encode["stage"]) == ("clean", "encode")
    assert encode["nested"] == pytest.approx(clean["end"] - clean["start"])


@pytest.mark.parametrize("args, message", [
    (["--baseline", "/nonexistent"], "--baseline /nonexistent: not an nmt checkout (no nmt/cli.py in it)"),
    (["--pairs", "0"], "--pairs (0) must be >= 1"),
    (["--model", "huge"], "--model huge: no such preset (base, small, tiny)"),
    (["--pairs", "many"], "argument --pairs: invalid int value: 'many'"),
])
def test_bench_data_bad_options_give_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main(["data", *args, "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err == f"nmt bench data: {message}\n"
    assert not (tmp_path / "work").exists()  # refused before writing anything


def fake_checkout(path, cli_body):
    """An 'nmt checkout' whose ``nmt.cli.main`` is ``cli_body``: a baseline that fails in a chosen way."""
    (path / "nmt").mkdir(parents=True)
    (path / "nmt" / "__init__.py").write_text("")
    (path / "nmt" / "cli.py").write_text(f"def main(argv):\n    {cli_body}\n")
    return path


@pytest.mark.parametrize("cli_body, message", [
    ("raise SystemExit(3)", r"nmt train exited 3 \(.*probe\.log\) and logged nothing"),
    ("print('boom'); raise SystemExit(4)", r"nmt train exited 4 \(.*probe\.log\): boom"),
    ("return 0", r"nmt train ended without a training step \(.*probe\.log\)"),
])
def test_a_run_that_fails_or_never_trains_is_one_line_and_exit_1(cli_body, message, tmp_path, capsys):
    baseline = fake_checkout(tmp_path / "fake", cli_body)
    assert main(["data", "--pairs", "50", "--baseline", str(baseline), "--work", str(tmp_path / "work"),
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(f"nmt bench data: {message}.*\n", err)
    assert not (tmp_path / "out").exists()
