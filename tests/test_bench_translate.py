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
            "--attention", "mqa,sliding_window", "--trained", str(_trained(tmp_path)), "--out", str(out),
            "--threads", "1", "--dtypes", "float32,bfloat16,int8", *overrides]
    threads = __import__("torch").get_num_threads()
    assert main(argv) == 0
    assert __import__("torch").get_num_threads() == threads  # --threads is undone afterwards
    results = json.loads((out / "translate.json").read_text())
    assert results["setup"]["sentences"] == 8 and results["setup"]["batches"] == 2
    assert [(r["attention"], r["beam"]) for r in results["results"]] == [
        ("mqa", 1), ("mqa", 3), ("sliding_window", 1), ("sliding_window", 3)]
    installed = results["setup"]["ctranslate2"] == "installed"
    for record in results["results"]:
        systems = record["systems"]
        assert systems["nmt"]["sentences_per_s"] > 0 and systems["Marian"]["sentences_per_s"] > 0
        # Every system generated exactly --length new tokens per sentence, in every run.
        assert record["equal_tokens"] and {tuple(s["tokens"]) for s in systems.values()} == {(8 * 4,)}
        assert record["nmt_over_marian"] > 0
        assert ("CTranslate2" in systems) == installed
        # nmt's own model exported to CTranslate2, where CTranslate2 can express it; the refusal otherwise.
        exportable = installed and record["attention"] == "mqa"
        assert ("nmt→CT2 float32" in systems) == ("nmt→CT2 int8" in systems) == exportable
        kv = record["kv_cache_bytes"]
        if record["attention"] == "mqa":  # one K/V head: CTranslate2 caches the same self-attention bytes as nmt
            assert kv["CTranslate2 (nmt export)"] - kv["nmt"] == 1 * 20 * 2 * 128 * 4 * (1 - 1 / 4)
        elif installed:
            assert record["exported"] == "not exportable: attention.encoder_self.window=8"
    for record in results["formats"]:  # nmt's float32, bfloat16 and int8 beside CTranslate2's float32 and int8
        speeds = record["sentences_per_s"]
        assert record["threads"] == 1 and all(speeds[f"nmt {d}"] > 0 for d in ("bfloat16", "int8"))
        assert record["fastest_reduced"] in ("nmt bfloat16", "nmt int8")
        assert (record["nmt_float32_over_ct2_float32"] is not None) == (installed and record["attention"] == "mqa")
    for record in results["trained"]:  # natural lengths: the float32 export decodes nmt's greedy tokens
        assert record["systems"]["nmt"]["sentences_per_s"] > 0
        if installed:  # (beam search on random weights, all near-ties, is tested on trained models: test_ct2.py)
            assert 0 <= record["identical_to_nmt"]["nmt→CT2 float32"] <= 8
            assert record["beam"] != 1 or record["identical_to_nmt"]["nmt→CT2 float32"] == 8
    printed = capsys.readouterr().out
    assert "fastest nmt reduced ÷ CT2 int8" in printed
    assert ("| mqa, 1 thread, greedy |" in printed and "| sliding_window, 1 thread, beam 3 |" in printed
            and "| mha (model), greedy |" in printed)
    assert (out / "translate.md").read_text().strip() in printed


def _trained(tmp_path):
    """An nmt model directory (random weights suffice for a smoke test of the natural-length table)."""
    import torch

    from nmt.config import ModelConfig
    from nmt.data.tokenizer import TokenizerSettings, load_or_train
    from nmt.decoding.export import export_model
    from nmt.model import build_model
    from tests.conftest import multi30k_sample

    tokenizer = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "bench", tmp_path / "spm")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1)
    return export_model(build_model(cfg).eval(), tokenizer, tmp_path / "model")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--limit", "0"], "--limit (0) must be >= 1"),
        (["--model", "huge"], "not a preset"),
        (["--beams", "x"], "invalid int value"),
        (["--frobnicate"], "unrecognized arguments"),
        (["model.no_such_key=1"], "no_such_key"),
        (["--attention", "mha,gqa3"], "--attention 'gqa3' is not a preset"),
        (["--trained", "/no/such/model"], "--trained /no/such/model: no such model directory"),
        (["--threads", "2,0"], "--threads (2,0) must all be >= 1"),
        (["--threads", "two"], "not a comma-separated list of counts: 'two'"),
        (["--dtypes", "int8,int4"], "--dtypes 'int4' is not a format"),
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
