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
