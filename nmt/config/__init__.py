"""Typed configuration, checked before any work: the model (``model.py``), decoding (``decode.py``), a training run
(``train.py``: data, optimisation, trainer), their Hydra composition (``compose.py``) and the check of `nmt train`'s
command line (``overrides.py``). The YAML presets they compose are in ``nmt/conf/``. Nothing here imports torch."""

from nmt.config.decode import DecodeConfig
from nmt.config.model import SITES, AttentionSites, ModelConfig

__all__ = ["SITES", "AttentionSites", "DecodeConfig", "ModelConfig"]
