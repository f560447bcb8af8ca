"""Decoding in bfloat16 and int8 (nmt translate/evaluate --dtype) against float32, and what --dtype auto and
trainer.precision=auto pick from the CPU's flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch

from nmt.config import ModelConfig
from nmt.config.train import TrainerConfig
from nmt.data.batching import collate
from nmt.data.tokenizer import TokenizerSettings, load_or_train
from nmt.decoding.dtypes import for_inference, inference_model, weight_bytes
from nmt.decoding.export import export_model
from nmt.decoding.flags import FlagError, check_dtype
from nmt.decoding.translate import Translator
from nmt.model import build_model
from nmt.precision import cpu_bf16, cpu_flags, resolve_dtype, resolve_precision
from tests.conftest import multi30k_sample
from tests.trained import multi30k_lines, train_briefly

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(vocab_size=1000, d_model=64, n_heads=4, d_ff=128, encoder_layers=2, decoder_layers=2, dropout=0.0)
X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_tile\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n"


@pytest.mark.parametrize("cpuinfo, has, named", [
    (X86_BF16, True, "avx512_bf16"), (ARM_BF16, True, "bf16"), (X86_AVX2, False, "avx, avx2"), ("", False, "none")])
def test_cpu_bf16_reads_the_flags(tmp_path, cpuinfo, has, named):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    found, why = cpu_bf16(cpu_flags(tmp_path / "cpuinfo"))
    assert found is has and named in why


def test_auto_follows_the_cpu_flags(monkeypatch):
    assert resolve_precision("16-mixed", "cpu") == ("16-mixed", "as configured")
    assert resolve_dtype("int8", "cpu") == ("int8", "as asked")
    for has, precision, dtype in ((True, "bf16-mixed", "bfloat16"), (False, "32-true", "float32")):
        monkeypatch.setattr("nmt.precision.cpu_bf16", lambda has=has: (has, "test"))
        assert resolve_precision("auto", "cpu") == (precision, "test")
        assert resolve_dtype("auto", "cpu") == (dtype, "test")


def test_a_precision_lightning_does_not_know_is_one_line():
    with pytest.raises(ValueError, match=r"trainer.precision \('bf17'\) must be one of auto, 32-true"):
        TrainerConfig(precision="bf17")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_or_train(lambda: multi30k_sample(3000), TokenizerSettings(1000), "dtypes",
                         tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def model(tokenizer):
    return train_briefly(ModelConfig(**SMALL), tokenizer, steps=150)


def _translate(model, tokenizer, lines: list[str], beam: int) -> list[str]:
    with torch.inference_mode():
        return Translator(model, tokenizer).translate(lines, beam=beam)


@pytest.mark.parametrize("dtype, agree", [("int8", 0.95), ("bfloat16", 0.97)])
def test_int8_and_bf16_decode_like_float32(dtype, agree, model, tokenizer, one_thread):
    """200 Multi30k test sentences: the reduced model's next-token pick equals float32's at ``agree`` of the
    reference positions (teacher-forced); greedy and beam 5 give identical outputs for at least 45% of the sentences
    and BLEU (sacreBLEU) within 0.5 and within 10% of float32's; the weights take less memory. (A model trained for
    seconds has flat distributions, where small differences flip picks more often than in a trained one:
    docs/performance.md measures the full-recipe model.)"""
    sources, references = multi30k_lines("test_2016_flickr.en.gz", 200), multi30k_lines("test_2016_flickr.de.gz", 200)
    reduced = for_inference(model, dtype, "cpu")
    batch = collate(tokenizer.encode(sources), tokenizer.encode(references))
    with torch.inference_mode():
        picks = [m(batch["src"], batch["src_lengths"], batch["tgt_in"]).float().argmax(-1) for m in (reduced, model)]
    real = batch["tgt_out"] != 0
    assert ((picks[0] == picks[1]) & real).sum() >= agree * real.sum()
    for beam in (1, 5):
        ours, base = _translate(reduced, tokenizer, sources, beam), _translate(model, tokenizer, sources, beam)
        same = sum(a == b for a, b in zip(ours, base))
        assert same >= 0.45 * len(sources), f"{dtype}, beam {beam}: {same}/{len(sources)} identical"
        assert len(set(base)) > 25  # real decisions, not one repeated output
        delta = sacrebleu.corpus_bleu(ours, [references]).score - sacrebleu.corpus_bleu(base, [references]).score
        bound = min(0.5, 0.1 * sacrebleu.corpus_bleu(base, [references]).score)  # this model's BLEU is ~3
        assert abs(delta) <= bound, f"{dtype}, beam {beam}: BLEU {delta:+.2f} against float32"
    assert weight_bytes(reduced) < 0.6 * weight_bytes(model)


def test_int8_off_the_cpu_is_one_line(model):
    with pytest.raises(FlagError, match="--dtype int8 runs on the CPU"):
        for_inference(model, "int8", "cuda:0")
    with pytest.raises(FlagError, match="not --device mps"):
        check_dtype("int8", "mps")


def test_dtype_auto_says_what_it_picked(model, caplog):
    picked, _ = resolve_dtype("auto", "cpu")
    with caplog.at_level("WARNING", logger="nmt.decoding.dtypes"):
        converted, dtype = inference_model(model, "auto", "cpu")
    assert dtype == picked and f"--dtype auto: {picked} (" in caplog.text
    assert next(converted.parameters()).dtype == (torch.bfloat16 if picked == "bfloat16" else torch.float32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_for_inference_leaves_its_argument_unchanged(dtype):
    """Callers convert one model to several formats (nmt bench translate): bfloat16 cast the argument in place."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL)).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    converted = for_inference(model, dtype, "cpu")
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].dtype == torch.float32 and torch.equal(after[name], value), name
    assert type(model.output).__name__ == "PackedLinear"  # int8's copy swaps its own projection, not this one's
    assert (converted is model) == (dtype == "float32")  # float32: nothing to convert, no copy (documented)


@pytest.mark.parametrize("has_bf16, dtype, warned", [(False, "bfloat16", True), (True, "bfloat16", False),
                                                     (False, "float32", False), (False, "int8", False)])
def test_explicit_bf16_on_a_cpu_that_emulates_it_warns_once(monkeypatch, caplog, has_bf16, dtype, warned):
    monkeypatch.setattr("nmt.precision.cpu_bf16", lambda: (has_bf16, "flags of a test CPU"))
    model = build_model(ModelConfig(**SMALL))
    with caplog.at_level("WARNING", logger="nmt.decoding.dtypes"):
        inference_model(model, dtype, "cpu")
    emulated = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert emulated == (["--dtype bfloat16: this CPU shows no bf16 matrix instructions (flags of a test CPU), so bf16 "
                         "is emulated and decodes slower than float32 (docs/performance.md)"] if warned else [])


@pytest.mark.parametrize("command, args", [("translate", []), ("evaluate", ["--src", "s", "--ref", "r"])])
def test_a_bad_dtype_is_one_line(command, args, capsys):
    from nmt.cli import main

    assert main([command, "--model", "m", *args, "--dtype", "float16"]) == 2
    lines = capsys.readouterr().err.splitlines()  # argparse's own usage block would come first
    assert len(lines) == 1 and lines[0].startswith(f"nmt {command}: argument --dtype: invalid choice: 'float16'")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_translate_and_evaluate_take_dtype(model, tokenizer, tmp_path):
    folder = export_model(model, tokenizer, tmp_path / "model")
    src, ref = tmp_path / "src.en", tmp_path / "ref.de"
    src.write_text("\n".join(multi30k_lines("test_2016_flickr.en.gz", 20)) + "\n")
    ref.write_text("\n".join(multi30k_lines("test_2016_flickr.de.gz", 20)) + "\n")
    outputs = {}
    for dtype in ("float32", "int8"):
        run = _cli("translate", "--model", str(folder), "--input", str(src), "--dtype", dtype, "--beam", "2")
        assert run.returncode == 0, run.stderr[-2000:]
        outputs[dtype] = run.stdout.splitlines()
    assert len(outputs["int8"]) == 20 and sum(a == b for a, b in zip(*outputs.values())) >= 8
    report = tmp_path / "report"
    run = _cli("evaluate", "--model", str(folder), "--src", str(src), "--ref", str(ref), "--dtype", "int8",
               "--report", str(report))
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["decoding"]["dtype"] == "int8"
    assert metrics["model"]["bytes"] < 0.6 * 4 * metrics["model"]["parameters"]
    refused = _cli("translate", "--model", str(folder), "--engine", "ct2", "--dtype", "int8")
    assert refused.returncode == 2 and "--compute-type" in refused.stderr and "Traceback" not in refused.stderr


def test_the_bf16_copy_is_the_cast_model_with_its_ties_and_no_float32_copy(monkeypatch):
    """for_inference's bf16 copy hands the deep copy bf16 tensors (no float32 copy first): the same weights as
    deepcopy + .to(bf16), the same tied parameters, and no float32 tensor copied on the way."""
    import copy

    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL)).eval()
    expected = copy.deepcopy(model).to(torch.bfloat16).state_dict()
    copied = []
    for cls in (torch.Tensor, torch.nn.Parameter):
        monkeypatch.setattr(cls, "__deepcopy__", lambda t, memo, real=cls.__deepcopy__: copied.append(id(t))
                            or real(t, memo))
    converted = for_inference(model, "bfloat16", "cpu")
    monkeypatch.undo()
    weights = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert weights and not weights & set(copied)  # (the sinusoidal table, a plain attribute, is copied as before)
    got = converted.state_dict()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
    ties = [(a, b) for a, pa in model.named_parameters(remove_duplicate=False)
            for b, pb in model.named_parameters(remove_duplicate=False) if a < b and pa is pb]
    converted_params = dict(converted.named_parameters(remove_duplicate=False))
    for a, b in ties:
        assert converted_params[a] is converted_params[b], (a, b)
