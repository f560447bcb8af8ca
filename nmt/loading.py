"""Load a model for inference from an exported directory or a Lightning checkpoint, refusing anything unsafe or
inconsistent with one line that names the file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_model as load_safetensors

from nmt.config import ModelConfig
from nmt.errors import first_line
from nmt.export import CONFIG, SPM, WEIGHTS
from nmt.model import Seq2Seq, build_model
from nmt.tokenizer import Tokenizer


class ModelLoadError(ValueError):
    """The model directory or checkpoint cannot be used; the message says which file and why."""


def _build(cfg_dict: dict, where: Path) -> Seq2Seq:
    try:
        return build_model(ModelConfig.from_dict(cfg_dict))
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{where}: invalid model config ({first_line(error)})") from None


def _from_directory(path: Path) -> tuple[Seq2Seq, Tokenizer]:
    missing = [name for name in (CONFIG, WEIGHTS, SPM) if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(f"{path}: not an exported model directory (missing {', '.join(missing)})")
    try:
        payload = json.loads((path / CONFIG).read_text())
        cfg = payload["model"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path / CONFIG}: unreadable config ({first_line(error)})") from None
    model = _build(cfg, path / CONFIG)
    try:
        load_safetensors(model, str(path / WEIGHTS))
    except Exception as error:  # safetensors raises its own error types for truncated or corrupted files
        raise ModelLoadError(f"{path / WEIGHTS}: truncated, corrupted or not this model's weights "
                             f"({first_line(error)})") from None
    try:
        tokenizer = Tokenizer(path / SPM)
    except (OSError, RuntimeError) as error:
        raise ModelLoadError(f"{path / SPM}: not a sentencepiece model ({first_line(error)})") from None
    return model, tokenizer


def _from_checkpoint(path: Path) -> tuple[Seq2Seq, Tokenizer]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(f"{path}: refused: it holds pickled objects other than tensors and plain config "
                             f"({first_line(error)[:200]})") from None
    except Exception as error:
        raise ModelLoadError(f"{path}: truncated or corrupted checkpoint ({first_line(error)})") from None
    try:
        cfg = checkpoint["hyper_parameters"]["model"]
        state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        serialized = checkpoint["nmt_spm"]
    except (KeyError, TypeError):
        raise ModelLoadError(f"{path}: not an nmt training checkpoint (no model config, weights or tokenizer)") from None
    model = _build(cfg, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelLoadError(f"{path}: weights do not fit the model config ({first_line(error)})") from None
    return model, Tokenizer.from_serialized(bytes(serialized.numpy().tobytes()))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Tokenizer]:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model directory or checkpoint")
    model, tokenizer = _from_directory(path) if path.is_dir() else _from_checkpoint(path)
    expected = model.cfg.vocab_size
    if tokenizer.vocab_size != expected or model.cfg.target_vocab_size != expected:
        raise ModelLoadError(
            f"{path}: the sentencepiece model has {tokenizer.vocab_size} pieces but the model's vocabulary is "
            f"{expected}: they do not belong together"
        )
    return model.to(device).eval(), tokenizer
