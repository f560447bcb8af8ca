"""`nmt train init_from=DIR`: a fresh run starts from exactly DIR's weights with DIR's sentencepiece model; a model
config that differs is refused in one line before anything heavy loads and before a run folder exists; resume wins
once the run has a checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.config.overrides import check_command_line
from nmt.training.init_from import first_difference, init_from_problem
from tests.conftest import MULTI30K

ROOT = Path(__file__).resolve().parent.parent


def fake_model_dir(path: Path, **model) -> Path:
    """A directory with an exported model's files; only config.json is read by the check."""
    path.mkdir(parents=True, exist_ok=True)
    from nmt.config import ModelConfig  # torch-free

    values = ModelConfig(**model).to_dict()
    (path / "config.json").write_text(json.dumps({"model": values, "bleu_tokenize": None}))
    for name in ("model.safetensors", "spm.model"):
        (path / name).write_bytes(b"")
    return path


def run_args(directory: Path, *extra: str) -> list[str]:
    return ["model=tiny", "data.vocab_size=1000", f"init_from={directory}", *extra]


def test_the_first_differing_field_is_named_with_the_override_that_matches(tmp_path):
    directory = fake_model_dir(tmp_path / "gqa2", vocab_size=1000, d_model=128, n_heads=4, d_ff=256,
                               encoder_layers=4, decoder_layers=4, dropout=0.3,
                               attention={"decoder_self": {"n_kv_heads": 2}, "cross": {"n_kv_heads": 2}})
    problem = check_command_line(run_args(directory))
    assert problem == (f"init_from: model.attention.decoder_self.n_kv_heads is 2 in {directory} but 4 in this run; "
                       "override model.attention.decoder_self.n_kv_heads=2 to match")
    matching = ["model.attention.decoder_self.n_kv_heads=2", "model.attention.cross.n_kv_heads=2"]
    assert check_command_line(run_args(directory, *matching)) is None
    # What changes neither the weights nor the function at inference may differ: dropout, a site's backend.
    assert check_command_line(run_args(directory, *matching, "model.dropout=0.1",
                                       "model.attention.decoder_self.backend=sdpa")) is None
    assert "model.d_ff is 256" in check_command_line(run_args(directory, *matching, "model.d_ff=512"))
    assert check_command_line(run_args(directory, *matching, "data.vocab_size=4000")) == (
        f"init_from: model.vocab_size is 1000 in {directory} but 4000 in this run; override data.vocab_size=1000 to "
        "match (model.vocab_size follows it)")  # the key a user sets, not the one derived from it
    assert check_command_line(run_args(directory, *matching, "data.vocab_size=1000")) is None
    # One model, two spellings: n_kv_heads null means n_heads (`nmt convert all=4` of an MHA model writes 4).
    assert check_command_line(run_args(directory, *matching, "model.attention.encoder_self.n_kv_heads=4")) is None


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    assert check_command_line(run_args(tmp_path / "nowhere")) == (
        f"init_from: {tmp_path / 'nowhere'} is not an exported model directory (missing config.json, "
        "model.safetensors, spm.model)")
    directory = fake_model_dir(tmp_path / "broken")
    (directory / "config.json").write_text("{")
    assert "has no readable model config (JSONDecodeError" in init_from_problem(str(directory), {})
    assert "init_from ('') must name a model directory" in check_command_line(["init_from=''"])


def test_first_difference_covers_keys_on_either_side():
    assert first_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, "model") == ("model.b.c", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "z": 0}, "model") == ("model.z", "<missing>", 0)
    assert first_difference({"a": 1, "new": 0}, {"a": 1}, "model") == ("model.new", 0, "<missing>")
    assert first_difference({"dropout": 0.3, "x": {"backend": "band"}}, {"dropout": 0.1, "x": {"backend": "auto"}},
                            "model") is None


def test_a_mismatch_stops_nmt_train_in_one_line_with_no_run_folder_and_nothing_heavy(tmp_path):
    directory = fake_model_dir(tmp_path / "model", vocab_size=1000, d_model=128, n_heads=4, d_ff=256,
                               encoder_layers=4, decoder_layers=4, dropout=0.3, attention={"cross": {"n_kv_heads": 2}})
    run_dir = tmp_path / "run"
    argv = run_args(directory, f"hydra.run.dir={run_dir}")
    code = (f"import sys; from nmt.training.train import main; code = main({argv!r}); "
            "print(code, [m for m in ('torch', 'lightning', 'datasets') if m in sys.modules])")
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.stdout.strip() == "2 []", process.stderr
    assert process.stderr == (f"nmt train: init_from: model.attention.cross.n_kv_heads is 2 in {directory} but 4 "
                              "in this run; override model.attention.cross.n_kv_heads=2 to match\n")
    assert not run_dir.exists()


# -- the Lightning side --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A model directory whose config is the small run's, with random weights and its own sentencepiece model
    (trained on other sentences than the run would train one on)."""
    from nmt.config.compose import compose_config, to_train_config
    from nmt.data.tokenizer import TokenizerSettings, load_or_train
    from nmt.decoding.export import export_model
    from nmt.model import build_model
    from tests.conftest import multi30k_sample

    root = tmp_path_factory.mktemp("init_from")
    cfg = to_train_config(compose_config(small_run(root / "unused")))
    torch.manual_seed(7)
    tokenizer = load_or_train(lambda: multi30k_sample(1500), TokenizerSettings(1000), "init_from", root / "spm")
    return export_model(build_model(cfg.model), tokenizer, root / "model", extra={"bleu_tokenize": None})


def small_run(cache_dir, *extra):
    """A 1+1-layer model on 2,000 Multi30k pairs: the smallest real run."""
    return [f"data.path={MULTI30K}", f"data.cache_dir={cache_dir}", "data.max_train_examples=2000",
            "data.vocab_size=1000", "data.max_tokens=1024", "model.encoder_layers=1", "model.decoder_layers=1",
            "model.d_model=64", "model.d_ff=128", "trainer.val_max_sentences=10", "trainer.enable_progress_bar=false",
            *extra]


def run_capturing_the_start(monkeypatch, cfg, run_dir):
    """Train, keeping the weights, step and tokenizer the module has when training starts."""
    from nmt.training.lit_module import TranslationModule
    from nmt.training.trainer import train

    seen = {}

    def on_train_start(module):
        seen["state"] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        seen["step"] = module.trainer.global_step
        seen["spm"] = module.trainer.datamodule.tokenizer.serialized

    monkeypatch.setattr(TranslationModule, "on_train_start", on_train_start, raising=False)
    train(cfg, run_dir=run_dir)
    return seen


@pytest.mark.slow
def test_a_run_starts_from_exactly_the_directorys_weights_and_tokenizer(start, tmp_path, monkeypatch):
    from nmt.config.compose import compose_config
    from nmt.decoding.loading import load_model

    cache = tmp_path / "cache"
    cfg = compose_config(small_run(cache, f"init_from={start}", "trainer.fast_dev_run=1"))
    seen = run_capturing_the_start(monkeypatch, cfg, tmp_path / "run")
    model, tokenizer = load_model(start)
    assert seen["step"] == 0 and seen["spm"] == tokenizer.serialized == (start / "spm.model").read_bytes()
    assert seen["state"].keys() == model.state_dict().keys()
    assert all(torch.equal(seen["state"][k], v) for k, v in model.state_dict().items())
    assert not (cache / "spm").exists()  # no sentencepiece model trained for the run


@pytest.mark.slow
def test_resume_wins_over_init_from_once_a_checkpoint_exists(start, tmp_path, monkeypatch):
    from nmt.config.compose import compose_config
    from nmt.decoding.loading import load_model

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = [f"init_from={start}", "resume=true", "trainer.val_every_n_steps=2"]
    first_cfg = compose_config(small_run(cache, *args, "trainer.max_steps=2"))
    first = run_capturing_the_start(monkeypatch, first_cfg, run_dir)
    dir_weights = load_model(start)[0].state_dict()
    assert all(torch.equal(first["state"][k], v) for k, v in dir_weights.items())  # no checkpoint yet: DIR's
    exported = json.loads((run_dir / "model" / "config.json").read_text())
    assert exported["init_from"] == str(start)
    assert load_model(run_dir / "model")[1].serialized == (start / "spm.model").read_bytes()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    after_first = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    second_cfg = compose_config(small_run(cache, *args, "trainer.max_steps=3"))
    second = run_capturing_the_start(monkeypatch, second_cfg, run_dir)
    assert second["step"] == 2 and second["spm"] == first["spm"]
    assert all(torch.equal(second["state"][k], after_first[k]) for k in dir_weights)  # the checkpoint's, not DIR's
    assert any(not torch.equal(second["state"][k], v) for k, v in dir_weights.items())
    # Resumed without init_from: still DIR's tokenizer (the checkpoint's), none trained from the data settings, and
    # the exported model still records where the run started.
    third_cfg = compose_config(small_run(cache, "resume=true", "trainer.val_every_n_steps=2", "trainer.max_steps=4"))
    third = run_capturing_the_start(monkeypatch, third_cfg, run_dir)
    assert third["step"] == 3 and third["spm"] == first["spm"] and not (cache / "spm").exists()
    assert json.loads((run_dir / "model" / "config.json").read_text())["init_from"] == str(start)


def test_resume_from_reads_the_checkpoints_tokenizer_and_start_and_tolerates_older_checkpoints(tmp_path, monkeypatch,
                                                                                              caplog):
    """Unit level: what `resume_from` takes from a checkpoint, with and without the keys older nmt did not write, and
    when it warns that a repeated init_from is ignored (not for the same folder spelled another way)."""
    import logging
    from types import SimpleNamespace

    import torch

    from nmt.data.tokenizer import TokenizerSettings, load_or_train
    from nmt.training import trainer
    from tests.conftest import multi30k_sample

    monkeypatch.setattr(trainer, "check_init_from", lambda cfg: None)  # the model-config check is tested above
    spm = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "resume", tmp_path / "spm")
    (tmp_path / "start").mkdir()
    monkeypatch.chdir(tmp_path)
    for saved, init_from, tokenizer, start, warned in [
        ({}, None, None, None, False),  # older nmt: neither key; the data settings' tokenizer, no record
        ({}, "start", None, "start", False),  # no record in the checkpoint: the command line's, as before
        ({"nmt_init_from": None}, "start", None, None, True),  # began from scratch: a new init_from is ignored
        ({"nmt_spm": torch.frombuffer(bytearray(spm.serialized), dtype=torch.uint8), "nmt_init_from": "start"},
         "./start/", spm.serialized, "start", False),  # the same folder, spelled differently
    ]:
        path = tmp_path / "last.ckpt"
        torch.save(saved, path)
        module = SimpleNamespace(init_from=None)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nmt.training.trainer"):
            got = trainer.resume_from(SimpleNamespace(init_from=init_from), module, path)
        assert (got.serialized if got is not None else None) == tokenizer and module.init_from == start
        assert ("is ignored" in caplog.text) == warned, caplog.text
