"""``nmt average``: the mean of the last N periodic checkpoints, exported as a loadable model directory."""

from __future__ import annotations

import shutil

import pytest
import torch

from nmt.config.compose import compose_config
from nmt.decoding.loading import load_model
from nmt.training.average import average_run, main, step_checkpoints
from nmt.training.trainer import train
from tests.test_train import cache_dir, small_run  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(cache_dir, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("avg") / "run"
    train(compose_config(small_run(cache_dir, "trainer.max_steps=6", "trainer.val_every_n_steps=3",
                                   "trainer.checkpoint_every_n_steps=1", "trainer.keep_checkpoints=3")), run_dir)
    return run_dir


def test_only_the_newest_keep_checkpoints_remain(run_dir):
    assert [p.name for p in step_checkpoints(run_dir)] == [f"step-000000{s}.ckpt" for s in (4, 5, 6)]
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))


def test_average_is_the_elementwise_mean_and_loads(run_dir, tmp_path):
    out = average_run(run_dir, last=3, output=tmp_path / "avg")
    states = [torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in step_checkpoints(run_dir)]
    model, tokenizer = load_model(out)
    averaged = model.state_dict()
    for name, value in averaged.items():
        expected = sum(s[f"model.{name}"].double() for s in states) / 3
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(averaged["src_embed.weight"],
                           states[-1]["model.src_embed.weight"])  # really a mix, not the last
    assert tokenizer.vocab_size == model.cfg.vocab_size


def test_average_refuses_what_it_cannot_do(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "--last", "4", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--last 4 asks for more checkpoints than the 3 there" in err and "Traceback" not in err
    assert main([str(tmp_path), "--last", "2"]) == 2
    assert "no step-*.ckpt files" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "important.txt").write_text("keep")
    for output, force, message in [(run_dir, True, f"would replace {step_checkpoints(run_dir)[-2]}"),  # the run
                                   (run_dir / "config.yaml", True, "is a file, not a folder"),
                                   (tmp_path / "mine", False, "already exists; add --force to replace it")]:
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert main([str(run_dir), "--last", "2", "--output", str(output), *["--force"] * force]) == 2
        assert capsys.readouterr().err.startswith(f"nmt average: --output {output}: {message}")
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert main([str(run_dir), "--last", "2", "--output", str(tmp_path / "mine"), "--force"]) == 0
    assert load_model(tmp_path / "mine")[0] is not None and not (tmp_path / "mine" / "important.txt").exists()


def test_average_refuses_checkpoints_of_different_models(run_dir, cache_dir, tmp_path):  # noqa: F811
    other = tmp_path / "other"
    train(compose_config(small_run(cache_dir, "model.d_model=64", "trainer.max_steps=1",
                                   "trainer.checkpoint_every_n_steps=1")), other)
    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir / "checkpoints", mixed / "checkpoints")
    shutil.copy(other / "checkpoints" / "step-0000001.ckpt", mixed / "checkpoints" / "step-0000003.ckpt")
    with pytest.raises(ValueError, match="a different model config"):
        average_run(mixed, last=4)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from nmt.config import ModelConfig
    from nmt.data.tokenizer import TokenizerSettings, load_or_train
    from nmt.model import build_model
    from tests.conftest import multi30k_sample

    tokenizer = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "a", tmp_path_factory.mktemp("s"))
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1)
    return build_model(cfg), tokenizer


def _checkpoints(folder, small_model, bleu_tokenize="none", steps=(1, 2, 3)):
    """A run folder holding only step checkpoints (no config.yaml: copied checkpoints, say)."""
    from tests.checkpoints import save_checkpoint

    model, tokenizer = small_model
    for step in steps:
        torch.manual_seed(step)
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
        save_checkpoint(model, tokenizer, folder / "checkpoints" / f"step-{step:07d}.ckpt", bleu_tokenize, step)
    return folder


def test_average_records_the_checkpoints_bleu_tokenizer(small_model, tmp_path):
    """Issue 24, fault 6: the average took bleu_tokenize from config.yaml only; without it an average of a
    multi30k_tok run was scored with 13a."""
    import json

    from nmt.decoding.loading import load_model_info

    run = _checkpoints(tmp_path / "run", small_model)
    out = average_run(run, last=2)
    assert json.loads((out / "config.json").read_text())["bleu_tokenize"] == "none"
    assert load_model_info(out)[2]["bleu_tokenize"] == load_model_info(step_checkpoints(run)[-1])[2]["bleu_tokenize"]


def test_average_names_the_missing_parameter_and_the_run_folder(small_model, tmp_path, capsys):
    """Issue 24, faults 7 and 2: a checkpoint without one parameter was refused without naming it; no checkpoints
    (or no folder) names the run folder."""
    run = _checkpoints(tmp_path / "run", small_model)
    broken = step_checkpoints(run)[1]
    checkpoint = torch.load(broken, weights_only=True)
    del checkpoint["state_dict"]["model.decoder_layers.0.feed_forward.inner.weight"]
    torch.save(checkpoint, broken)
    assert main([str(run), "--last", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"nmt average: {broken}: weights do not fit the model config (missing "
                                        "parameter decoder_layers.0.feed_forward.inner.weight)"]
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    for folder, message in ((tmp_path / "empty", "no checkpoints to average: no step-*.ckpt files in"),
                            (tmp_path / "nowhere", "no such run folder")):
        assert main([str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"nmt average: {folder}: {message}") and len(err.strip().splitlines()) == 1
