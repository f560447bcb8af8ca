"""``nmt train init_from=DIR``: a run that starts from an exported model directory's weights and sentencepiece model
(fine-tuning; uptraining after `nmt convert`), with a new optimizer and schedule from step 0.

The run's model config must be the directory's: this module compares the two dicts, each site's heads resolved
(n_kv_heads null is n_heads), and names the first field that differs, reading only DIR/config.json, so
`nmt.config.overrides` refuses a mismatch before torch loads and before a run folder exists. Fields that change neither
the parameters nor what the model computes at inference — ``dropout`` and each site's ``backend`` — may differ
(fine-tune with less dropout, uptrain on CUDA with flash a model trained on CPU). With ``resume=true`` and a run folder
that already holds checkpoints/last.ckpt, the checkpoint wins: init_from only sets the starting point of a fresh run
(its tokenizer stays the run's). Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from nmt.config import SITES, ModelConfig

# The exported directory's files (nmt.decoding.export's names; that module imports torch).
MODEL_FILES = ("config.json", "model.safetensors", "spm.model")
FREE_FIELDS = ("dropout", "backend")  # leaf names that may differ between DIR's model and the run's


def first_difference(theirs: Any, ours: Any, key: str) -> Optional[tuple[str, Any, Any]]:
    """(dotted key, DIR's value, the run's value) of the first field that differs, in the run's field order, or
    None. A key missing on one side shows as ``<missing>``."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in [*ours, *(k for k in theirs if k not in ours)]:
            if name in FREE_FIELDS:
                continue
            found = first_difference(theirs.get(name, "<missing>"), ours.get(name, "<missing>"), f"{key}.{name}")
            if found is not None:
                return found
        return None
    return None if theirs == ours else (key, theirs, ours)


def resolved(model: dict[str, Any]) -> dict[str, Any]:
    """A model config dict with every site's n_heads and n_kv_heads filled in (null n_kv_heads means n_heads), so
    two spellings of one model compare equal. ValueError where the dict is no valid ModelConfig."""
    cfg = ModelConfig.from_dict(model)
    values = cfg.to_dict()
    values["attention"] = {site: asdict(cfg.site(site)) for site in SITES}
    return values


def _shown(value: Any) -> str:
    return value if value == "<missing>" else json.dumps(value)  # as an override would write it: null, 2, "band"


def init_from_problem(directory: str, model: dict[str, Any]) -> Optional[str]:
    """Why a run whose model config is ``model`` (``ModelConfig.to_dict()``) cannot start from ``directory``, or
    None: files missing, an unreadable config.json, or the first model field that differs."""
    path = Path(directory)
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        return f"init_from: {path} is not an exported model directory (missing {', '.join(missing)})"
    try:
        theirs = resolved(json.loads((path / MODEL_FILES[0]).read_text())["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        return f"init_from: {path / MODEL_FILES[0]} has no readable model config ({type(error).__name__}: {error})"
    found = first_difference(theirs, resolved(model), "model")
    if found is None:
        return None
    key, their_value, our_value = found
    hint = f"; override {key}={_shown(their_value)} to match" if their_value != "<missing>" else ""
    if key == "model.vocab_size" and their_value != "<missing>":  # nmt train's model.vocab_size is ${data.vocab_size}
        hint = f"; override data.vocab_size={_shown(their_value)} to match (model.vocab_size follows it)"
    return f"init_from: {key} is {_shown(their_value)} in {path} but {_shown(our_value)} in this run{hint}"


def check_init_from(cfg: Any) -> None:
    """Raise ValueError (one line) when ``cfg`` (a TrainConfig) sets init_from to a directory it cannot start from."""
    if cfg.init_from is not None:
        problem = init_from_problem(cfg.init_from, cfg.model.to_dict())
        if problem is not None:
            raise ValueError(problem)
