"""An update accumulated from micro-batches (and spread over DDP ranks) has the gradient of one batch holding them all:
the summed token loss over the update's target tokens, fairseq's normalisation (issue 24, fault 5)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.accumulation import batch, fit, module, oracle, relative_error, sentences

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_accumulated_gradient_equals_the_gradient_of_the_concatenated_batch(accumulate):
    parts = sentences()[:accumulate]
    captured = module()
    trainer = fit(captured, [batch([p], i) for i, p in enumerate(parts)], accumulate, gradient_clip_val=1.0)
    want, loss = oracle(parts)
    # What gradient clipping (and then the optimizer) receives; it fails by 1e-2..1e-1 when each micro-batch is its
    # own per-token mean and Lightning averages the means (the token counts here differ up to 12-fold).
    assert relative_error(captured.captured, want) <= 1e-6
    # The logged training loss is the update's per-token mean over all its micro-batches.
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(loss, rel=1e-6)


def test_the_old_normalisation_would_fail_this_check():
    """The check can fail: the mean of the two micro-batches' per-token means is not the concatenation's gradient."""
    parts = sentences()[:2]
    first, _ = oracle(parts[:1])
    second, _ = oracle(parts[1:])
    want, _ = oracle(parts)
    mean_of_means = {name: (first[name] + second[name]) / 2 for name in want}
    assert relative_error(mean_of_means, want) > 1e-2


@pytest.mark.slow
def test_ddp_ranks_with_accumulation_equal_one_batch_of_everything(tmp_path):
    """Two CPU processes (gloo), two micro-batches each, of different token counts: both ranks step with the gradient
    of one batch holding all four micro-batches."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "tests/accumulation.py", str(tmp_path), "2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    want, _ = oracle(sentences())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["rank"] == rank
        assert relative_error(got["grad"], want) <= 1e-6, rank
