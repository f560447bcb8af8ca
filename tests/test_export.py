"""Checkpoints and exported model directories are written atomically and load without unpickling objects."""

import os

import pytest
import torch

from nmt.config import ModelConfig
from nmt.data.tokenizer import TokenizerSettings, load_or_train
from nmt.decoding.export import export_model
from nmt.decoding.loading import load_model
from nmt.model import build_model
from nmt.training.trainer import AtomicCheckpointIO
from tests.conftest import multi30k_sample


def test_checkpoint_write_is_all_or_nothing(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "export",
                         tmp_path_factory.mktemp("spm"))


def test_exported_directory_round_trips(tmp_path, tokenizer):
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1,
                      positions="rope", attention={"encoder_self": {"window": 4}, "cross": {"n_kv_heads": 1}})
    model = build_model(cfg).eval()
    directory = export_model(model, tokenizer, tmp_path / "model", extra={"checkpoint": "best.ckpt"})
    loaded, loaded_tokenizer = load_model(directory)
    assert loaded.cfg == cfg and '"checkpoint": "best.ckpt"' in (directory / "config.json").read_text()
    assert loaded.output.weight is loaded.src_embed.weight  # tying survives safetensors
    src = torch.randint(4, 400, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(src, torch.tensor([7, 3]), src), model(src, torch.tensor([7, 3]), src))
    assert loaded_tokenizer.encode(["A dog."]) == tokenizer.encode(["A dog."])


def test_re_export_replaces_the_directory_whole(tmp_path, tokenizer, monkeypatch):
    cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1)
    first = build_model(cfg)
    export_model(first, tokenizer, tmp_path / "model")
    import nmt.decoding.export

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nmt.decoding.export, "save_model", failing_save)
    with pytest.raises(OSError):
        export_model(build_model(cfg), tokenizer, tmp_path / "model")
    loaded, _ = load_model(tmp_path / "model")  # the first export, intact
    assert torch.equal(loaded.src_embed.weight, first.src_embed.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directories left


@pytest.mark.parametrize("failing, calls_made", [(1, 1), (2, 3)])  # the move aside; the swap (then the move back)
def test_a_failed_rename_leaves_the_old_directory_whole_and_nothing_beside_it(failing, calls_made, tmp_path,
                                                                             monkeypatch):
    import os

    from nmt.decoding.export import write_directory

    target = tmp_path / "model"
    write_directory(target, lambda tmp: (tmp / "f").write_text("old"))
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == failing:
            raise OSError("simulated failure of a rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        write_directory(target, lambda tmp: (tmp / "f").write_text("new"))
    monkeypatch.undo()
    assert (target / "f").read_text() == "old" and len(calls) == calls_made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    write_directory(target, lambda tmp: (tmp / "f").write_text("new"))  # and a working swap replaces it
    assert (target / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_file_in_the_way_is_refused_and_kept(tmp_path):
    from nmt.decoding.export import write_directory

    (tmp_path / "afile").write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        write_directory(tmp_path / "afile", lambda tmp: (tmp / "f").write_text("new"))
    assert (tmp_path / "afile").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["afile"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_models_checkpoints_and_tokenizers_get_the_umasks_modes(umask, tmp_path, tokenizer):
    """tempfile makes its files 0600 and folders 0700, and a rename keeps them: a model saved on a shared machine
    was readable by its owner only. Everything written atomically gets what open() and mkdir() would give."""
    import stat

    from nmt.data.tokenizer import TokenizerSettings, load_or_train

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    previous = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "run" / "last.ckpt")
        cfg = ModelConfig(vocab_size=400, d_model=32, n_heads=4, d_ff=64, encoder_layers=1, decoder_layers=1)
        model_dir = export_model(build_model(cfg), tokenizer, tmp_path / "model")
        spm_file = load_or_train(lambda: multi30k_sample(300), TokenizerSettings(400), "modes",
                                  tmp_path / "spm").model_file
    finally:
        os.umask(previous)
    assert mode(tmp_path / "run" / "last.ckpt") == 0o666 & ~umask
    assert mode(model_dir) == 0o777 & ~umask
    assert {p.name: mode(p) for p in model_dir.iterdir()} == {name: 0o666 & ~umask
                                                              for name in ("config.json", "model.safetensors",
                                                                           "spm.model")}
    assert mode(spm_file) == 0o666 & ~umask
