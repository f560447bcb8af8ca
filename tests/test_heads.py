"""nmt analyze heads: entropy and Michel et al. (2019) importance against direct computations, pruning curves that
start at nmt evaluate's BLEU, the verdict, the files written and one-line errors."""

import gzip
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmt.analysis.pruning import Curve, masking_order, verdict
from nmt.cli import main
from nmt.config import SITES, ModelConfig
from nmt.data.batching import collate
from nmt.data.tokenizer import PAD_ID, TokenizerSettings, load_or_train
from nmt.decoding.export import export_model
from nmt.decoding.loading import load_model_info
from nmt.decoding.translate import Translator
from nmt.model import build_model
from tests.conftest import MULTI30K, multi30k_sample

SENTENCES = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "e", tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """A tiny exported model (GQA cross-attention: two K/V groups), Multi30k sources, and as references the model's
    own greedy translations, so the unpruned BLEU is 100 and masking heads lowers it."""
    base = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2,
                      dropout=0.0, attention={"cross": {"n_kv_heads": 2}})
    model_dir = export_model(build_model(cfg), tokenizer, base / "model")
    with gzip.open(MULTI30K / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        sources = [next(f).rstrip("\n") for _ in range(SENTENCES)]
    model, tok, _ = load_model_info(model_dir)
    references = Translator(model, tok).translate(sources, beam=1, max_len_a=0.0, max_len_b=8)
    (base / "src.en").write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (base / "ref.de").write_text("".join(r + "\n" for r in references), encoding="utf-8")
    return model_dir, base / "src.en", base / "ref.de"


DECODE = ["--beam", "1", "--max-len-a", "0", "--max-len-b", "8"]


@pytest.fixture(scope="module")
def analysis(setup, tmp_path_factory):
    model_dir, src, ref = setup
    out = tmp_path_factory.mktemp("out")
    assert main(["analyze", "heads", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--out",
                 str(out), *DECODE]) == 0
    return json.loads((out / "heads.json").read_text()), out


def _one_batch(model_dir, src, ref):
    model, tokenizer, _ = load_model_info(model_dir)
    sources, references = src.read_text().splitlines(), ref.read_text().splitlines()
    pairs = [(s, r) for s, r in zip(sources, references) if s.strip() and r.strip()]
    batch = collate(tokenizer.encode([s for s, _ in pairs]), tokenizer.encode([r for _, r in pairs]))
    return model, batch


def test_files_shapes_and_summary(analysis, capsys):
    report, out = analysis
    for name in ("heads.png", "pruning.png"):
        assert (out / name).stat().st_size > 1000
    assert set(report["sites"]) == set(SITES)
    for site, s in report["sites"].items():
        assert (s["layers"], s["n_heads"], s["n_kv_heads"]) == (2, 4, 2 if site == "cross" else 4)
        for key in ("entropy", "importance", "importance_normalized"):
            assert np.array(s[key]).shape == (2, 4)
        assert np.allclose(np.linalg.norm(np.array(s["importance_normalized"]), axis=1), 1.0)
        assert all(0 < e <= u + 1e-9 for row, u in zip(s["entropy"], s["uniform_entropy"]) for e in row)
    markdown = (out / "heads.md").read_text()
    assert "| site | layer | head | K/V group | entropy (nats)" in markdown and "| cross | 1 | 3 | 1 |" in markdown
    assert "**Verdict.**" in markdown and "![pruning curves](pruning.png)" in markdown
    assert report["scored_pairs"] <= report["sentences"] == SENTENCES


def test_entropy_equals_a_direct_computation_from_recorded_weights(setup, analysis):
    model, batch = _one_batch(*setup)
    with torch.no_grad(), model.recording_attention() as weights:
        model(batch["src"], batch["src_lengths"], batch["tgt_in"])
    tgt_lengths = (batch["tgt_out"] != PAD_ID).sum(1)
    for site in SITES:
        lengths = batch["src_lengths"] if site == "encoder_self" else tgt_lengths
        for layer, w in enumerate(weights[site]):
            rows = [w[b, :, t].double() for b in range(w.size(0)) for t in range(int(lengths[b]))]
            expected = sum(-(p * p.clamp_min(1e-300).log()).sum(-1) for p in rows) / len(rows)  # (n_heads,)
            assert analysis[0]["sites"][site]["entropy"][layer] == pytest.approx(expected.tolist(), rel=1e-6)


def test_importance_equals_a_direct_autograd_computation(setup, analysis):
    """Σ over sentences of |∂L(x)/∂ξ|, each sentence alone through the autograd engine, per target subword."""
    model, batch = _one_batch(*setup)
    total = {site: torch.zeros(2, 4) for site in SITES}
    tokens = 0
    for b in range(batch["src"].size(0)):
        S, T = int(batch["src_lengths"][b]), int((batch["tgt_out"][b] != PAD_ID).sum())
        with model.head_gates(requires_grad=True) as gates:
            logits = model(batch["src"][b : b + 1, :S], batch["src_lengths"][b : b + 1], batch["tgt_in"][b : b + 1, :T])
            loss = F.cross_entropy(logits[0], batch["tgt_out"][b, :T], reduction="sum")
            grads = torch.autograd.grad(loss, [gates[site] for site in SITES])
        for site, grad in zip(SITES, grads):
            total[site] += grad.abs()
        tokens += T
    for site in SITES:
        got = np.array(analysis[0]["sites"][site]["importance"])
        assert (got > 0).all()
        assert got == pytest.approx((total[site] / tokens).numpy(), rel=1e-4, abs=1e-7)


def test_pruning_curves_start_at_nmt_evaluates_scores(setup, analysis, capsys):
    """The first point is the unmasked model decoded as nmt evaluate decodes it: the same BLEU, chrF and TER (chrF
    is 100 against the model's own translations; a random model's one-word outputs leave BLEU without 4-grams)."""
    model_dir, src, ref = setup
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), *DECODE]) == 0
    printed = dict(re.findall(r"^(bleu|chrf|ter): (\S+)$", capsys.readouterr().out, re.M))
    pruning = analysis[0]["pruning"]
    assert pruning["metric"] == "bleu" and pruning["unpruned"] == float(printed["bleu"])
    for site, curve in pruning["curves"].items():
        assert curve["masked"] == list(range(9))
        assert {name: str(curve["scores"][0][name]) for name in printed} == printed
        assert sorted(map(tuple, curve["order"])) == [(layer, head) for layer in range(2) for head in range(4)]
        normalized = np.array(analysis[0]["sites"][site]["importance_normalized"])
        assert [normalized[tuple(p)] for p in curve["order"]] == sorted(normalized.flatten())
    assert float(printed["chrf"]) == 100.0
    assert min(curve["chrf"][-1] for curve in pruning["curves"].values()) < 100.0  # masking heads changed something
    judged = pruning["verdict"]
    assert set(judged["kept"]) == set(SITES) and judged["fewest"] and judged["most"]


def test_verdict_counts_heads_until_the_first_drop_below_tolerance():
    def curve(values):
        return Curve([(0, h) for h in range(len(values) - 1)], [{"bleu": v} for v in values])

    curves = {"encoder_self": curve([30.0, 29.5, 27.0, 29.9, 10.0]),  # the recovery after the drop does not count
              "decoder_self": curve([30.0, 29.2, 29.0, 29.1, 28.0]),
              "cross": curve([30.0, 20.0, 10.0, 5.0, 0.0])}
    judged = verdict(curves, "bleu", 1.0)
    assert judged.kept == {"encoder_self": 3, "decoder_self": 1, "cross": 4}
    assert (judged.fewest, judged.most, judged.unpruned) == (["decoder_self"], ["cross"], 30.0)
    assert masking_order(np.array([[0.5, 0.1], [0.1, 0.9]])) == [(0, 1), (1, 0), (0, 0), (1, 1)]


def test_bad_input_is_one_line_naming_the_problem(setup, tmp_path, capsys):
    model_dir, src, ref = setup
    short = tmp_path / "short.de"
    short.write_text("eine Zeile\n")
    cases = [
        (["--src", str(tmp_path / "missing.en"), "--ref", str(ref)], "missing.en"),
        (["--src", str(src), "--ref", str(short)], f"{src} has {SENTENCES} lines but {short} has 1"),
        (["--src", str(src), "--ref", str(ref), "--max-sentences", "0"], "--max-sentences (0) must be >= 1"),
    ]
    for flags, message in cases:
        assert main(["analyze", "heads", "--model", str(model_dir), "--out", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nmt analyze heads: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("")  # refused before any decoding, not after the curves
    assert main(["analyze", "heads", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--out",
                 str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err
    assert err == f"nmt analyze heads: --out {tmp_path / 'a_file'} is a file, not a folder\n"


def test_uniform_entropy_is_the_mean_ln_of_the_keys_each_row_sees(setup, analysis):
    """Encoder rows and cross-attention rows see their whole source; causal decoder row t sees t + 1 positions."""
    _, batch = _one_batch(*setup)
    src_lengths, tgt_lengths = batch["src_lengths"].tolist(), (batch["tgt_out"] != PAD_ID).sum(1).tolist()
    expected = {
        "encoder_self": [math.log(S) for S in src_lengths for _ in range(S)],
        "cross": [math.log(S) for S, T in zip(src_lengths, tgt_lengths) for _ in range(T)],
        "decoder_self": [math.log(t + 1) for T in tgt_lengths for t in range(T)],
    }
    for site, values in expected.items():
        assert analysis[0]["sites"][site]["uniform_entropy"] == pytest.approx([np.mean(values)] * 2, rel=1e-9)


@pytest.mark.parametrize("unpruned, tolerance, conclusive", [(0.4, 1.0, False), (1.0, 1.0, False), (0.0, 0.0, False),
                                                             (1.01, 1.0, True), (0.5, 0.0, True), (30.0, 1.0, True)])
def test_verdict_is_conclusive_only_above_the_tolerance(unpruned, tolerance, conclusive):
    """An untrained model scores ~0 BLEU: no curve can fall by more than the tolerance (nor at exactly it), so every
    site 'needs 0 heads' — the verdict must say that this is no finding rather than name the most prunable site; the
    JSON, the markdown and the summary carry the same judgement."""
    from nmt.analysis.head_scores import SiteScores
    from nmt.analysis.heads_report import markdown, summary, verdict_line

    curve = Curve([(0, 0)], [{"bleu": unpruned}, {"bleu": 0.0}])
    judged = verdict({site: curve for site in SITES}, "bleu", tolerance)
    assert judged.conclusive is conclusive
    line = verdict_line(judged, "bleu")
    if conclusive:
        assert line.startswith(f"Within {tolerance:g} BLEU of the unpruned {unpruned:.2f}, every site keeps"), line
    else:
        assert judged.kept == {site: 0 for site in SITES}
        assert line.startswith(f"The unpruned model scores {unpruned:.2f} BLEU, no more than the tolerance "
                               f"({tolerance:g})") and "cannot" in line, line
    scores = {site: SiteScores(1, 1, np.ones((1, 1)), np.ones(1), np.ones((1, 1)), np.ones((1, 1))) for site in SITES}
    lines = summary(scores, judged, "bleu")
    kept = 1 if conclusive else 0
    assert lines[0].endswith(f"; needs {kept} of 1 heads to stay within {tolerance:g} BLEU")
    assert lines[-1] == verdict_line(judged, "bleu")
    report = {"model": "m", "sentences": 1, "src": "s", "ref": "r", "scored_pairs": 1, "target_tokens": 1,
              "decoding": {"beam": 1}, "seconds": {"total": 1.0}}
    text = markdown(report, scores, {site: curve for site in SITES}, "bleu", judged)
    assert ("A site keeps heads up to the first point" in text) is conclusive
