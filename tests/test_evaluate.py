"""nmt evaluate (scores, report, pictures, KV-cache bytes) and nmt report (run comparison)."""

import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch

from nmt import plots
from nmt.cli import main
from nmt.config import ModelConfig
from nmt.evaluate import bleu, kv_cache_bytes
from nmt.export import export_model
from nmt.model import build_model
from nmt.tokenizer import TokenizerSettings, load_or_train
from tests.conftest import MULTI30K, multi30k_sample


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "e", tmp_path_factory.mktemp("spm"))


def make_model_dir(path, tokenizer, **attention):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2,
                      attention=attention)
    return export_model(build_model(cfg), tokenizer, path)


@pytest.fixture(scope="module")
def test_files(tmp_path_factory):
    import gzip

    base = tmp_path_factory.mktemp("files")
    for lang in ("en", "de"):
        with gzip.open(MULTI30K / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            (base / f"test.{lang}").write_text("".join(next(f) for _ in range(20)), encoding="utf-8")
    return base / "test.en", base / "test.de"


def test_evaluate_writes_scores_report_and_pictures(tmp_path, tokenizer, test_files, capsys):
    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    src, ref = test_files
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--beam", "2",
                 "--tokenized", "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "bleu_signature: nrefs:1|case:mixed|eff:no|tok:13a" in out and "sentences/s:" in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    hypotheses = (tmp_path / "report" / "hypotheses.txt").read_text().splitlines()
    references = ref.read_text().splitlines()
    assert metrics["scores"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score, abs=1e-3)
    assert metrics["scores"]["bleu_tokenized_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:none")
    assert metrics["decoding"]["beam"] == 2 and metrics["speed"]["sentences_per_s"] > 0
    assert metrics["model"]["parameters"] > 0 and metrics["kv_cache_bytes_per_sentence"]["total"] > 0
    for name in ("attention_encoder_self", "attention_decoder_self", "attention_cross", "alignment"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000
    report = (tmp_path / "report" / "report.md").read_text()
    assert "![alignment](alignment.png)" in report and "sentences/s" in report


def test_attention_grid_has_one_panel_per_head(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.head_grid(np.random.rand(6, 5, 7), list("abcde"), list("abcdefg"), "t", tmp_path / "x.png")
    panels = [ax for ax in figures[0].axes if ax.images]
    assert len(panels) == 6


def test_evaluate_scores_given_hypotheses_and_checks_line_counts(tmp_path, tokenizer, test_files, capsys):
    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    src, ref = test_files
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--hyp", str(ref)]) == 0
    assert "bleu: 100.0" in capsys.readouterr().out
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(short)]) == 2
    assert "has 20 lines but" in capsys.readouterr().err


def test_kv_cache_bytes_are_measured_per_variant(tokenizer, tmp_path):
    from nmt.loading import load_model

    sizes = {}
    for name, attention in {"mha": {}, "mqa": {s: {"n_kv_heads": 1} for s in ("decoder_self", "cross")},
                            "window": {"decoder_self": {"window": 4}}}.items():
        model, _ = load_model(make_model_dir(tmp_path / name, tokenizer, **attention))
        sizes[name] = kv_cache_bytes(model, [5] * 9, hyp_len=12, beam=3)
    # 2 layers × (K and V) × beam 3 × length × heads × head_dim 8 × 4 bytes
    assert sizes["mha"]["self_attention"] == 2 * 2 * 3 * 12 * 4 * 8 * 4
    # Beam search keeps the source K/V once per sentence, not per beam: source 9 subwords + eos.
    assert sizes["mha"]["cross_attention"] == 2 * 2 * 1 * 10 * 4 * 8 * 4
    assert sizes["mqa"]["total"] * 4 == sizes["mha"]["total"]
    assert sizes["window"]["self_attention"] == 2 * 2 * 3 * 4 * 4 * 8 * 4


def test_report_compares_runs(tmp_path, tokenizer, capsys):
    runs = []
    for name, attention in (("mha", {}), ("mqa", {s: {"n_kv_heads": 1} for s in ("encoder_self", "decoder_self", "cross")})):
        run = tmp_path / name
        make_model_dir(run / "model", tokenizer, **attention)
        (run / "logs" / "version_0").mkdir(parents=True)
        (run / "logs" / "version_0" / "metrics.csv").write_text(
            "epoch,step,lr,tok_per_s,train_loss,val_bleu,val_loss\n0,9,0.001,1000,5.0,,\n"
            f"0,9,,,,{3.5 if name == 'mha' else 3.1},4.2\n0,19,,,,4.0,3.9\n"
        )
        runs.append(str(run))
    (tmp_path / "mha" / "eval").mkdir()
    (tmp_path / "mha" / "eval" / "metrics.json").write_text(json.dumps(
        {"scores": {"bleu": 5.5, "chrf": 20.0}, "speed": {"sentences_per_s": 12.5}}))
    out = tmp_path / "report"
    assert main(["report", *runs, "--out", str(out)]) == 0
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| m")]
    assert table[0].startswith("| mha | mha | mha | mha |") and "| 5.50 | 20.00 | 1,000.00 | 12.50 |" in table[0]
    assert table[1].startswith("| mqa | mqa | mqa | mqa |") and "| 4.00 | 20 |" in table[1]
    data = json.loads((out / "report.json").read_text())
    assert data[0]["kv_cache_bytes"] == 4 * data[1]["kv_cache_bytes"]
    assert data[0]["best_step"] == 20 and data[0]["best_val_bleu"] == 4.0
    for png in ("bleu_vs_kv_cache.png", "training_curves.png"):
        assert (out / png).stat().st_size > 1000
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a finished nmt run" in capsys.readouterr().err


def test_decode_speed_benchmark_runs(tmp_path, tokenizer, test_files):
    """The README's decoding-speed command, on a few sentences, so it cannot rot."""
    import subprocess
    import sys

    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    other = make_model_dir(tmp_path / "other", tokenizer)
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, "scripts/decode_speed.py", "--model", str(model_dir), str(other), "--src", str(test_files[0]),
         "--limit", "5", "--repeats", "1", "--out", str(out)],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"| {other} | greedy |" in result.stdout and f"| {model_dir} | beam 5 |" in result.stdout
    speeds = json.loads(out.read_text())["sentences_per_s"]
    assert set(speeds) == {str(model_dir), str(other)}
    assert all(v > 0 for by_beam in speeds.values() for v in by_beam.values())


def test_tokenized_bleu_does_not_warn_about_tokenized_text(caplog):
    """tokenize='none' declares tokenized text: sacreBLEU's detokenize warning is noise there, but stays for 13a."""
    lines = [f"a dog number {i} runs ." for i in range(120)]
    with caplog.at_level("WARNING", logger="sacrebleu"):
        assert bleu(lines, lines, "none") == pytest.approx(100.0)
    assert "tokenized period" not in caplog.text
    with caplog.at_level("WARNING", logger="sacrebleu"):
        bleu(lines, lines)
    assert "tokenized period" in caplog.text
