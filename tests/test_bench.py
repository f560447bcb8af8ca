"""Each benchmark command once on tiny sizes, so they cannot rot (speed is measured by running them, not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nmt.bench import main
from tests.conftest import MULTI30K


def test_bench_attention_reports_every_case_and_exact_kv_fractions(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["attention", "--lengths", "32", "64", "--repeats", "1", "--heads", "8", "--head-dim", "8",
                 "--window", "8", "--global-tokens", "2", "--out", str(out)]) == 0
    results = json.loads((out / "attention.json").read_text())
    cases = {(c["variant"], c["backend"], c["mode"], c["length"]): c for c in results["cases"]}
    variants = {"mha", "gqa-2", "mqa", "window-8", "sparse-8+2", "sparse-sqrt"}
    assert ({key[0] for key in cases} == variants
            and {key[1] for key in cases} == {"math", "sdpa", "flex", "band", "auto"})
    assert len(cases) == 6 * 5 * 2 * 2
    assert cases[("window-8", "auto", "forward", 64)]["picked"] == "sdpa"  # too short for band to win
    for v in variants:
        for backend in ("math", "sdpa"):
            for mode in ("forward", "forward+backward"):
                case = cases[(v, backend, mode, 64)]
                assert case["status"] == "ok" and case["seconds"] > 0 and case["peak_bytes"] >= 0
    # What cannot run is a row that says why, not a gap.
    assert "no backward pass on CPU" in cases[("mha", "flex", "forward+backward", 32)]["why"]
    assert cases[("window-8", "flex", "forward", 64)]["status"] == "ok"
    assert "sliding-window attention (plus global tokens) only" in cases[("mha", "band", "forward", 32)]["why"]
    for v in ("window-8", "sparse-8+2", "sparse-sqrt"):
        assert cases[(v, "band", "forward+backward", 64)]["status"] == "ok"
        assert len(results["growth_exponents"][f"{v} / band / forward+backward"]) == 1
    # w = g = √n: 6 at 32 (√32 = 5.7), 8 at 64; every row carries what math would need at its length.
    sqrt_cases = [cases[("sparse-sqrt", "band", "forward", n)] for n in (32, 64)]
    assert [(c["window"], c["global_tokens"]) for c in sqrt_cases] == [(6, 6), (8, 8)]
    assert cases[("mha", "sdpa", "forward+backward", 64)]["math_estimate_bytes"] == 8 * 64 * 64 * 4 * 6
    kv = results["kv_cache"]
    assert kv["mha"]["bytes_per_token"] == 2 * 8 * 8 * 4  # K and V, 8 heads × 8 dims, fp32
    assert kv["gqa-2"]["fraction_of_mha"] == 2 / 8 and kv["mqa"]["fraction_of_mha"] == 1 / 8
    printed = capsys.readouterr().out
    assert "| window-8 | band | forward+backward |" in printed
    assert "| sparse-sqrt | band | forward+backward |" in printed.split("At 64: peak memory against what math")[1]
    assert (out / "attention.md").read_text().strip() in printed


def test_bench_attention_backends_are_the_registrys_for_the_device(monkeypatch):
    """Which backends run where is the registry's to say: a device-limited entry appears on its devices only."""
    import dataclasses

    import torch

    from nmt.attention import backends
    from nmt.bench.attention import backends_for

    assert backends_for(torch.device("cpu")) == ["math", "sdpa", "flex", "band", "auto"]
    assert backends_for(torch.device("cuda")) == ["math", "sdpa", "flex", "flash", "band", "auto"]
    registry = dict(backends.REGISTRY, band=dataclasses.replace(backends.REGISTRY["band"], devices=("cuda",)))
    monkeypatch.setattr(backends, "REGISTRY", registry)
    monkeypatch.setattr("nmt.bench.attention.REGISTRY", registry)
    assert "band" not in backends_for(torch.device("cpu"))


def test_bench_attention_times_cpu_seconds_on_request(tmp_path, monkeypatch):
    """--clock cpu times with time.process_time: a call that waits (as a process descheduled on a shared machine
    does) costs no CPU time."""
    import time

    from nmt.bench import attention

    out = tmp_path / "bench"
    monkeypatch.setattr(attention, "attend", lambda *args, **kwargs: time.sleep(0.05))
    assert main(["attention", "--lengths", "16", "--repeats", "1", "--heads", "2", "--head-dim", "8", "--variants",
                 "mha", "--backends", "sdpa", "--modes", "forward", "--clock", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "attention.json").read_text())
    assert results["settings"]["clock"] == "cpu" and results["cases"][0]["seconds"] < 0.04
    assert "median of 1 (cpu time)" in (out / "attention.md").read_text()


def test_bench_attention_refuses_bad_options_in_one_line(tmp_path, capsys):
    assert main(["attention", "--variants", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown variant(s) ['nope']" in capsys.readouterr().err
    from nmt.cli import main as nmt_main

    for argv, message in [(["--repeats", "0"], "--repeats (0) must be >= 1"),
                          (["--backends", "band", "nosuch"], "--backends: unknown 'nosuch'; the backends are math,"),
                          (["--device", "tpu9"], "--device 'tpu9' is not a device: use cpu, cuda, cuda:N or mps"),
                          (["--device", "meta"], "--device meta: nmt runs on cpu, cuda or mps")]:
        assert nmt_main(["bench", "attention", *argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nmt bench attention: {message}") and err.count("\n") == 1, err
    # Every bench checks --out before it runs (it failed with a traceback after the whole measurement).
    (tmp_path / "afile").write_text("x")
    for bench in ("attention", "data", "long", "train", "translate"):
        for out, message in [(tmp_path / "afile", "is a file, not a folder"),
                             (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a folder")]:
            assert nmt_main(["bench", bench, "--out", str(out)]) == 2
            assert capsys.readouterr().err == f"nmt bench {bench}: --out {out}: {message}\n"


@pytest.mark.slow
def test_bench_train_compares_with_torch_nn_transformer(tmp_path, capsys):
    out = tmp_path / "bench"
    overrides = [f"data.path={MULTI30K}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_train_examples=2000",
                 "data.vocab_size=1000"]
    assert main(["train", "--models", "tiny", "--steps", "2", "--repeats", "1", "--max-tokens", "512", "--bf16",
                 "--out", str(out), *overrides]) == 0
    results = json.loads((out / "train.json").read_text())["tokens_per_s"]["tiny"]
    assert results["nmt"] > 0 and results["torch.nn.Transformer"] > 0
    assert results["ratio"] == pytest.approx(results["nmt"] / results["torch.nn.Transformer"])
    assert results["bf16_over_fp32"] == pytest.approx(results["nmt bf16-mixed"] / results["nmt"])
    # Same dimensions: the parameters differ only by nmt's embedding rows padded to a multiple of 64 (1000 → 1024).
    assert results["parameters"]["nmt"] - results["parameters"]["torch.nn.Transformer"] == 24 * 128
    assert "| tiny |" in capsys.readouterr().out
    assert main(["train", "--models", "huge", "--out", str(out)]) == 2
    assert "huge" in capsys.readouterr().err


def test_bench_attention_skips_what_would_take_too_long_and_says_so(tmp_path):
    out = tmp_path / "bench"
    assert main(["attention", "--lengths", "16", "32", "--repeats", "1", "--heads", "2", "--head-dim", "8",
                 "--variants", "mha", "--backends", "sdpa", "--modes", "forward", "--max-seconds", "1e-9",
                 "--out", str(out)]) == 0
    first, second = json.loads((out / "attention.json").read_text())["cases"]
    assert first["status"] == "ok"  # nothing to extrapolate from yet
    assert second["status"] == "skipped" and "per call predicted (> --max-seconds 1e-09)" in second["why"]


def test_matmul_crossover_probe_runs(capsys):
    """scripts/matmul_crossover.py (behind dispatch.MATMUL_MAX_SCORES) on tiny sizes, so it cannot rot."""
    import runpy

    module = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "matmul_crossover.py"))
    module["main"](["--threads", "1", "--batch", "2", "--k-lens", "6", "--q-lens", "1", "3", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 6 |")]
    assert [row.split(" | ")[1] for row in rows] == ["1", "3"]


def test_band_crossover_probe_runs(capsys):
    """scripts/band_crossover.py (behind dispatch.band_wins) on tiny sizes, so it cannot rot."""
    import runpy

    module = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "band_crossover.py"))
    module["main"](["--threads", "1", "--heads", "2", "--head-dim", "8", "--lengths", "16", "32", "--repeats", "1",
                    "--cases", "4,2,causal", "4,0,bidir", "--clock", "cpu"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 |")]
    assert [(row[1], row[2], row[-1]) for row in rows] == [("2", "causal", "512 |"), ("0", "bidir", "512 |")]
    assert all(float(cell) > 0 for row in rows for cell in row[3:5])


def test_packed_linear_probe_runs(capsys):
    """scripts/packed_linear.py (behind nmt.model.packed_linear's speed claim) on tiny sizes, so it cannot rot."""
    import runpy

    module = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "packed_linear.py"))
    module["main"](["--threads", "1", "--d-model", "8", "--vocab", "16", "--rows", "1", "3", "--repeats", "1",
                    "--calls", "1"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "µs" not in line and "---" not in line]
    assert [row[0] for row in rows] == ["| 1", "| 3"]
    assert all(float(row[4].rstrip(" |")) <= 1e-5 for row in rows)


def test_int8_linear_probe_runs(capsys):
    """scripts/int8_linear.py (behind nmt.decoding.dtypes' choice of int8 path) on tiny sizes, so it cannot rot; the
    int8 product stays within 5% of float32's largest output."""
    import runpy

    module = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "int8_linear.py"))
    module["main"](["--rows", "2", "--shapes", "16x8", "--repeats", "1", "--calls", "1"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if "torch.ao int8" in line]
    assert len(rows) == 1 and float(rows[0][5].rstrip(" |")) < 0.05
