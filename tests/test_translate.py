"""nmt translate and nmt.load: line discipline on hostile input, clear refusals, fast start."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nmt
from nmt.config import ModelConfig
from nmt.export import export_model
from nmt.model import build_model
from nmt.tokenizer import TokenizerSettings, load_or_train
from tests.conftest import multi30k_sample

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("translate")
    tokenizer = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "t", base / "spm")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1)
    return export_model(build_model(cfg), tokenizer, base / "model")


def run(args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "nmt.cli", "translate", *args], input=stdin, capture_output=True,
                          cwd=ROOT, timeout=300)


HOSTILE = [
    "A dog runs in the park.",
    "",
    "   \t ",
    "x" * 5000,  # thousands of characters: truncated with a warning, still one line out
    "Ein Mädchen — 女の子 — فتاة 😀🐕",
    "Last line with CRLF\r",
]


def test_one_output_line_per_input_line(model_dir, tmp_path):
    data = "\n".join(HOSTILE).encode() + b"\n" + b"Caf\xe9 invalid bytes\n" + b"no final newline"
    result = run(["--model", str(model_dir), "--beam", "2", "--max-source-len", "50"], data)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(HOSTILE) + 2
    assert out[1] == "" and out[2] == ""  # blank and whitespace-only lines stay blank
    assert all(out[i] for i in (0, 3, 4, 5, 6, 7))  # the others are translated
    stderr = result.stderr.decode()
    assert "1 lines are not valid UTF-8; invalid bytes replaced by U+FFFD (lines 7)" in stderr
    assert "longer than 50 subwords were truncated (lines 4)" in stderr
    # The same through files, with a progress report on stderr, and through the Python API.
    (tmp_path / "in.txt").write_bytes(data)
    result = run(["--model", str(model_dir), "--beam", "2", "--max-source-len", "50",
                  "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt")])
    assert result.returncode == 0
    assert (tmp_path / "out.txt").read_text().split("\n") == out
    lines = data.decode("utf-8", errors="replace").split("\n")
    lines = [line.rstrip("\r") for line in lines]
    assert nmt.load(model_dir).translate(lines, beam=2, max_source_len=50) == out[:-1]


def test_nbest_output(model_dir):
    result = run(["--model", str(model_dir), "--beam", "3", "--nbest", "3"], b"A dog.\nTwo cats.\n")
    rows = [line.split(" ||| ") for line in result.stdout.decode().splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "0", "1", "1", "1"]
    scores = [float(r[2]) for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)


def _copy_model(model_dir, dest):
    dest.mkdir()
    for f in model_dir.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_unusable_models_are_refused_in_one_line(model_dir, tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope", "no such model directory or checkpoint")
    no_weights = _copy_model(model_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    cases["no weights"] = (no_weights, r"not an exported model directory \(missing model.safetensors\)")
    truncated = _copy_model(model_dir, tmp_path / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    cases["truncated"] = (truncated, "model.safetensors: truncated, corrupted")
    corrupted = _copy_model(model_dir, tmp_path / "corrupted")
    (corrupted / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    cases["corrupted"] = (corrupted, "model.safetensors: truncated, corrupted")
    mismatched = _copy_model(model_dir, tmp_path / "mismatched")
    other = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(500), "other", tmp_path / "spm")
    (mismatched / "spm.model").write_bytes(other.serialized)
    cases["spm"] = (mismatched, "sentencepiece model has 500 pieces but the model's vocabulary is 400")
    pickled = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, pickled)
    cases["pickle"] = (pickled, "refused: it holds pickled objects other than tensors and plain config")
    for name, (path, message) in cases.items():
        result = run(["--model", str(path)], b"A dog.\n")
        stderr = result.stderr.decode()
        assert result.returncode != 0, name
        assert len(stderr.strip().splitlines()) == 1, (name, stderr)
        assert __import__("re").search(message, stderr), (name, stderr)


def test_translate_starts_without_lightning_or_hydra(model_dir):
    code = (
        "import sys, io; from nmt.cli import main; sys.stdin = io.TextIOWrapper(io.BytesIO(b'A dog.\\n'));"
        f"main(['translate', '--model', {str(model_dir)!r}]);"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra')];"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
