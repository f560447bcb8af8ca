"""The KV-cache calculator (nmt.analysis.kv_cache, `nmt attention --kv`) against the caches of built models: every
preset and site, per layer, at target lengths on both sides of the window and window + global tokens, beams 1 and 5,
one sentence and real batches; the MHA baseline against a built MHA model; then its input checks and the CLI."""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
import torch

from nmt.analysis.kv_cache import format_kv_plan, kv_cache_plan, parse_kv_args, stored_positions
from nmt.cli import main
from nmt.config import SITES
from nmt.config.compose import compose_config, model_config
from nmt.model import build_model, kv_cache_bytes, kv_cache_layer_bytes

DIMS = ["model.d_model=32", "model.d_ff=64", "model.encoder_layers=2", "model.decoder_layers=2",
        "model.vocab_size=100", "model.n_heads=4"]
# The presets set window 8 and global_tokens 2: 5 decoded positions fit the window, 9 fill it and reach into the
# global tokens (8 < 9 ≤ 10, nothing dropped yet with them, the oldest dropped without), 20 are well beyond.
TARGETS = [5, 9, 20]
CASES = {
    "mha": ["attention=mha"],
    "gqa": ["attention=gqa"],
    "mqa": ["attention=mqa"],
    "sliding_window": ["attention=sliding_window"],
    "sparse": ["attention=sparse"],
    # Sparse self-attention with an MQA cross site of its own head count (head_dim 16 there, 8 elsewhere).
    "sparse+mqa_cross": ["attention=sparse", "model.attention.cross.n_kv_heads=1", "model.attention.cross.n_heads=2"],
    # A cross-attention window with a global token: query positions matter, so every beam row keeps its own source.
    "gqa+cross_window": ["attention=gqa", "model.attention.cross.window=4", "model.attention.cross.global_tokens=1"],
}
SOURCE = [random.Random(0).randrange(4, 100) for _ in range(6)]  # 6 subwords + eos: src = 7


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@functools.lru_cache(maxsize=None)
def config(overrides: tuple[str, ...]):
    return model_config(compose_config(list(overrides)))


@functools.lru_cache(maxsize=None)
def model(overrides: tuple[str, ...]):
    return build_model(config(overrides)).eval()


def mha_overrides(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The same model as plain MHA at every site, written as overrides (not with the calculator's mha_baseline)."""
    plain = [f"model.attention.{site}.{key}=null" for site in SITES for key in ("n_kv_heads", "window")]
    return (*overrides, *plain, *(f"model.attention.{site}.global_tokens=0" for site in SITES))


def assert_matches(plan, measured: list[dict[str, int]], per_batch: bool) -> None:
    """The plan's bytes equal the measured ones per site and layer; the encoder caches nothing."""
    for site, key in (("decoder_self", "self_attention"), ("cross", "cross_attention")):
        rows = plan.site(site)
        assert [row.layer for row in rows] == list(range(len(measured)))
        got = [row.bytes_per_batch if per_batch else row.bytes_per_sentence for row in rows]
        assert got == [layer[key] for layer in measured], site
    assert all(row.bytes_per_sentence == 0 and not row.cached for row in plan.site("encoder_self"))


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("tgt", TARGETS)
@pytest.mark.parametrize("case", list(CASES))
def test_calculator_equals_the_measured_cache_per_site_and_layer(case, tgt, beam):
    overrides = (*DIMS, *CASES[case])
    plan = kv_cache_plan(config(overrides), src=len(SOURCE) + 1, tgt=tgt, beam=beam)
    assert_matches(plan, kv_cache_layer_bytes(model(overrides), [SOURCE], tgt, beam), per_batch=False)
    assert plan.totals().as_dict() == kv_cache_bytes(model(overrides), SOURCE, tgt, beam)  # its existing callers' sum
    baseline = mha_overrides(overrides)
    assert plan.totals(baseline=True).as_dict() == kv_cache_bytes(model(baseline), SOURCE, tgt, beam)


@pytest.mark.parametrize("case", ["sparse+mqa_cross", "gqa+cross_window"])
def test_a_batch_is_per_sentence_times_batch(case):
    """Three equal-length sources decoded together (shared and per-beam source rows), then a padded batch, which
    caches every sentence's source at the longest one's length."""
    overrides, tgt, beam = (*DIMS, *CASES[case]), 9, 5
    rng = random.Random(1)
    sources = [[rng.randrange(4, 100) for _ in range(10)] for _ in range(3)]
    plan = kv_cache_plan(config(overrides), src=11, tgt=tgt, beam=beam, batch=3)
    assert_matches(plan, kv_cache_layer_bytes(model(overrides), sources, tgt, beam), per_batch=True)
    assert plan.totals(per_batch=True).total == 3 * plan.totals().total
    padded = [sources[0][:4], sources[1], sources[2][:7]]
    assert_matches(plan, kv_cache_layer_bytes(model(overrides), padded, tgt, beam), per_batch=True)


@pytest.mark.parametrize("preset, ratio", [("gqa", 2 / 16), ("mqa", 1 / 16), ("sparse", None)])
def test_sixteen_heads(preset, ratio):
    dims = [d for d in DIMS if not d.startswith(("model.d_model=", "model.n_heads="))]
    overrides = (*dims, "model.d_model=64", "model.n_heads=16", f"attention={preset}")  # head_dim 4
    for tgt, beam in ((20, 5), (9, 1)):
        plan = kv_cache_plan(config(overrides), src=len(SOURCE) + 1, tgt=tgt, beam=beam)
        assert plan.site("cross")[0].n_kv_heads == (16 if preset == "sparse" else 16 * ratio)
        assert_matches(plan, kv_cache_layer_bytes(model(overrides), [SOURCE], tgt, beam), per_batch=False)
        if ratio is not None:
            assert plan.ratio() == ratio


def test_half_precision_caches():
    overrides = (*DIMS, *CASES["gqa+cross_window"])
    half = build_model(config(overrides)).to(torch.bfloat16).eval()
    plan = kv_cache_plan(config(overrides), src=len(SOURCE) + 1, tgt=9, beam=5, dtype="bfloat16")
    assert_matches(plan, kv_cache_layer_bytes(half, [SOURCE], 9, 5), per_batch=False)
    fp32 = kv_cache_plan(config(overrides), src=len(SOURCE) + 1, tgt=9, beam=5, dtype="fp32")
    assert plan.totals().total * 2 == fp32.totals().total


def test_tiny_mha_by_hand():
    """model=tiny (4 layers, d_model 128, 4 heads of 32), defaults src=40 tgt=40 beam=5, fp32: K and V × rows ×
    positions × heads × head_dim × 4 bytes × 4 layers."""
    plan = kv_cache_plan(config(("attention=mha",)))
    assert plan.totals().self_attention == 4 * 2 * 5 * 40 * 4 * 32 * 4 == 819_200
    assert plan.totals().cross_attention == 4 * 2 * 1 * 40 * 4 * 32 * 4 == 163_840
    assert plan.ratio() == 1.0
    assert [stored_positions(t, 8, 2) for t in (1, 8, 9, 10, 11, 40)] == [1, 8, 9, 10, 10, 10]
    assert [stored_positions(t, 8, 0) for t in (7, 8, 9)] == [7, 8, 8]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"src": 0}, r"src \(0\) must be an integer >= 1 \(source positions, eos included\)"),
        ({"tgt": -1}, r"tgt \(-1\) must be an integer >= 1"),
        ({"beam": 0}, r"beam \(0\) must be"),
        ({"batch": 0}, r"batch \(0\) must be"),
        ({"dtype": "int8"}, r"dtype \('int8'\) must be one of fp32, float32, fp16, float16, bf16, bfloat16"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kv_cache_plan(config(("attention=mha",)), **kwargs)


def test_cli_prints_the_table_and_totals(capsys):
    """model=tiny with MQA everywhere, bf16, a batch of 64: the numbers worked out by hand."""
    args = ["attention", "attention=mqa", "--kv", "src=40", "tgt=40", "beam=5", "batch=64", "dtype=bf16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("encoder_self  mqa ") and "beam=5, batch=64, dtype=bf16 (2 bytes per value)" in out
    table = out.split("KV cache: ", 1)[1].splitlines()
    layers = [line.split() for line in table if line.startswith(("decoder_self ", "cross "))]
    assert [words[:2] for words in layers] == [[site, str(i)] for site in ("decoder_self", "cross") for i in range(4)]
    assert layers[0][3:9] == ["1", "32", "40", "5", "25,600", "1,638,400"]  # 2 · 5 · 40 · 1 · 32 · 2 bytes
    assert layers[4][3:9] == ["1", "32", "40", "1", "5,120", "327,680"]  # one source row for the 5 beams
    assert re.search(r"^encoder_self +0-3 .*not cached", out, flags=re.M)
    total = r"^  all +122,880 +7,864,320 B \(7\.5 MiB\) +491,520  0\.25x \(4x smaller\)$"
    assert re.search(total, out, flags=re.M)


def test_cli_kv_defaults(capsys):
    assert main(["attention", "attention=sliding_window", "--kv"]) == 0
    out = capsys.readouterr().out
    assert "src=40 source positions (eos included), tgt=40 decoded positions (bos included), beam=5, batch=1, " \
           "dtype=fp32" in out
    assert format_kv_plan(kv_cache_plan(config(("attention=sliding_window",)))) in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kv", "sr=40"], r"--kv: unknown key 'sr'; did you mean src\? \(keys: src, "),
        (["--kv", "model=base"], r"unknown key 'model' \(keys: .*Hydra overrides go before --kv\)$"),
        (["--kv", "src40"], r"--kv takes KEY=VALUE words, got 'src40'"),
        (["--kv", "=3"], r"--kv takes KEY=VALUE words, got '=3'"),
        (["--kv", "tgt=abc"], r"--kv tgt='abc': not an integer"),
        (["--kv", "beam=0"], r"--kv beam \(0\) must be an integer >= 1"),
        (["--kv", "dtype=int8"], r"--kv dtype \('int8'\) must be one of fp32"),
        (["model.n_heads=3", "--kv"], r"must be divisible"),
    ],
)
def test_cli_bad_kv_input_is_one_line(args, message, capsys):
    assert main(["attention", *args]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert re.search(message, captured.err), captured.err
    assert captured.out == ""


def test_parse_kv_args_later_wins():
    assert parse_kv_args(["beam=4", "dtype=fp16", "beam=1"]) == {"beam": 1, "dtype": "fp16"}


def test_the_docs_table_is_what_the_calculator_says():
    """docs/attention.md's per-preset table: bytes and ratio at 4 and 16 heads, src=40 tgt=40 beam=5, fp32."""
    page = (Path(__file__).parent.parent / "docs" / "attention.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+) \| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+) \|$", page, flags=re.M)
    assert [row[0] for row in rows] == ["mha", "gqa", "mqa", "sliding_window", "sparse"]
    for preset, *cells in rows:
        for model, (bytes_, ratio) in ((("model=tiny",), cells[:2]), (("model=base", "model.n_heads=16"), cells[2:])):
            plan = kv_cache_plan(config((f"attention={preset}", *model)), src=40, tgt=40, beam=5)
            assert plan.totals().total == int(bytes_.replace(",", "")), (preset, model)
            assert f"{plan.ratio():.4g}" == ratio, (preset, model)


def test_cli_help_and_unknown_options_and_preset_lists(capsys):
    """`nmt attention --help` prints its usage; an unknown option is one line naming it (it used to reach Hydra's
    lexer); a comma list of presets gets the bracketed spelling as a hint."""
    for flag in ("--help", "-h"):
        assert main(["attention", flag]) == 0
        assert capsys.readouterr().out.startswith("usage: nmt attention [OVERRIDE …] [--kv")
    assert main(["attention", "attention=gqa", "--kb", "src=40"]) == 2
    assert capsys.readouterr().err == ("nmt attention: unknown option '--kb': the options are --kv and --help; "
                                       "overrides are KEY=VALUE words\n")
    assert main(["attention", "attention=sparse,mqa"]) == 2
    err = capsys.readouterr().err
    assert "'attention=[sparse,mqa]'" in err and err.count("\n") == 1
