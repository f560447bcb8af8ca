"""nmt translate and nmt.load: line discipline on hostile input, clear refusals, fast start."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nmt
from nmt.config import DecodeConfig, ModelConfig
from nmt.data.tokenizer import TokenizerSettings, load_or_train
from nmt.decoding.export import export_model
from nmt.model import build_model
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
    assert "1 line is not valid UTF-8; invalid bytes replaced by U+FFFD (lines 7)" in stderr
    assert "1 source line longer than 50 subwords was truncated (lines 4)" in stderr
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
    from safetensors.torch import load_file, save_file

    missing = _copy_model(model_dir, tmp_path / "missing_parameter")
    tensors = load_file(missing / "model.safetensors")
    del tensors["decoder_layers.0.feed_forward.inner.weight"]
    save_file(tensors, missing / "model.safetensors")
    cases["missing parameter"] = (missing, r"model.safetensors: weights do not fit the model config \(missing "
                                           r"parameter decoder_layers.0.feed_forward.inner.weight\)")
    misshapen = _copy_model(model_dir, tmp_path / "misshapen")
    (misshapen / "config.json").write_text((misshapen / "config.json").read_text().replace('"d_ff": 64', '"d_ff": 96'))
    cases["shape"] = (misshapen, r"weights do not fit the model config \(parameter \w+.0.feed_forward.inner.weight "
                                 r"has shape \(64, 32\) in the file but \(96, 32\) in the model config\)")
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


def main_in_process(args, stdin: bytes, monkeypatch, capsys):
    """``nmt translate ARGS`` in this process (no interpreter start): (status, stdout, stderr)."""
    import io

    from nmt.cli import main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    status = main(["translate", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


BLANKS = ["A dog runs.", "", "A cat sleeps.", "  \t "]  # a blank and a whitespace-only line among sentences


@pytest.mark.parametrize("mode", [["--beam", "1"], ["--beam", "3"], ["--sampling", "--seed", "3"],
                                  ["--beam", "4", "--nbest", "2"], ["--beam", "3", "--nbest", "3"]],
                         ids=["greedy", "beam", "sampling", "nbest2", "nbest3"])
def test_every_output_mode_writes_one_record_per_input_line(model_dir, mode, monkeypatch, capsys):
    """Issue 24, fault 1: n-best output dropped blank lines (indices 0, 0, 2, 2; a lone blank line printed nothing)."""
    nbest = int(mode[mode.index("--nbest") + 1]) if "--nbest" in mode else 1
    for lines in (BLANKS, [""], ["   "]):
        status, out, err = main_in_process(["--model", model_dir, *mode], "\n".join(lines).encode() + b"\n",
                                           monkeypatch, capsys)
        assert status == 0, err
        records = out.split("\n")[:-1]
        if nbest == 1:
            assert len(records) == len(lines)
            assert [bool(r) for r in records] == [bool(line.strip()) for line in lines]
            continue
        rows = [r.split(" ||| ") for r in records]
        assert [int(r[0]) for r in rows] == [i for i in range(len(lines)) for _ in range(nbest)]
        for (index, text, score) in rows:
            blank = not lines[int(index)].strip()
            assert (text == "") == blank and (float(score) == 0.0 if blank else float(score) < 0)
    translations = nmt.load(model_dir).translate_full(BLANKS, DecodeConfig(beam=3, nbest=3))
    assert [len(t.nbest) for t in translations] == [3, 3, 3, 3]


def test_empty_input_gives_empty_output(model_dir, tmp_path, monkeypatch, capsys):
    """Issue 24, fault 2: zero lines in, zero lines out, status 0, in every mode and from a file too."""
    (tmp_path / "empty.txt").write_bytes(b"")
    for args in ([], ["--nbest", "2"], ["--sampling"], ["--input", tmp_path / "empty.txt"]):
        assert main_in_process(["--model", model_dir, *args], b"", monkeypatch, capsys)[:2] == (0, "")
    assert nmt.load(model_dir).translate([]) == []


def test_bom_crlf_no_final_newline_and_gzip_read_as_everywhere(model_dir, tmp_path, monkeypatch, capsys):
    """Issue 24, faults 4 and 7: a byte-order mark, CRLF endings and a missing final newline change nothing; --input
    X.gz is decompressed and --output Y.gz compressed."""
    import gzip

    clean = "\n".join(BLANKS[:3]).encode() + b"\n"
    status, expected, _ = main_in_process(["--model", model_dir, "--beam", "2"], clean, monkeypatch, capsys)
    assert status == 0 and len(expected.split("\n")) == 4
    hostile = "\ufeff".encode() + "\r\n".join(BLANKS[:3]).encode()
    assert main_in_process(["--model", model_dir, "--beam", "2"], hostile, monkeypatch, capsys)[1] == expected
    (tmp_path / "in.txt.gz").write_bytes(gzip.compress(hostile))
    status, out, err = main_in_process(["--model", model_dir, "--beam", "2", "--input", tmp_path / "in.txt.gz",
                                        "--output", tmp_path / "out.txt.gz"], b"", monkeypatch, capsys)
    assert status == 0, err
    assert gzip.decompress((tmp_path / "out.txt.gz").read_bytes()).decode() == expected


def test_translate_takes_a_string_or_a_list(model_dir):
    """Issue 23, item 8: a str is one sentence (it was translated character by character)."""
    translator = nmt.load(model_dir)
    one = translator.translate("A dog runs in the park.", beam=2)
    assert isinstance(one, str) and one == translator.translate(["A dog runs in the park."], beam=2)[0]
    assert translator.translate(("A dog.", "")) == translator.translate(["A dog.", ""])
    assert translator.translate("") == ""
    assert isinstance(translator.translate("A dog.", sampling=True, seed=1), str)  # sampling implies beam 1
    for wrong, name in ((5, "int"), ({"a": 1}, "dict"), (b"bytes", "bytes")):
        with pytest.raises(TypeError, match=f"not {name}"):
            translator.translate(wrong)
    with pytest.raises(TypeError, match="item 1 is a int, not a str"):
        translator.translate(["A dog.", 3])


BAD_FLAGS = [
    (["--sampling", "--beam", "3"], r"--sampling .*--beam 3"),
    (["--sampling", "--nbest", "2"], r"--sampling .*--nbest 2"),
    (["--beam", "0"], r"--beam \(0\) must be >= 1"),
    (["--beam", "2", "--nbest", "3"], r"--nbest \(3\) must be in \[1, --beam \(2\)\]"),
    (["--max-len-a", "-1"], r"--max-len-a \(-1.0\) must be >= 0"),
    (["--max-len-b", "0"], r"--max-len-b \(0\) must be >= 1"),
    (["--min-len", "-1"], r"--min-len \(-1\) must be >= 0"),
    (["--sampling", "--top-k", "-1"], r"--top-k \(-1\) must be >= 0"),
    (["--sampling", "--top-p", "0"], r"--top-p \(0.0\) must be in \(0, 1\]"),
    (["--sampling", "--temperature", "0"], r"--temperature \(0.0\) must be > 0"),
    (["--batch-tokens", "0"], r"--batch-tokens \(0\) must be >= 1"),
    (["--max-source-len", "0"], r"--max-source-len \(0\) must be >= 1"),
    (["--device", "nonsense"], r"--device 'nonsense' is not a device"),
    pytest.param(["--device", "cuda"], r"--device cuda: no CUDA device is visible", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
]


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_decoding_flags_name_the_flag_in_one_line(model_dir, tmp_path, command, flags, message, capsys):
    """Issue 23, item 8: errors name the command-line flag (--max-len-b), not the config key (decode.max_len_b);
    --device cuda without CUDA is one line, not a traceback. Both commands declare the flags once."""
    from nmt.cli import main

    (tmp_path / "x.txt").write_text("A dog.\n")
    files = ["--input", tmp_path / "x.txt"] if command == "translate" else \
        ["--src", tmp_path / "x.txt", "--ref", tmp_path / "x.txt"]
    assert main([command, "--model", str(model_dir), *map(str, files), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert "decode." not in err


def test_sampling_implies_beam_1(model_dir, tmp_path, monkeypatch, capsys):
    status, out, err = main_in_process(["--model", model_dir, "--sampling", "--seed", "1"], b"A dog.\n", monkeypatch,
                                       capsys)
    assert status == 0 and len(out.splitlines()) == 1, err
    from nmt.cli import main

    (tmp_path / "x.txt").write_text("A dog.\n")
    assert main(["evaluate", "--model", str(model_dir), "--src", str(tmp_path / "x.txt"), "--ref",
                 str(tmp_path / "x.txt"), "--sampling", "--report", str(tmp_path / "eval")]) == 0
    decoding = json.loads((tmp_path / "eval" / "metrics.json").read_text())["decoding"]
    assert decoding["beam"] == 1 and decoding["sampling"] is True


def test_translate_and_evaluate_declare_the_same_decoding_flags():
    """One declaration: every decoding flag, with one default, in both commands (evaluate lacked --min-len, --nbest
    and the sampling flags, and truncated sources at 250 subwords where translate did at 1024)."""
    from nmt.decoding import translate
    from nmt.evaluation import evaluate

    t = vars(translate.parse_args(["--model", "m"]))
    e = vars(evaluate.parse_args(["--model", "m", "--src", "s", "--ref", "r"]))
    shared = set(t) & set(e)
    assert {"beam", "nbest", "min_len", "sampling", "top_k", "top_p", "temperature", "seed", "max_source_len",
            "batch_tokens", "device", "length_penalty", "max_len_a", "max_len_b"} <= shared
    assert {name: t[name] for name in shared} == {name: e[name] for name in shared}
    assert t["max_source_len"] == 1024 and t["beam"] is None  # None: 5, or 1 with --sampling


def test_checkpoint_translates_like_its_exported_directory(model_dir, tmp_path, monkeypatch, capsys):
    """Issue 24, fault 6: `--model best.ckpt` and `--model model/` (exported from it) give the same output."""
    from nmt.decoding.loading import load_model
    from tests.checkpoints import checkpoint_and_export

    ckpt, directory = checkpoint_and_export(*load_model(model_dir), tmp_path / "run", bleu_tokenize="none")
    outputs = [main_in_process(["--model", m, "--beam", "3", "--nbest", "2"], b"A dog runs.\n\nTwo cats.\n",
                               monkeypatch, capsys) for m in (ckpt, directory)]
    assert outputs[0] == outputs[1] and outputs[0][0] == 0 and outputs[0][1].count("\n") == 6
