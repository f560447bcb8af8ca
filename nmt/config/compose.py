"""Hydra composition: the dataclass schemas registered, a config composed from overrides and validated, so a wrong
key or type fails at start, named."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nmt.config import SITES, ModelConfig
from nmt.config.train import TrainConfig
from nmt.data.corpora import corpus_dir
from nmt.errors import first_line
from nmt.precision import PRECISIONS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # inside the package: a wheel trains from any directory


def _register_resolvers() -> None:
    """``${corpus:multi30k}``: the folder of a corpus shipped with nmt (nmt.data.corpora), wherever nmt is installed;
    ``${precisions:}``: the trainer.precision values TrainerConfig accepts, for ``nmt train --help`` (the config it
    prints shows only the default, 32-true)."""
    if not OmegaConf.has_resolver("corpus"):
        OmegaConf.register_new_resolver("corpus", lambda name: str(corpus_dir(name)))
    if not OmegaConf.has_resolver("precisions"):
        OmegaConf.register_new_resolver("precisions", lambda: ", ".join(PRECISIONS))


def register_configs() -> None:
    ConfigStore.instance().store(name="nmt_schema", node=TrainConfig)
    _register_resolvers()


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The composed config of ``nmt train <overrides>``, without running anything."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _to_object(node, key: str):
    try:
        return OmegaConf.to_object(node)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


def model_config(cfg: DictConfig) -> ModelConfig:
    """The validated ModelConfig (runs every ``__post_init__`` check; errors name the key)."""
    for site in SITES:
        _to_object(cfg.model.attention[site], f"model.attention.{site}")
    return _to_object(cfg.model, "model")


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The validated TrainConfig; each section is checked on its own first so an error names its key."""
    for section in ("data", "optim", "trainer", "decode"):  # data first: the model's vocab_size comes from it
        _to_object(cfg[section], section)
    model_config(cfg)
    return _to_object(cfg, "config")


def config_error_line(error: BaseException) -> str:
    """One line for a composition/validation error: Hydra's message plus the OmegaConf cause that names the key."""
    parts = []
    while error is not None and len(parts) < 3:
        line = first_line(error)
        if line not in parts:
            parts.append(line.rstrip("."))
        options = getattr(error, "options", None)  # Hydra's MissingConfigException: a group's choices
        if options:
            parts.append(f"options: {', '.join(sorted(options))}")
        error = error.__cause__
    return ": ".join(parts)
