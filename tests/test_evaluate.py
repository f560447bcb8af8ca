"""nmt evaluate (scores, report, pictures, KV-cache bytes) and nmt report (run comparison)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch

from nmt.cli import main
from nmt.config import DecodeConfig, ModelConfig
from nmt.data.tokenizer import TokenizerSettings, load_or_train
from nmt.decoding.export import export_model
from nmt.evaluation import plots
from nmt.evaluation.eval_report import example_line, viewer_lines
from nmt.evaluation.scoring import bleu, translate_texts
from nmt.model import build_model, kv_cache_bytes
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
    shown = metrics["viewer"]["lines"]
    assert shown == [i + 1 for i in viewer_lines(src.read_text().splitlines(), hypotheses)] and len(shown) == 3
    page = (tmp_path / "report" / "attention.html").read_text(encoding="utf-8")
    assert all(src.read_text().splitlines()[line - 1] in page for line in shown)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "![alignment](alignment.png)" in report and "sentences/s" in report and "(attention.html)" in report


def test_viewer_lines_are_length_quartiles_of_lines_with_a_hypothesis():
    sources = ["a" * n for n in (5, 1, 9, 3, 7, 2, 8)] + ["", "long source, empty hypothesis"]
    hypotheses = ["x"] * 7 + ["y", ""]
    assert viewer_lines(sources, hypotheses) == [3, 0, 4]  # lengths 3, 5, 7 of 1 2 3 5 7 8 9
    assert viewer_lines(sources[:2], hypotheses[:2]) == [1, 0]
    assert viewer_lines([""], ["x"]) == []


def test_viewer_lines_keep_to_the_allowed_lines():
    sources = ["a" * n for n in (5, 1, 9, 3, 7, 2, 8)]
    assert viewer_lines(sources, ["x"] * 7, allowed={1, 2, 5}) == [1, 5, 2]  # lengths 1, 2, 9
    assert viewer_lines(sources, ["x"] * 7, allowed=set()) == []


def test_pictures_of_a_document_stay_a_readable_size(tmp_path, monkeypatch):
    """A 1,150-subword document's grid was a 110,000 × 28,000-pixel canvas (12 GB: the OOM killer ended nmt
    evaluate); past plots.MAX_LABELS subwords an axis labels every k-th subword with its position."""
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.stem, fig) and path)
    n = 1150
    pieces = [f"w{i}" for i in range(n)]
    plots.head_grid(np.random.rand(4, n, n), pieces, pieces, "t", tmp_path / "grid.png")
    plots.alignment(np.random.rand(n, n), pieces, pieces, "t", tmp_path / "alignment.png")
    width, height = figures["grid"].get_size_inches()
    assert width <= 4 * plots.MAX_INCHES + 1 and height <= plots.MAX_INCHES
    assert max(figures["alignment"].get_size_inches()) <= plots.MAX_INCHES
    for fig in figures.values():
        ax = [ax for ax in fig.axes if ax.images][0]
        labels = [t.get_text() for t in ax.xaxis.get_ticklabels()]
        assert len(labels) <= plots.MAX_LABELS and labels[:2] == ["0:w0", "20:w20"]
        assert [t.get_text() for t in ax.yaxis.get_ticklabels()] == labels
    short = plots._ticks(list("abc"))
    assert list(short[0]) == [0, 1, 2] and short[1] == ["a", "b", "c"]  # short sequences: every subword, as before


def test_a_report_on_documents_writes_no_viewer_and_says_why(tmp_path, tokenizer, capsys):
    """Every line longer than the viewer's MAX_SUBWORDS: no attention.html (its data would be GBs), one log line,
    and the report says so; the pictures are still drawn."""
    from nmt.analysis.viewer import MAX_SUBWORDS

    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    line = " ".join(["A dog runs through the green grass."] * 40)
    assert len(tokenizer.encode([line])[0]) > MAX_SUBWORDS
    src, ref = tmp_path / "docs.en", tmp_path / "docs.de"
    src.write_text(f"{line}\n{line}\n", encoding="utf-8")
    ref.write_text("Ein Hund.\nEin Hund.\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--beam", "1",
                 "--max-len-a", "0", "--max-len-b", str(MAX_SUBWORDS + 20), "--min-len", str(MAX_SUBWORDS + 10),
                 "--report", str(tmp_path / "report")]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["viewer"] == {"file": None, "why": f"every line is longer than {MAX_SUBWORDS} subwords"}
    assert not (tmp_path / "report" / "attention.html").exists()
    assert "No attention viewer: every line is longer" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "attention_cross.png").stat().st_size > 1000


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
    assert main(["evaluate", "--model", str(model_dir), "--src", str(short), "--ref", str(ref)]) == 2
    assert f"{short} has 1 line but {ref} has 20" in capsys.readouterr().err  # not "1 lines"
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--report",
                 str(short)]) == 2  # refused before translating, not after
    assert capsys.readouterr().err == f"nmt evaluate: --report {short} is a file, not a folder\n"
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--hyp", str(ref),
                 "--report", str(short / "report")]) == 2  # an OSError: the path and the reason, not "[Errno 20] …"
    assert capsys.readouterr().err == f"nmt evaluate: {short / 'report'}: Not a directory\n"


def test_given_hypotheses_record_no_decoding_settings(tmp_path, tokenizer, test_files, capsys):
    """With --hyp nothing is decoded: the decoding flags given (--dtype, --beam) are not recorded as if they were."""
    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    src, ref = test_files
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--hyp", str(ref),
                 "--dtype", "int8", "--beam", "3", "--report", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    decoding = metrics["decoding"]
    assert decoding.pop("hypotheses_from") == str(ref) and "speed" not in metrics
    assert {"beam", "dtype", "device", "batch_tokens"} <= decoding.keys()  # the keys of a decoding run, all null
    assert set(decoding.values()) == {None}
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"Nothing decoded: the hypotheses were read from `{ref}`" in report and "int8" not in report


def test_the_reported_kv_cache_compares_across_models_on_one_test_set(tokenizer, test_files, tmp_path):
    """Every model gets the example line's source and reference lengths (not its own hypothesis's), so the bytes
    of an MHA and an MQA model differ by exactly their K/V heads."""
    from nmt.evaluation.evaluate import evaluate, parse_args

    src, ref = test_files
    kv = {}
    for name, attention in {"mha": {}, "mqa": {s: {"n_kv_heads": 1} for s in ("decoder_self", "cross")}}.items():
        torch.manual_seed(1 if name == "mha" else 2)  # different weights: different hypotheses
        model_dir = make_model_dir(tmp_path / name, tokenizer, **attention)
        kv[name] = evaluate(parse_args(["--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--beam", "3",
                                        "--max-len-b", "5"]))["kv_cache_bytes_per_sentence"]
    line = example_line(src.read_text().splitlines())
    assert kv["mha"]["target_subwords"] == len(tokenizer.encode([ref.read_text().splitlines()[line]])[0]) + 1
    assert (kv["mha"]["source_subwords"], kv["mha"]["target_subwords"]) == (kv["mqa"]["source_subwords"],
                                                                           kv["mqa"]["target_subwords"])
    assert kv["mha"]["total"] == 4 * kv["mqa"]["total"]


def test_kv_cache_bytes_are_measured_per_variant(tokenizer, tmp_path):
    from nmt.decoding.loading import load_model

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
    for name, attention in (("mha", {}),
                            ("mqa", {s: {"n_kv_heads": 1} for s in ("encoder_self", "decoder_self", "cross")})):
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
    (tmp_path / "mha" / "eval_2017").mkdir()  # a second test set (scripts/multi30k_table.sh)
    (tmp_path / "mha" / "eval_2017" / "metrics.json").write_text(json.dumps(
        {"scores": {"bleu": 4.5, "chrf": 19.0}, "speed": {"sentences_per_s": 99.0}}))
    out = tmp_path / "report"
    assert main(["report", *runs, "--out", str(out)]) == 0
    lines = (out / "report.md").read_text().splitlines()
    assert "| test_bleu | test_chrf | test_bleu_2017 | test_chrf_2017 | train_tokens_per_s |" in lines[4]
    table = [line for line in lines if line.startswith("| m")]
    assert table[0].startswith("| mha | mha | mha | mha |")
    assert "| 5.50 | 20.00 | 4.50 | 19.00 | 1,000.00 | 12.50 |" in table[0]
    assert table[1].startswith("| mqa | mqa | mqa | mqa |") and "| 4.00 | 20 | – | – | – | – |" in table[1]
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


def evaluate_cli(args, capsys):
    status = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_zero_lines_are_nothing_to_score_in_one_line(tmp_path, tokenizer, test_files, capsys):
    """Issue 24, fault 2: an empty test set was an IndexError traceback from inside sacreBLEU."""
    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    src, ref = test_files
    for files in (["--src", empty, "--ref", empty], ["--src", empty, "--ref", empty, "--hyp", empty]):
        status, _, err = evaluate_cli(["--model", model_dir, *files], capsys)
        assert status == 2 and err.strip().splitlines() == [f"nmt evaluate: {empty} has no lines: nothing to score"]
    status, _, err = evaluate_cli(["--model", model_dir, "--src", src, "--ref", ref, "--hyp", empty], capsys)
    assert status == 2 and err.strip() == f"nmt evaluate: {empty} has 0 lines but {ref} has 20"


def test_hypotheses_keep_blank_lines(tmp_path, tokenizer, capsys):
    """Issue 24, fault 1: hypotheses.txt (and nbest.txt) hold a record per source line, blank where it is blank."""
    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    lines = ["A dog runs.", "", "A cat sleeps.", "  \t "]
    (tmp_path / "src.txt").write_text("\n".join(lines) + "\n")
    status, _, err = evaluate_cli(["--model", model_dir, "--src", tmp_path / "src.txt", "--ref", tmp_path / "src.txt",
                                   "--beam", "3", "--nbest", "2", "--report", tmp_path / "eval"], capsys)
    assert status == 0, err
    hypotheses = (tmp_path / "eval" / "hypotheses.txt").read_text().split("\n")
    assert len(hypotheses) == 5 and hypotheses[1] == hypotheses[3] == "" and hypotheses[0] and hypotheses[2]
    nbest = [line.split(" ||| ") for line in (tmp_path / "eval" / "nbest.txt").read_text().splitlines()]
    assert [int(r[0]) for r in nbest] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r[1] for r in nbest if r[0] in ("1", "3")] == ["", "", "", ""]


def _validation(model, tokenizer, folder: Path, monkeypatch=None) -> tuple[float, list[str]]:
    """Validation BLEU as training computes it: the valid split read by the corpus reader (nmt.data.load), translated
    and scored by the LightningModule's own _validation_bleu with its decoding settings (greedy)."""
    from dataclasses import asdict

    import lightning as L

    from nmt.config.train import DataConfig, OptimConfig
    from nmt.data.load import load_split
    from nmt.training.lit_module import TranslationModule

    cfg = DataConfig(path=str(folder), file_pattern="{split}.{lang}", cache_dir=str(folder / "cache"),
                     splits={"train": "valid", "valid": "valid", "test": None})
    valid = load_split(cfg, "valid")
    module = TranslationModule(model.cfg.to_dict(), asdict(OptimConfig()), {}, 1, None)
    module.model.load_state_dict(model.state_dict())
    module.tokenizer, module.valid_sources, module.valid_references = tokenizer, list(valid["src"]), list(valid["tgt"])
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    return module._validation_bleu(), module.valid_references


def test_validation_bleu_equals_evaluate_bleu_on_bom_crlf_and_no_final_newline(tmp_path, tokenizer, test_files,
                                                                              monkeypatch, capsys):
    """Issue 24, fault 4: the same hypotheses scored 100.0 as validation BLEU and 99.59 in `nmt evaluate` against a
    reference file with a byte-order mark (the training reader dropped it, evaluate's kept it)."""
    from nmt.decoding import translate
    from nmt.decoding.loading import load_model

    folder = tmp_path / "data"
    folder.mkdir()
    clean = {lang: path.read_text().splitlines()[:8] for lang, path in zip(("en", "de"), test_files)}
    for lang, lines in clean.items():  # a byte-order mark, CRLF endings, no final newline
        (folder / f"valid.{lang}").write_bytes(("\ufeff" + "\r\n".join(lines)).encode())
    args = ["--src", folder / "valid.en", "--ref", folder / "valid.de", "--beam", "1", "--report", tmp_path / "eval"]
    model_dir = make_model_dir(tmp_path / "model", tokenizer)
    model, tok = load_model(model_dir)

    # A translator that knows the answers: BLEU is 100 exactly when both readers give the clean sentences.
    answers = dict(zip(clean["en"], clean["de"]))
    monkeypatch.setattr(translate.Translator, "translate_full", lambda self, texts, *a, **k: [
        translate.Translation(answers.get(t, "?"), [(answers.get(t, "?"), 0.0)]) for t in texts])
    validation, references = _validation(model, tok, folder)
    assert references == clean["de"] and validation == pytest.approx(100.0)
    status, out, err = evaluate_cli(["--model", model_dir, *args], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["scores"]["bleu"] == pytest.approx(validation)
    monkeypatch.undo()

    # The model itself: the same hypotheses, the same BLEU.
    validation, _ = _validation(model, tok, folder)
    assert evaluate_cli(["--model", model_dir, *args], capsys)[0] == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["scores"]["bleu"] == pytest.approx(validation, abs=1e-3)
    hypotheses = (tmp_path / "eval" / "hypotheses.txt").read_text().split("\n")[:-1]
    assert hypotheses == translate_texts(model, tok, clean["en"], DecodeConfig())


def test_checkpoint_and_exported_directory_evaluate_alike(tmp_path, tokenizer, test_files, capsys):
    """Issue 24, fault 6: a checkpoint of a run with bleu_tokenize=none was scored with 13a only."""
    from nmt.decoding.loading import load_model
    from tests.checkpoints import checkpoint_and_export

    model, tok = load_model(make_model_dir(tmp_path / "m", tokenizer))
    ckpt, directory = checkpoint_and_export(model, tok, tmp_path / "run", bleu_tokenize="none")
    for lang, path in zip(("en", "de"), test_files):
        (tmp_path / f"test.{lang}").write_text("".join(line + "\n" for line in path.read_text().splitlines()[:5]))
    outputs = []
    for path in (ckpt, directory):
        status, out, err = evaluate_cli(["--model", path, "--src", tmp_path / "test.en", "--ref", tmp_path / "test.de",
                                         "--beam", "2"], capsys)
        assert status == 0, err
        outputs.append([line for line in out.splitlines() if not line.startswith("sentences/s")])
    assert outputs[0] == outputs[1]
    assert "bleu_tokenized_signature: nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:" + sacrebleu.__version__ \
        in outputs[0]


def _fake_run(run: Path, tokenizer, model_from: str = "model", bleu: float = 4.0) -> Path:
    from nmt.decoding.loading import load_model
    from tests.checkpoints import checkpoint_and_export

    model, tok = load_model(make_model_dir(run / "m", tokenizer))
    checkpoint_and_export(model, tok, run)
    if model_from == "checkpoint":  # a run stopped before its export
        shutil.rmtree(run / "model")
    shutil.rmtree(run / "m")
    (run / "logs" / "version_0").mkdir(parents=True)
    (run / "logs" / "version_0" / "metrics.csv").write_text(
        f"epoch,step,lr,tok_per_s,train_loss,val_bleu,val_loss\n0,9,0.001,1000,5.0,,\n0,9,,,,{bleu},4.2\n")
    return run


def test_report_skips_what_is_not_a_run_and_reads_checkpoint_runs_alike(tmp_path, tokenizer, capsys):
    """Issue 23, item 8: `nmt report outputs/multirun/DATE/TIME/*` also matches multirun.yaml (and a job folder that
    never finished); issue 24, fault 6: a run with only its checkpoint reports like one with its export."""
    sweep = tmp_path / "multirun"
    _fake_run(sweep / "0", tokenizer)
    _fake_run(sweep / "1", tokenizer, model_from="checkpoint")
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job that failed at start
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    out = tmp_path / "report"
    assert main(["report", *map(str, sorted(sweep.iterdir())), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {sweep / 'multirun.yaml'}: not a finished nmt run (not a directory)" in err
    assert f"skipped {sweep / '2'}: not a finished nmt run" in err
    rows = json.loads((out / "report.json").read_text())
    assert [Path(r["run"]).name for r in rows] == ["0", "1"]
    same = ("attention", "parameters", "kv_cache_bytes", "best_val_bleu")
    assert {k: rows[0][k] for k in same} == {k: rows[1][k] for k in same}
    assert main(["report", str(sweep / "multirun.yaml"), str(sweep / "2"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"nmt report: none of the 2 paths is a finished nmt run (first: "
                                        f"{sweep / 'multirun.yaml'}: not a finished nmt run (not a directory))"]


def test_attention_grids_share_one_colour_scale_with_a_colour_bar_and_the_alignment_labels(tmp_path, monkeypatch,
                                                                                           tokenizer):
    """Issue 24, fault 7: each head was scaled to its own maximum, without a colour bar, and the grids' axes were
    labelled otherwise than the alignment's (rows by decoder input, not by the subword produced)."""
    from nmt.decoding.loading import load_model
    from nmt.evaluation.eval_report import attention_pictures

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.stem, fig) and path)
    model, tok = load_model(make_model_dir(tmp_path / "model", tokenizer))
    attention_pictures(model, tok, "A dog runs in the park.", "Ein Hund rennt.", tmp_path)
    alignment = figures["alignment"].axes[0]
    for name in ("attention_encoder_self", "attention_decoder_self", "attention_cross"):
        fig = figures[name]
        panels = [ax for ax in fig.axes if ax.images]
        colour_bars = [ax for ax in fig.axes if not ax.images and ax.get_label() == "<colorbar>"]
        assert len(panels) == 4 and len(colour_bars) == 1, name
        largest = max(float(ax.images[0].get_array().max()) for ax in panels)
        assert all(ax.images[0].get_clim() == (0.0, pytest.approx(largest)) for ax in panels), name
        assert panels[0].images[0].get_cmap().name == alignment.images[0].get_cmap().name
    cross = [ax for ax in figures["attention_cross"].axes if ax.images][0]
    assert (cross.get_xlabel(), cross.get_ylabel()) == (alignment.get_xlabel(), alignment.get_ylabel()) == \
        ("source", "target")
    ticks = lambda axis: [t.get_text() for t in axis.get_ticklabels()]  # noqa: E731
    assert ticks(cross.yaxis) == ticks(alignment.yaxis) and ticks(cross.xaxis) == ticks(alignment.xaxis)
    encoder = [ax for ax in figures["attention_encoder_self"].axes if ax.images][0]
    assert (encoder.get_xlabel(), encoder.get_ylabel()) == ("source", "source")


def test_report_tells_runs_with_the_same_folder_name_apart():
    """Uptraining runs are all called `run` (scripts/uptrain_table.sh): their rows and plot labels must differ."""
    from nmt.evaluation.report import run_names

    assert run_names(["out/full/mha", "out/full/gqa"]) == ["mha", "gqa"]
    assert run_names(["out/up/gqa2-all/run", "out/up/mqa-all/run", "out/full/mha"]) == \
        ["gqa2-all/run", "mqa-all/run", "mha"]
    assert run_names(["a/x/run", "b/x/run"]) == ["a/x/run", "b/x/run"]
    assert run_names(["runs/same", "runs/same"]) == ["runs/same", "runs/same"]  # one path twice: ends, no loop


def test_the_report_says_nothing_was_decoded_whatever_the_hypothesis_file_is_called():
    from nmt.evaluation.eval_report import decoding_line

    settings = dict.fromkeys(["beam", "length_penalty", "sampling", "max_len_a", "max_len_b", "min_len",
                              "max_source_len", "batch_tokens", "device", "dtype"])
    assert decoding_line({**settings, "hypotheses_from": "model"}) == \
        "Nothing decoded: the hypotheses were read from `model` (`--hyp`)."
