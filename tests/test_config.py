"""Configuration: every preset composes and builds, per-site overrides compose, bad values fail with names."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.cli import main
from nmt.config.compose import CONF_DIR, compose_config, model_config
from nmt.model import build_model

ATTENTION_PRESETS = sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml"))
MODEL_PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_the_presets_the_design_promises_exist():
    assert set(ATTENTION_PRESETS) >= {"mha", "mqa", "gqa", "sliding_window", "sparse", "flash"}
    assert set(MODEL_PRESETS) >= {"tiny", "small", "base"}


@pytest.mark.parametrize("preset", ATTENTION_PRESETS)
def test_every_attention_preset_composes_and_builds(preset):
    cfg = model_config(compose_config([f"attention={preset}", "model.vocab_size=64"]))
    model = build_model(cfg)
    if preset == "flash":
        assert {layer.cfg.backend for layer in model.attention_layers()} == {"flash"}
        return  # runs on CUDA only: tests/test_gpu.py
    src = torch.randint(1, 64, (2, 12))
    with torch.no_grad():
        logits = model.eval()(src, torch.tensor([12, 7]), src)
    assert logits.shape == (2, 12, 64) and torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_every_model_preset_composes(preset):
    cfg = model_config(compose_config([f"model={preset}"]))
    assert cfg.site("encoder_self").n_heads == cfg.n_heads


def test_preset_values():
    site = lambda overrides, name: model_config(compose_config(overrides)).site(name)  # noqa: E731
    assert site(["attention=mqa"], "cross").n_kv_heads == 1
    assert site(["attention=gqa"], "decoder_self").n_kv_heads == 2
    assert site(["attention=mha"], "encoder_self").n_kv_heads == 4  # tiny: 4 heads
    assert site(["attention=sliding_window"], "encoder_self").window == 8
    assert site(["attention=sliding_window"], "cross").window is None
    sparse = site(["attention=sparse"], "decoder_self")
    assert (sparse.window, sparse.global_tokens) == (8, 2)


def test_per_site_overrides_compose():
    """A sliding-window encoder with GQA cross-attention, two ways: a preset list, and dotted overrides."""
    listed = model_config(compose_config(["attention=[sliding_window,gqa]",
                                          "model.attention.decoder_self.n_kv_heads=1"]))
    assert listed.site("encoder_self").window == 8 and listed.site("encoder_self").n_kv_heads == 2
    assert listed.site("decoder_self").n_kv_heads == 1
    assert listed.site("cross").n_kv_heads == 2 and listed.site("cross").window is None
    dotted = model_config(
        compose_config(["model.attention.encoder_self.window=16", "model.attention.cross.n_kv_heads=2"])
    )
    assert dotted.site("encoder_self").window == 16 and dotted.site("encoder_self").n_kv_heads == 4
    assert dotted.site("cross").n_kv_heads == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.attention.cross.foo=3", "unknown key model.attention.cross.foo; did you mean"),
        ("model.attention.encoder_self.windw=4", "did you mean model.attention.encoder_self.window[?]"),
        ("model.attention.cross.window=abc", "could not be converted to Integer"),
        ("model.attention.cross.window=0", r"model.attention.cross: window \(0\) must be >= 1"),
        ("model.attention.encoder_self.n_kv_heads=3", r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
        ("model.d_model=130", r"d_model \(130\) must be divisible"),
        ("attention=nope", "attention=nope: no such option; options: flash, gqa, mha, mqa"),
    ],
)
def test_cli_config_errors_are_one_line(override, message, capsys):
    assert main(["attention", override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_cli_shows_the_sites():
    result = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "attention", "attention=[sparse,mqa]"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("encoder_self  mqa+window-8+global-2")
    assert lines[2].startswith("cross         mqa ")


def test_bench_without_a_known_benchmark_lists_them(capsys):
    assert main(["bench"]) == 2
    assert main(["bench", "kernels"]) == 2
    err = capsys.readouterr().err
    assert "usage: nmt bench <attention|data|long|train|translate>" in err and "Traceback" not in err
