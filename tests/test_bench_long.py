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
        assert mha["train_peak_bytes"] > 0  # a training step allocates activations beyond the weights
        for name, r in entry["variants"].items():
            assert r["train_tokens_per_s"] > 0 and r["decode_documents_per_s"] > 0
            assert r["ratio_to_mha"]["train_tokens_per_s"] == pytest.approx(
                r["train_tokens_per_s"] / mha["train_tokens_per_s"])
            # every variant decoded every document to exactly the forced length (eos included)
            assert r["decode_tokens"] == [entry["decoded_documents"] * entry["forced_length"]]
            assert set(r["backends"]["train"]) == {"encoder_self", "decoder_self", "cross"}
        kv = {name: r["ratio_to_mha"] for name, r in entry["variants"].items()}
        assert kv["gqa-2"]["kv_self_attention"] == kv["gqa-2"]["kv_cross_attention"] == 2 / 4  # n_kv / n_heads
        assert kv["window-4"]["kv_self_attention"] == 4 / positions  # the window's 4 positions, whatever the length
        assert kv["sparse-4+2"]["kv_self_attention"] == (4 + 2) / positions  # plus the 2 global tokens
        assert kv["window-4"]["kv_cross_attention"] == 1.0  # cross-attention stays full
    assert payload["environment"]["device"].startswith("cpu")  # where it ran, whatever else the machine has
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


def _results(train: dict[int, dict[str, float]], kv_self: dict[str, float]) -> dict[int, dict]:
    """Made-up `measure` results: per k, each variant's training ratio to MHA; KV self ratios per variant."""
    attention = {"mha": "full", "gqa-2": "full", "window-4": "window", "sparse-4+2": "sparse_window"}
    results = {}
    for k, ratios in train.items():
        variants = {"mha": {"train_tokens_per_s": 100.0}} | {v: {"train_tokens_per_s": 100.0 * q}
                                                             for v, q in ratios.items()}
        for v, r in variants.items():
            r["attention"] = {"encoder_self": attention[v], "decoder_self": attention[v], "cross": "full"}
            r["ratio_to_mha"] = {"train_tokens_per_s": r["train_tokens_per_s"] / 100.0,
                                 "kv_self_attention": kv_self.get(v, 1.0)}
        results[k] = {"lengths": {"train_source_mean": 10.0 * k}, "variants": variants}
    return results


def test_crossovers_need_faster_at_every_larger_k_and_both_targets():
    from nmt.bench.long import crossovers

    results = _results({8: {"gqa-2": 1.1, "window-4": 1.1, "sparse-4+2": 0.8},
                        16: {"gqa-2": 0.9, "window-4": 1.05, "sparse-4+2": 1.3},
                        32: {"gqa-2": 1.2, "window-4": 1.1, "sparse-4+2": 1.5},
                        64: {"gqa-2": 0.95, "window-4": 1.25, "sparse-4+2": 1.5}},
                       {"gqa-2": 0.5, "window-4": 0.3, "sparse-4+2": 0.2})
    summary = crossovers(results)
    assert set(summary) == {"gqa-2", "window-4", "sparse-4+2"}
    # faster at k=8 and k=32 but not at k=16 or 64: no k from which it stays faster
    assert summary["gqa-2"]["faster_than_mha_from_k"] is None and summary["gqa-2"]["targets_met"] is None
    assert summary["window-4"]["faster_than_mha_from_k"] == 8  # faster everywhere
    assert summary["window-4"]["faster_than_mha_from_source_subwords"] == 80
    assert summary["window-4"]["train_ratio_at_largest_k"] == 1.25
    assert summary["window-4"]["targets_met"] is False  # 1.25x, but its cache is 0.3 of MHA's (> 1/4)
    assert summary["sparse-4+2"]["faster_than_mha_from_k"] == 16  # slower at 8 only
    assert summary["sparse-4+2"]["targets_met"] is True  # 1.5x and 0.2
    slow = crossovers(_results({8: {"sparse-4+2": 1.3}, 64: {"sparse-4+2": 1.1}}, {"sparse-4+2": 0.1}))
    assert slow["sparse-4+2"]["faster_than_mha_from_k"] == 8 and slow["sparse-4+2"]["targets_met"] is False  # < 1.2x


def test_training_steps_rotate_who_goes_first(monkeypatch):
    """With five systems each goes first (and last) in turn, as nmt bench translate's batches do, not only two
    orders (forwards, backwards) for all."""
    from nmt.bench import train

    calls = []

    class Recorder:
        def __init__(self, name, bf16: bool = False) -> None:
            self.name, self.seconds, self.tokens = name, 1.0, 1

        def step(self, batch) -> None:
            calls.append(self.name)

    monkeypatch.setattr(train, "Trainee", Recorder)
    names = ["a", "b", "c", "d", "e"]
    train.tokens_per_second({n: n for n in names}, [{}] * 5, warmup=0)
    rounds = [calls[i : i + 5] for i in range(0, 25, 5)]
    assert [r[0] for r in rounds] == names and all(sorted(r) == names for r in rounds)
