"""``nmt bench translate`` once on tiny sizes (speed is measured by running it, not here), and its one-line errors."""

from __future__ import annotations

import json

import pytest

from nmt.bench import main
from tests.conftest import MULTI30K


def test_bench_translate_measures_every_system_on_equal_token_counts(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "bench"
    overrides = [f"data.path={MULTI30K}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_train_examples=2000",
                 "data.vocab_size=512", "model.encoder_layers=1", "model.decoder_layers=1"]
    argv = ["translate", "--limit", "8", "--repeats", "1", "--length", "4", "--batch", "4", "--beams", "1", "3",
            "--out", str(out), *overrides]
    assert main(argv) == 0
    results = json.loads((out / "translate.json").read_text())
    assert results["setup"]["sentences"] == 8 and results["setup"]["batches"] == 2
    assert [r["beam"] for r in results["results"]] == [1, 3]
    for record in results["results"]:
        systems = record["systems"]
        assert systems["nmt"]["sentences_per_s"] > 0 and systems["Marian"]["sentences_per_s"] > 0
        # Every system generated exactly --length new tokens per sentence, in every run.
        assert record["equal_tokens"] and {tuple(s["tokens"]) for s in systems.values()} == {(8 * 4,)}
        assert record["nmt_over_marian"] > 0
    installed = results["setup"]["ctranslate2"] == "installed"
    assert ("CTranslate2" in results["results"][0]["systems"]) == installed
    printed = capsys.readouterr().out
    assert "| greedy |" in printed and "| beam 3 |" in printed
    assert (out / "translate.md").read_text().strip() in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--limit", "0"], "--limit (0) must be >= 1"),
        (["--model", "huge"], "not a preset"),
        (["--beams", "x"], "invalid int value"),
        (["--frobnicate"], "unrecognized arguments"),
        (["model.no_such_key=1"], "no_such_key"),
    ],
)
def test_bench_translate_bad_options_give_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main(["translate", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert err.startswith("nmt bench translate: ")
    assert not (tmp_path / "translate.json").exists()


def test_systems_alternate_batch_by_batch_and_rotate_who_goes_first():
    from nmt.bench.translate import time_systems

    calls = []

    def runner(name, i):
        return lambda beam: calls.append((name, i, beam)) or 10 + i

    systems = {name: [runner(name, i) for i in range(3)] for name in ("a", "b", "c")}
    measured = time_systems(systems, 5, repeats=2, warmup={"a": lambda beam: calls.append(("warmup", beam)) or 0})
    assert calls[0] == ("warmup", 5)
    first = [(name, i) for name, i, _ in calls[1:10]]
    assert first == [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2), ("b", 2)]
    assert [name for name, i, _ in calls[10:13]] == ["b", "c", "a"]  # the second repeat starts one system later
    for record in measured.values():
        assert record["tokens"] == [10 + 11 + 12] and len(record["times"]) == 2 and record["seconds"] >= 0
