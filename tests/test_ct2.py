"""nmt export ct2 and nmt translate --engine ct2: CTranslate2 computes nmt's model (log-probabilities to 1e-4) and
nmt's search (the same tokens, greedy and beam 5, on 200 Multi30k test sentences), or the export is refused in one
line naming the site and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ctranslate2",
                    reason="the CTranslate2 export needs the ctranslate2 package (pip install ctranslate2)")

from nmt.config import DecodeConfig, ModelConfig  # noqa: E402
from nmt.ct2.export import export_ct2  # noqa: E402
from nmt.ct2.export import main as export_main
from nmt.ct2.search import CT2Search  # noqa: E402
from nmt.ct2.spec import ExportError, check_exportable  # noqa: E402
from nmt.ct2.translator import CT2Translator  # noqa: E402
from nmt.data.batching import collate  # noqa: E402
from nmt.data.tokenizer import TokenizerSettings, load_or_train  # noqa: E402
from nmt.decoding.export import export_model  # noqa: E402
from nmt.decoding.search import max_lengths  # noqa: E402
from nmt.decoding.translate import Translator  # noqa: E402
from nmt.model import build_model  # noqa: E402
from tests.conftest import multi30k_sample  # noqa: E402
from tests.trained import multi30k_lines, train_briefly  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(vocab_size=1000, d_model=64, n_heads=4, d_ff=128, encoder_layers=2, decoder_layers=2, dropout=0.0)
ALL = lambda kv: {site: {"n_kv_heads": kv} for site in ("encoder_self", "decoder_self", "cross")}  # noqa: E731
# The parity models: every exportable preset (flash is mha's math on another kernel) and a mixed per-site model,
# across sinusoidal/RoPE and pre-/post-norm; the mixed one adds a decoder window, GELU and an encoder with its own
# head count. (No biases and untied matrices are proven on random weights: test_ct2_computes_nmt_log_probabilities.)
MODELS = {
    "mha": dict(norm="post"),
    "gqa-2": dict(positions="rope", attention=ALL(2)),
    "mqa": dict(attention=ALL(1)),
    "mixed": dict(positions="rope", activation="gelu", attention={
        "encoder_self": {"n_heads": 8, "n_kv_heads": 2}, "decoder_self": {"n_kv_heads": 1, "window": 4},
        "cross": {"n_kv_heads": 2}}),
}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return load_or_train(lambda: multi30k_sample(3000), TokenizerSettings(1000), "ct2", tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="session")
def test_ids(tokenizer):
    return tokenizer.encode(multi30k_lines("test_2016_flickr.en.gz", 200))


@pytest.fixture(scope="session")
def trained(tokenizer, tmp_path_factory):
    """name → (nmt Translator, CT2Translator over its float32 export); each model trained on first use."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model = train_briefly(ModelConfig(**SMALL, **MODELS[name]), tokenizer)
            folder = export_ct2(model, tokenizer, tmp_path_factory.mktemp("ct2") / name)
            cache[name] = (Translator(model, tokenizer), CT2Translator.load(folder, threads=1))
        return cache[name]

    return get


def _one_best(translator, ids: list[list[int]], cfg: DecodeConfig) -> list[list[int]]:
    """1-best token ids of every sentence, decoded in the same length-sorted batches of 50 by either engine."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list = [None] * len(ids)
    with torch.no_grad():
        for start in range(0, len(order), 50):
            rows = order[start : start + 50]
            for i, hyps in zip(rows, translator.decode_ids([ids[i] for i in rows], cfg, scores=False)):
                out[i] = hyps[0].tokens
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_ct2_decodes_the_same_tokens_as_nmt(name, trained, test_ids):
    nmt_translator, ct2_translator = trained(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for beam in (1, 5):
            cfg = DecodeConfig(beam=beam)
            ours, theirs = _one_best(nmt_translator, test_ids, cfg), _one_best(ct2_translator, test_ids, cfg)
            same = sum(a == b for a, b in zip(ours, theirs))
            assert same == len(test_ids), f"{name}, beam {beam}: {same}/{len(test_ids)} identical"
            assert len({tuple(t) for t in ours}) > 25  # real decisions, not one repeated output
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["mqa", "mixed"])
def test_max_length_endings_and_min_length_match(name, trained, test_ids):
    """With a tight max length most sentences end where nmt forces eos: the bridge of nmt/ct2/search.py."""
    nmt_translator, ct2_translator = trained(name)
    ids = test_ids[:100]
    for cfg in (DecodeConfig(beam=1, max_len_a=0.5, max_len_b=3), DecodeConfig(beam=5, max_len_a=0.5, max_len_b=3),
                DecodeConfig(beam=1, min_len=6)):
        ours = _one_best(nmt_translator, ids, cfg)
        assert _one_best(ct2_translator, ids, cfg) == ours
        limits = max_lengths(torch.tensor([len(s) + 1 for s in ids]), cfg).tolist()
        if cfg.max_len_a < 1:
            assert sum(len(t) + 1 == limit for t, limit in zip(ours, limits)) > 10  # the tails are exercised


CONFIGS = {
    "sinusoidal-pre": {},
    "sinusoidal-post-odd-head-dim": dict(d_model=36, norm="post"),
    "rope-post-gelu-nobias-untied": dict(positions="rope", norm="post", activation="gelu", bias=False,
                                         tie_embeddings=False),
    "per-site-heads": dict(attention={"encoder_self": {"n_heads": 2, "n_kv_heads": 1},
                                      "decoder_self": {"n_heads": 8, "n_kv_heads": 1},
                                      "cross": {"n_heads": 8, "n_kv_heads": 4}}),
    "decoder-window-gqa-rope": dict(positions="rope", attention={"decoder_self": {"n_kv_heads": 2, "window": 3}}),
    "decoder-window-1-mqa": dict(attention={"decoder_self": {"n_kv_heads": 1, "window": 1}}),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ct2_computes_nmt_log_probabilities(name, tmp_path):
    """Weight for weight: CTranslate2's log-probabilities of given targets, decoded step by step as in translation
    (CT2Search.score), are nmt's teacher-forced ones, windowed decoder self-attention included."""
    kwargs = {**dict(vocab_size=60, d_model=32, n_heads=4, d_ff=48, encoder_layers=2, decoder_layers=2),
              **CONFIGS[name]}
    torch.manual_seed(0)
    model = build_model(ModelConfig(**kwargs)).eval()
    pieces = ["<pad>", "<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(56)]
    folder = export_ct2(model, _FakeTokenizer(pieces), tmp_path / "ct2")
    import ctranslate2

    window = model.cfg.site("decoder_self").window
    search = CT2Search(ctranslate2.Translator(str(folder), device="cpu", intra_threads=1), pieces, None, window)
    src = [[5, 6, 7, 8, 9], [10, 11, 12], [13] * 9]
    tgt = [list(range(14, 38)), [], [3, 22, 23, 40]]  # long enough for the windows to matter
    source = [[pieces[i] for i in s] for s in src]
    stepwise = torch.tensor(search._score_steps(source, tgt))  # decoded as translation decodes
    got = torch.tensor(search.score(source, tgt))
    t = collate(src, tgt)
    with torch.no_grad():
        logprobs = model(t["src"], t["src_lengths"], t["tgt_in"]).log_softmax(-1)
    want = torch.tensor([float(logprobs[i, torch.arange(len(y) + 1), t["tgt_out"][i, : len(y) + 1]].sum())
                         for i, y in enumerate(tgt)])
    assert torch.allclose(got, want, atol=1e-4) and torch.allclose(stepwise, want, atol=1e-4), (got, stepwise, want)


class _FakeTokenizer:
    """What export_ct2 reads of a tokenizer, for models on made-up pieces."""

    def __init__(self, pieces: list[str]) -> None:
        self.vocab_size, self.serialized = len(pieces), b""
        self.sp = type("SP", (), {"id_to_piece": staticmethod(pieces.__getitem__)})()


@pytest.mark.parametrize("attention, fields", [
    ({"encoder_self": {"window": 8}, "decoder_self": {"window": 8}}, ["attention.encoder_self.window=8"]),
    ({"encoder_self": {"window": 8, "global_tokens": 2}, "decoder_self": {"window": 8, "global_tokens": 2}},
     ["attention.encoder_self.window=8", "attention.encoder_self.global_tokens=2",
      "attention.decoder_self.global_tokens=2"]),
    ({"cross": {"window": 4}}, ["attention.cross.window=4"]),
    ({"cross": {"n_heads": 2}}, ["attention.cross.n_heads=2", "attention.decoder_self.n_heads=4"]),
])
def test_what_ct2_cannot_express_is_refused_in_one_line(attention, fields):
    cfg = ModelConfig(vocab_size=60, d_model=32, n_heads=4, d_ff=48, encoder_layers=1, decoder_layers=1,
                      attention=attention)
    with pytest.raises(ExportError) as error:
        check_exportable(cfg)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and all(field in message for field in fields), message
    with pytest.raises(ExportError, match="model.tgt_vocab_size=80"):
        check_exportable(ModelConfig(vocab_size=60, tgt_vocab_size=80, d_model=32, n_heads=4, tie_embeddings=False))


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SMALL, "encoder_layers": 1, "decoder_layers": 1})
    return export_model(build_model(cfg).eval(), tokenizer, tmp_path_factory.mktemp("nmt") / "model")


def test_export_cli_writes_whole_folders_and_refuses_in_one_line(model_dir, tokenizer, tmp_path, capsys,
                                                                 monkeypatch):
    out = tmp_path / "ct2"
    assert export_main(["ct2", str(model_dir), str(out), "--quantization", "int8"]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.bin", "config.json", "shared_vocabulary.json", "spm.model",
                                               "nmt.json"}
    capsys.readouterr()
    for argv, message in [
        (["ct2", str(model_dir), str(out)], "already exists; add --force"),
        (["ct2", str(model_dir), str(model_dir.parent), "--force"], "would replace"),  # the folder holding the model
        (["ct2", str(model_dir), str(model_dir / "config.json"), "--force"], "is a file, not a folder"),
        (["ct2", str(model_dir), str(tmp_path / "x"), "--quantization", "int3"], "--quantization 'int3'"),
        (["ct2", str(tmp_path / "missing"), str(tmp_path / "y")], "no such model directory"),
        (["onnx", str(model_dir), str(tmp_path / "z")], "usage: nmt export ct2"),
    ]:
        assert export_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and (len(err.strip().splitlines()) == 1 or argv[0] == "onnx"), err
    windowed = ModelConfig(**{**SMALL, "encoder_layers": 1, "decoder_layers": 1,
                              "attention": {"encoder_self": {"window": 8}, "decoder_self": {"window": 8}}})
    windowed_dir = export_model(build_model(windowed), tokenizer, tmp_path / "windowed")
    assert export_main(["ct2", str(windowed_dir), str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmt export ct2: cannot export") and "attention.encoder_self.window=8" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
    # A failure while writing leaves the earlier export whole and no temporary folder behind.
    before = (out / "model.bin").read_bytes()
    import ctranslate2.specs.model_spec as model_spec

    monkeypatch.setattr(model_spec.SequenceToSequenceModelSpec, "save", lambda self, path: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_ct2(build_model(ModelConfig(**SMALL)), tokenizer, out)
    assert (out / "model.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "windowed"]


def _translate(argv: list[str], data: bytes, monkeypatch, capsys, caplog) -> tuple[int, str, str, list[str]]:
    """``nmt translate`` in this process: exit status, stdout, stderr, and the warnings it logged."""
    import io

    from nmt.decoding.translate import main as translate_main

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(data)})())
    caplog.clear()
    with caplog.at_level("WARNING", logger="nmt.decoding.translate"):
        status = translate_main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err, [r.getMessage() for r in caplog.records]


def test_translate_engine_ct2_keeps_every_promise_of_nmt_translate(trained, tokenizer, tmp_path, monkeypatch,
                                                                  capsys, caplog):
    """The same lines out as --engine nmt, blank for blank, with the same warnings; n-best lines too."""
    nmt_translator, _ = trained("mha")
    model = export_model(nmt_translator.model, tokenizer, tmp_path / "model")
    assert export_main(["ct2", str(model), str(tmp_path / "ct2")]) == 0
    data = ("A dog runs in the park.\n\n   \t \n" + "A man " * 200 + "\nTwo girls play.\r\n").encode()
    data += b"Caf\xe9 invalid bytes\nno final newline"
    for extra in ([], ["--beam", "5", "--nbest", "3"]):
        runs = {engine: _translate(["--model", str(path), "--engine", engine, "--max-source-len", "50", *extra],
                                   data, monkeypatch, capsys, caplog)
                for engine, path in (("nmt", model), ("ct2", tmp_path / "ct2"))}
        (status, ours, _, warned), (ct2_status, theirs, _, ct2_warned) = runs["nmt"], runs["ct2"]
        assert status == ct2_status == 0 and ct2_warned == warned and len(warned) == 2
        if not extra:
            assert theirs == ours
            plain = ours
            out = theirs.split("\n")
            assert len(out) == 8 and out[1] == out[2] == "" and all(out[i] for i in (0, 3, 4, 5, 6))
        else:  # the same texts; scores to the printed precision, give or take the last digit
            rows = [[line.split(" ||| ") for line in text.splitlines()] for text in (ours, theirs)]
            # 7 lines × 3 records: the two blank lines give 3 blank records each, as every n-best output does
            assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]] and len(rows[0]) == 7 * 3
            assert all(abs(float(a[2]) - float(b[2])) <= 2e-4 for a, b in zip(*rows))
    assert "1 source line longer than 50 subwords was truncated (lines 4)" in warned[1]
    status, _, err, _ = _translate(["--model", str(model), "--engine", "ct2"], b"A dog.\n", monkeypatch, capsys,
                                   caplog)
    assert status == 2 and "not a CTranslate2 model exported by nmt" in err and len(err.strip().splitlines()) == 1
    # And once as a user runs it: a separate process, stdin to stdout, warnings on stderr.
    result = subprocess.run([sys.executable, "-m", "nmt.cli", "translate", "--engine", "ct2", "--model",
                             str(tmp_path / "ct2"), "--max-source-len", "50"], input=data, capture_output=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.decode() == plain
    assert "(lines 4)" in result.stderr.decode() and "(lines 6)" in result.stderr.decode()


def test_short_position_tables_truncate_and_cap_with_warnings(trained, tokenizer, tmp_path, caplog):
    nmt_translator, _ = trained("mha")
    folder = export_ct2(nmt_translator.model, tokenizer, tmp_path / "ct2", quantization="int8", max_positions=12)
    translator = CT2Translator.load(folder, threads=1)
    lines = ["A man in a blue shirt is standing on a ladder cleaning windows while another man watches.", "", "Hi."]
    with caplog.at_level("WARNING", logger="nmt.decoding.translate"):
        out = translator.translate(lines, beam=5)
    assert len(out) == 3 and out[1] == "" and out[0] and out[2]
    assert "1 source line longer than 11 subwords was truncated (lines 1)" in caplog.text
    assert "more than the 12 positions of this CTranslate2 export: capped there (lines 1" in caplog.text
