"""``nmt average``: the mean of the last N periodic checkpoints, exported as a loadable model directory."""

from __future__ import annotations

import shutil

import pytest
import torch

from nmt.average import average_run, main, step_checkpoints
from nmt.loading import load_model
from nmt.schema import compose_config
from nmt.trainer import train
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
    assert not torch.equal(averaged["src_embed.weight"], states[-1]["model.src_embed.weight"])  # really a mix, not the last
    assert tokenizer.vocab_size == model.cfg.vocab_size


def test_average_refuses_what_it_cannot_do(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "--last", "4", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--last 4 asks for more checkpoints than the 3 there" in err and "Traceback" not in err
    assert main([str(tmp_path), "--last", "2"]) == 2
    assert "no step-*.ckpt files" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_average_refuses_checkpoints_of_different_models(run_dir, cache_dir, tmp_path):  # noqa: F811
    other = tmp_path / "other"
    train(compose_config(small_run(cache_dir, "model.d_model=64", "trainer.max_steps=1",
                                   "trainer.checkpoint_every_n_steps=1")), other)
    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir / "checkpoints", mixed / "checkpoints")
    shutil.copy(other / "checkpoints" / "step-0000001.ckpt", mixed / "checkpoints" / "step-0000003.ckpt")
    with pytest.raises(ValueError, match="a different model config"):
        average_run(mixed, last=4)
