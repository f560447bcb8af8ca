"""nmt bench long on tiny sizes: every k × variant measured and written, KV-cache ratios exact (GQA: n_kv_heads /
n_heads; windows: the window's positions), the backends auto ran recorded, bad options one line."""

import json

import pytest
import torch

from nmt.bench import main
from tests.test_documents import small_source

TINY = ["data.vocab_size=400", "data.max_len=200", "model.d_model=32", "model.d_ff=64", "model.encoder_layers=1",
        "model.decoder_layers=1"]


@pytest.mark.slow
def test_bench_long_measures_every_k_and_variant(tmp_path, capsys, one_thread):
    source, out = small_source(tmp_path / "src", n=96), tmp_path / "bench"
    argv = ["long", "--k", "2", "4", "--steps", "2", "--warmup", "1", "--repeats", "1", "--variants", "mha", "gqa-2",
            "window-4", "sparse-4+2", "--decode-docs", "3", "--decode-batch", "2", "--max-tokens", "600",
            "--docs-dir", str(tmp_path / "docs"), "--source", str(source), "--out", str(out),
            f"data.cache_dir={tmp_path / 'cache'}", *TINY]
    assert main(argv) == 0
    payload = json.loads((out / "long.json").read_text())
    results = payload["results"]
    assert sorted(results) == ["2", "4"]
    per_position = 2 * 32 * 4  # K and V of d_model 32, fp32, one decoder layer
    for k, entry in results.items():
        assert sorted(entry["variants"]) == ["gqa-2", "mha", "sparse-4+2", "window-4"]
        mha = entry["variants"]["mha"]
        positions = mha["kv_cache_bytes"]["self_attention"] // per_position
        assert positions == entry["forced_length"]  # MHA caches every decoded position
        for name, r in entry["variants"].items():
            assert r["train_tokens_per_s"] > 0 and r["decode_documents_per_s"] > 0 and r["train_peak_bytes"] >= 0
            assert r["ratio_to_mha"]["train_tokens_per_s"] == pytest.approx(
                r["train_tokens_per_s"] / mha["train_tokens_per_s"])
            assert len(set(r["decode_tokens"])) == 1  # every variant forced to the same length
            assert set(r["backends"]["train"]) == {"encoder_self", "decoder_self", "cross"}
        kv = {name: r["ratio_to_mha"] for name, r in entry["variants"].items()}
        assert kv["gqa-2"]["kv_self_attention"] == kv["gqa-2"]["kv_cross_attention"] == 2 / 4  # n_kv / n_heads
        assert kv["window-4"]["kv_self_attention"] == 4 / positions  # the window's 4 positions, whatever the length
        assert kv["sparse-4+2"]["kv_self_attention"] == (4 + 2) / positions  # plus the 2 global tokens
        assert kv["window-4"]["kv_cross_attention"] == 1.0  # cross-attention stays full
    assert set(payload["summary"]) == {"gqa-2", "window-4", "sparse-4+2"}
    assert payload["summary"]["gqa-2"]["targets_met"] is None  # the targets are the windowed variants'
    printed = capsys.readouterr().out
    assert "| 4 |" in printed and "| sparse-4+2 |" in printed and "trains faster than MHA" in printed
    assert (out / "long.md").read_text().strip() in printed


def test_the_recorder_sees_auto_pick_band_for_a_long_window():
    from nmt.attention import Attention, AttentionConfig, dispatch
    from nmt.bench.long_measure import BackendRecorder

    recorder, chosen = BackendRecorder(), dispatch.choose_backend
    layer = Attention(16, AttentionConfig(n_heads=2, window=4).resolve(2), causal=True, site="decoder_self")
    for length, system in ((600, "long"), (40, "short")):
        with recorder.recording(system, "train"):
            layer(torch.randn(1, length, 16, requires_grad=True))[0].sum().backward()
    assert dispatch.choose_backend is chosen  # restored
    assert recorder.summary("long", "train") == {"decoder_self": {"band": 1.0}}
    assert recorder.summary("short", "train") == {"decoder_self": {"sdpa": 1.0}}


@pytest.mark.parametrize("argv, message", [
    (["--variants", "gqa-2"], "--variants must include mha: every ratio is to it"),
    (["--variants", "mha", "wndow-4"], "--variants 'wndow-4' is not a variant: mha, mqa, gqa-N, window-W or "
                                       "sparse-W+G"),
    (["--k", "0"], "--k (0) must be different counts >= 1"),
    (["--steps", "0"], "--steps (0) must be >= 1"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--source", "/nonexistent"], "--source /nonexistent: no such folder"),
    (["model.attention.cross.windw=3"], "unknown key model.attention.cross.windw"),
])
def test_bench_long_bad_options_are_one_line(argv, message, capsys, tmp_path):
    assert main(["long", "--docs-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmt bench long: ") and message in err and err.count("\n") == 1
