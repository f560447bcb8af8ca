"""Training end to end on Multi30k (CPU): learning, exact resume after SIGKILL, DDP, every preset and experiment."""

import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nmt.cli import main as cli_main
from nmt.config.compose import CONF_DIR, compose_config
from nmt.decoding.loading import load_model
from nmt.evaluation.report import read_metrics
from nmt.training.trainer import train
from tests.conftest import MULTI30K

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data_cache")


def small_run(cache_dir, *extra):
    """A quick Multi30k en→de configuration: a 1+1-layer model on 3,000 pairs."""
    return [
        f"data.path={MULTI30K}",
        f"data.cache_dir={cache_dir}",
        "data.max_train_examples=3000",
        "data.vocab_size=1000",
        "data.max_tokens=1024",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.dropout=0.1",
        "optim.warmup_steps=20",
        "optim.lr=0.002",
        "trainer.val_max_sentences=20",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir)


def nmt_train(args, run_dir, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "nmt.cli", "train", *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_tiny_model_learns_multi30k_en_de(cache_dir, tmp_path):
    """The cpu_smoke experiment: 300 steps of a 2+2-layer model on all 29k pairs."""
    cfg = compose_config(["experiment=cpu_smoke", f"data.path={MULTI30K}", f"data.cache_dir={cache_dir}",
                          "trainer.enable_progress_bar=false"])
    run_dir = train(cfg, run_dir=tmp_path / "run")
    rows = [r for r in metrics(run_dir) if r.get("val_loss")]
    losses = [float(r["val_loss"]) for r in rows]
    bleus = [float(r["val_bleu"]) for r in rows]
    assert len(losses) == 3
    uniform = math.log(2000)  # the loss of a model that knows nothing
    assert losses[-1] < 0.6 * uniform, losses
    assert losses[-1] < losses[0] - 0.5, losses
    assert bleus[-1] > 0, bleus
    model, tokenizer = load_model(run_dir / "model")
    assert model.cfg.encoder_layers == 2 and tokenizer.vocab_size == 2000
    throughput = [float(r["tok_per_s"]) for r in metrics(run_dir) if r.get("tok_per_s")]
    assert throughput and min(throughput) > 0

    # Validation BLEU equals `nmt evaluate` BLEU: same (best, exported) model, sentences and decoding settings.
    for lang in ("en", "de"):
        with gzip.open(MULTI30K / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            (tmp_path / f"val.{lang}").write_text("".join(line for _, line in zip(range(200), f)), encoding="utf-8")
    assert cli_main(["evaluate", "--model", str(run_dir / "model"), "--src", str(tmp_path / "val.en"),
                     "--ref", str(tmp_path / "val.de"), "--beam", "1", "--report", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["scores"]["bleu"]
    assert evaluated == pytest.approx(max(bleus), abs=1e-3)

    # The best checkpoint translates exactly like the exported directory (it carries its tokenizer).
    lines = (tmp_path / "val.en").read_text().splitlines()[:5]
    from_ckpt = load_model(run_dir / "checkpoints" / "best.ckpt")
    from nmt.decoding.translate import Translator

    assert Translator(*from_ckpt).translate(lines, beam=2) == Translator(model, tokenizer).translate(lines, beam=2)


def test_sigkilled_run_resumes_to_the_same_parameters(cache_dir, tmp_path):
    args = small_run(cache_dir, "trainer.max_steps=40", "trainer.val_every_n_steps=20",
                     "trainer.checkpoint_every_n_steps=10")
    straight = nmt_train(args, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    killed_dir = tmp_path / "killed"
    victim = nmt_train(args, killed_dir)
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    step = 0
    while step < 20 and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.2)
        if last.exists():
            step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 20 <= step < 40, f"the run was not killed mid-way (step {step})"

    resumed = nmt_train([*args, "resume=true"], killed_dir)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming after epoch" in output
    final = {name: torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for name, d in
             (("straight", tmp_path / "straight"), ("resumed", killed_dir))}
    assert final["straight"]["global_step"] == final["resumed"]["global_step"] == 40
    for name, tensor in final["straight"]["state_dict"].items():
        assert torch.equal(tensor, final["resumed"]["state_dict"][name]), name


def test_a_streaming_run_resumes_in_place(cache_dir, tmp_path):
    """A streaming run stopped after 3 steps and resumed to 6 trains on the same batches as a straight 6-step run; the
    resume starts from the checkpoint's stream state (mid-chunk: 300-pair chunks), not by replaying the stream."""
    args = small_run(cache_dir, "data.streaming=true", "data.stream_buffer=300", "trainer.val_every_n_steps=100",
                     "trace_batches=true")
    straight = nmt_train([*args, "trainer.max_steps=6"], tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    stopped = tmp_path / "stopped"
    first = nmt_train([*args, "trainer.max_steps=3"], stopped)
    assert first.wait(timeout=600) == 0, first.stdout.read()
    resumed = nmt_train([*args, "trainer.max_steps=6", "resume=true"], stopped)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming the stream in place" in output
    traces = [(d / "batch_trace" / "rank0.txt").read_text().split("\n")[:-1] for d in (tmp_path / "straight", stopped)]
    assert len(traces[0]) == 6 and traces[0] == traces[1]


def test_a_sharded_stream_under_ddp_resumes_each_rank_in_place(cache_dir, tmp_path):
    """2 CPU processes stream a 4-shard corpus (2 files each), stop after 3 steps and resume to 5: each rank resumes
    from its own stream state (gathered into the checkpoint) by seeking its own shard files, the ranks' batches stay
    disjoint, none is repeated."""
    from nmt.data.synthetic import SyntheticCorpus, write_corpus

    corpus = tmp_path / "corpus"
    write_corpus(corpus, SyntheticCorpus(pairs=2000, valid=20, test=20, shards=4))
    args = [*small_run(cache_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trace_batches=true",
                       "data.streaming=true", "data.stream_buffer=300", "trainer.val_every_n_steps=100"),
            "data=local", f"data.path={corpus}", "data.splits.train=train.*", "data.max_len=250",
            "data.max_train_examples=null"]  # a `take` would resume from datasets' state instead
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "ddp"
    first = nmt_train([*args, "trainer.max_steps=3"], run_dir, env=env)
    assert first.wait(timeout=600) == 0, first.stdout.read()
    resumed = nmt_train([*args, "trainer.max_steps=5", "resume=true"], run_dir, env=env)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "not a multiple" not in output
    # Each rank resumes at its own position, in its own shards (in pass 0, rank 0 reads shards 0 and 2, rank 1
    # shards 1 and 3).
    for rank, shards in ((0, "02"), (1, "13")):
        assert re.search(rf"resuming the stream in place for rank {rank} of 2 at epoch 0 batch \d+ by seeking: shard "
                         rf"[{shards}] after line", output), output
    traces = [[line.split() for line in (run_dir / "batch_trace" / f"rank{r}.txt").read_text().split("\n")[:-1]]
              for r in (0, 1)]
    for trace in traces:
        assert [(int(e), int(i)) for _, e, i, _ in trace] == [(0, i) for i in range(5)]  # on in order, none again
    assert not {t[3] for t in traces[0]} & {t[3] for t in traces[1]}


def test_ddp_on_cpu_two_processes(cache_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    args = small_run(cache_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=6",
                     "trainer.val_every_n_steps=3", "trace_batches=true")
    process = nmt_train(args, run_dir, env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run directory
    assert (run_dir / "model" / "model.safetensors").exists()
    traces = [(run_dir / "batch_trace" / f"rank{r}.txt").read_text().split("\n")[:-1] for r in (0, 1)]
    assert [len(t) for t in traces] == [6, 6]
    digests = [{line.split()[3] for line in t} for t in traces]
    assert not digests[0] & digests[1], "the two ranks trained on the same batches"


ATTENTION_PRESETS = sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(
    "choice",
    [f"attention={a}" for a in ATTENTION_PRESETS] + [f"experiment={e}" for e in EXPERIMENTS] + ["data.streaming=true"],
)
def test_every_preset_and_experiment_runs_a_fast_dev_run_step(choice, cache_dir, tmp_path):
    steps = 3 if choice.startswith("experiment=") else 1  # experiments: a few steps, so their configs cannot rot
    cfg = compose_config([choice, *small_run(cache_dir, f"trainer.fast_dev_run={steps}")])
    if choice == "attention=flash":
        with pytest.raises(Exception, match="backend 'flash' needs a CUDA device"):
            train(cfg, run_dir=tmp_path)
        return
    train(cfg, run_dir=tmp_path)
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("has_bf16, picked", [(True, "bf16-mixed"), (False, "32-true")])
def test_precision_auto_trains_in_what_the_cpu_flags_allow(has_bf16, picked, cache_dir, tmp_path, monkeypatch,
                                                           caplog):
    """trainer.precision=auto says what it picked, trains in it (bf16-mixed: the fused loss runs its products in bf16
    and auto attention picks matmul, tests/test_loss.py and tests/attention/test_dispatch.py) and records it in
    config.yaml."""
    monkeypatch.setattr("nmt.precision.cpu_bf16", lambda: (has_bf16, "flags of a test CPU"))
    cfg = compose_config(small_run(cache_dir, "trainer.fast_dev_run=2", "trainer.precision=auto"))
    with caplog.at_level("INFO", logger="nmt.training.trainer"):
        train(cfg, run_dir=tmp_path)
    assert f"trainer.precision=auto: {picked} (flags of a test CPU)" in caplog.text
    assert f"precision: {picked}" in (tmp_path / "config.yaml").read_text()
    assert cfg.trainer.precision == "auto"  # the caller's config is not changed
    if has_bf16:  # the same run resumed on a machine without bf16: it says the precision changes
        monkeypatch.setattr("nmt.precision.cpu_bf16", lambda: (False, "another CPU"))
        caplog.clear()
        with caplog.at_level("INFO", logger="nmt.training.trainer"):
            train(compose_config(small_run(cache_dir, "trainer.fast_dev_run=1", "trainer.precision=auto",
                                           "resume=true")), run_dir=tmp_path)
        assert "picks 32-true on this machine, but this run trained in bf16-mixed" in caplog.text
        caplog.clear()  # resumed again without trainer.precision: the default, 32-true, and the record says so
        with caplog.at_level("INFO", logger="nmt.training.trainer"):
            train(compose_config(small_run(cache_dir, "trainer.fast_dev_run=1", "resume=true")), run_dir=tmp_path)
        assert "trainer.precision is 32-true, but this run trained in bf16-mixed until now" not in caplog.text
        (tmp_path / "config.yaml").write_text((tmp_path / "config.yaml").read_text().replace(
            "precision: 32-true", "precision: bf16-mixed"))  # as a bf16 run wrote it
        with caplog.at_level("INFO", logger="nmt.training.trainer"):
            train(compose_config(small_run(cache_dir, "trainer.fast_dev_run=1", "resume=true")), run_dir=tmp_path)
        assert "trainer.precision is 32-true, but this run trained in bf16-mixed until now" in caplog.text


@pytest.mark.parametrize("precision", ["16-mixed", "16"])
def test_fp16_mixed_precision_on_a_cpu_is_refused_before_training(precision, cache_dir, tmp_path):
    """Lightning would run bf16-mixed instead on a CPU while config.yaml recorded fp16: one line naming the key."""
    cfg = compose_config(small_run(cache_dir, "trainer.fast_dev_run=1", "trainer.accelerator=cpu",
                                   f"trainer.precision={precision}"))
    with pytest.raises(ValueError, match=rf"trainer.precision={precision}: fp16 mixed precision needs a CUDA GPU"):
        train(cfg, run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_multirun_gives_one_run_directory_per_variant(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    process = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "train", "-m", "attention=mha,mqa",
         *small_run(cache_dir, "trainer.fast_dev_run=1"), f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1"]
    assert ["- attention=mha" in (p / ".hydra" / "overrides.yaml").read_text() for p in runs] == [True, False]
    assert all((p / "config.yaml").exists() for p in runs)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.max_tokens=abc", "data.max_tokens"),
        ("trainer.max_stepz=3", "max_stepz"),
        ("data.vocab_size=0", r"data.vocab_size \(0\) must be >= 1"),
        ("data=wmt14_en_de", "cannot reach the Hugging Face Hub"),
    ],
)
def test_bad_training_configs_fail_at_start_with_one_line(override, message, cache_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # really try the (unreachable) Hub
    start = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "train", override, f"data.cache_dir={cache_dir}",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert process.returncode != 0
    assert __import__("re").search(message, process.stderr), process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    assert time.monotonic() - start < 60


def test_checkpoints_logs_and_validation_cadence(cache_dir, tmp_path):
    """last.ckpt after every validation and at the very end; validation every val_every_n_steps and after the last
    update; a resumed run keeps the earlier logs; validation counts optimizer steps under gradient accumulation."""
    run_dir = tmp_path / "run"
    train(compose_config(small_run(cache_dir, "trainer.max_steps=5", "trainer.val_every_n_steps=2")), run_dir)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 5
    train(compose_config(small_run(cache_dir, "trainer.max_steps=7", "trainer.val_every_n_steps=2", "resume=true")),
          run_dir)
    rows = metrics(run_dir)
    assert [int(r["step"]) + 1 for r in rows if r.get("val_loss")] == [2, 4, 5, 6, 7]  # and after the last update
    assert (run_dir / "logs" / "version_0").is_dir() and (run_dir / "logs" / "version_1").is_dir()
    # Another checkpoint spacing on resume gives the periodic callback a new state key; last.ckpt is still overwritten
    # (no last-v1.ckpt beside a stale one), so the next resume continues from step 9, not from 7.
    train(compose_config(small_run(cache_dir, "trainer.max_steps=9", "trainer.val_every_n_steps=2", "resume=true",
                                   "trainer.checkpoint_every_n_steps=1")), run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*-v*.ckpt")) == []
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 9
    train(compose_config(small_run(cache_dir, "trainer.max_steps=10", "trainer.val_every_n_steps=2", "resume=true",
                                   "trainer.checkpoint_every_n_steps=2")), run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*-v*.ckpt")) == []
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 10
    accumulated = tmp_path / "accumulated"
    train(compose_config(small_run(cache_dir, "trainer.max_steps=4", "trainer.val_every_n_steps=2",
                                   "trainer.accumulate_grad_batches=2")), accumulated)
    assert [int(r["step"]) + 1 for r in metrics(accumulated) if r.get("val_loss")] == [2, 4]
