"""Load a model for inference from an exported directory or a Lightning checkpoint, refusing anything unsafe or
inconsistent with one line that names the file (and the parameter, where one is missing, extra or misshapen).

Both carry the same facts beside the weights, so every command treats them alike: the model config, the
sentencepiece model, and the run's sacreBLEU tokenizer (``bleu_tokenize``: an exported ``config.json`` key; a
checkpoint's ``hyper_parameters``)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_model as load_safetensors

from nmt.config import ModelConfig
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.export import CONFIG, SPM, WEIGHTS
from nmt.errors import first_line
from nmt.model import Seq2Seq, build_model

SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch.Size\(\[(.*?)\]\) from "
                           r"checkpoint, the shape in current model is torch.Size\(\[(.*?)\]\)")


class ModelLoadError(ValueError):
    """The model directory or checkpoint cannot be used; the message says which file and why."""


def _mismatch(missing: list[str], unexpected: list[str], error: Optional[BaseException] = None) -> Optional[str]:
    """What keeps a state dict from fitting the model, naming the first parameter concerned, or None."""
    if missing:
        return f"missing parameter {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    if unexpected:
        return (f"unexpected parameter {unexpected[0]}"
                + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    if error is not None:  # torch lists size mismatches one per line, after a generic first line
        found = SIZE_MISMATCH.search(str(error))
        if found is None:
            return first_line(error)
        name, stored, expected = found.groups()
        return f"parameter {name} has shape ({stored}) in the file but ({expected}) in the model config"
    return None


def _build(cfg_dict: dict, where: Path) -> Seq2Seq:
    try:
        return build_model(ModelConfig.from_dict(cfg_dict))
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{where}: invalid model config ({first_line(error)})") from None


def _from_directory(path: Path) -> tuple[Seq2Seq, Tokenizer, dict]:
    missing = [name for name in (CONFIG, WEIGHTS, SPM) if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(f"{path}: not an exported model directory (missing {', '.join(missing)})")
    try:
        payload = json.loads((path / CONFIG).read_text())
        cfg = payload["model"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path / CONFIG}: unreadable config ({first_line(error)})") from None
    model = _build(cfg, path / CONFIG)
    try:
        missing, unexpected = load_safetensors(model, str(path / WEIGHTS), strict=False)
        problem = _mismatch(sorted(missing), sorted(unexpected))
    except RuntimeError as error:  # torch's size mismatch
        problem = _mismatch([], [], error)
    except Exception as error:  # safetensors raises its own error types for truncated or corrupted files
        raise ModelLoadError(f"{path / WEIGHTS}: truncated, corrupted or not this model's weights "
                             f"({first_line(error)})") from None
    if problem:
        raise ModelLoadError(f"{path / WEIGHTS}: weights do not fit the model config ({problem})")
    try:
        tokenizer = Tokenizer(path / SPM)
    except (OSError, RuntimeError) as error:
        raise ModelLoadError(f"{path / SPM}: not a sentencepiece model ({first_line(error)})") from None
    return model, tokenizer, {key: value for key, value in payload.items() if key != "model"}


def _from_checkpoint(path: Path) -> tuple[Seq2Seq, Tokenizer, dict]:
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
        raise ModelLoadError(f"{path}: not an nmt training checkpoint "
                             "(no model config, weights or tokenizer)") from None
    model = _build(cfg, path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        problem = _mismatch(sorted(missing), sorted(unexpected))
    except RuntimeError as error:
        problem = _mismatch([], [], error)
    if problem:
        raise ModelLoadError(f"{path}: weights do not fit the model config ({problem})")
    # What an export from this checkpoint writes beside the model config (nmt.training.trainer.export_best).
    info = {"checkpoint": path.name, "bleu_tokenize": checkpoint["hyper_parameters"].get("bleu_tokenize")}
    return model, Tokenizer.from_serialized(bytes(serialized.numpy().tobytes())), info


def load_model_info(path: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Tokenizer, dict]:
    """(model in eval mode on ``device``, tokenizer, info) from an exported directory or a training checkpoint.
    ``info`` holds what the run recorded beside the weights: ``bleu_tokenize`` (None: sacreBLEU's 13a) and
    ``checkpoint`` (the file the weights came from). ModelLoadError (one line naming the file) otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model directory or checkpoint")
    model, tokenizer, info = _from_directory(path) if path.is_dir() else _from_checkpoint(path)
    expected = model.cfg.vocab_size
    if tokenizer.vocab_size != expected or model.cfg.target_vocab_size != expected:
        raise ModelLoadError(
            f"{path}: the sentencepiece model has {tokenizer.vocab_size} pieces but the model's vocabulary is "
            f"{expected}: they do not belong together"
        )
    return model.to(device).eval(), tokenizer, info


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, Tokenizer]:
    """(model in eval mode on ``device``, tokenizer): ``load_model_info`` without the info."""
    model, tokenizer, _ = load_model_info(path, device)
    return model, tokenizer
