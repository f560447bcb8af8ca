"""Typed model configuration: the single source of truth, validated before any work. Imports no torch, so `nmt train`
can check a config before loading the heavy libraries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from nmt.attention.backends import site_problem
from nmt.attention.config import AttentionConfig

SITES = ("encoder_self", "decoder_self", "cross")
NORMS = ("pre", "post")
POSITIONS = ("sinusoidal", "rope")
ACTIVATIONS = ("relu", "gelu")


@dataclass
class AttentionSites:
    """One AttentionConfig per site, chosen independently."""

    encoder_self: AttentionConfig = field(default_factory=AttentionConfig)
    decoder_self: AttentionConfig = field(default_factory=AttentionConfig)
    cross: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        for site in SITES:
            value = getattr(self, site)
            if isinstance(value, dict):
                setattr(self, site, AttentionConfig(**value))


@dataclass
class ModelConfig:
    """Encoder–decoder Transformer hyperparameters.

    ``tgt_vocab_size = None`` means one joint vocabulary for source and target; with ``tie_embeddings`` the encoder
    embedding, decoder embedding and output projection then share one matrix. Embedding rows are padded up to a
    multiple of ``vocab_pad_multiple`` because GEMMs with an odd output width (8001) run ~30% slower.
    """

    vocab_size: int = 8000
    tgt_vocab_size: Optional[int] = None
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1
    activation: str = "relu"
    norm: str = "pre"
    positions: str = "sinusoidal"
    tie_embeddings: bool = True
    bias: bool = True
    pad_id: int = 0
    vocab_pad_multiple: int = 64
    attention: AttentionSites = field(default_factory=AttentionSites)

    def __post_init__(self) -> None:
        if isinstance(self.attention, dict):
            self.attention = AttentionSites(**self.attention)
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.tgt_vocab_size is not None and self.tgt_vocab_size < 1:
            raise ValueError(f"tgt_vocab_size ({self.tgt_vocab_size}) must be >= 1, or null for a joint vocabulary")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        for name, value, allowed in (
            ("norm", self.norm, NORMS),
            ("positions", self.positions, POSITIONS),
            ("activation", self.activation, ACTIVATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} ({value!r}) must be one of {', '.join(allowed)}")
        if not 0 <= self.pad_id < min(self.vocab_size, self.target_vocab_size):
            raise ValueError(f"pad_id ({self.pad_id}) must be a token id below vocab_size ({self.vocab_size})")
        if self.vocab_pad_multiple < 1:
            raise ValueError(f"vocab_pad_multiple ({self.vocab_pad_multiple}) must be >= 1")
        for site in SITES:
            resolved = self.site(site)
            if self.d_model % resolved.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by attention.{site}.n_heads ({resolved.n_heads})"
                )
            head_dim = self.d_model // resolved.n_heads
            if self.positions == "rope" and site != "cross" and head_dim % 2:
                raise ValueError(f"positions 'rope' needs an even head_dim; attention.{site} has {head_dim}")
            problem = site_problem(resolved.backend, window=resolved.window, cross=site == "cross")
            if problem is not None:
                raise ValueError(f"attention.{site}: {problem}")

    def site(self, name: str) -> AttentionConfig:
        """The attention config of one site with the model's n_heads filled in where the site leaves it unset."""
        try:
            return getattr(self.attention, name).resolve(self.n_heads)  # re-validates with n_heads known
        except ValueError as error:
            raise ValueError(f"attention.{name}: {error}") from None

    def variants(self) -> dict[str, str]:
        """The variant name of each site, e.g. {'encoder_self': 'mha+window-8', …}."""
        return {site: self.site(site).variant for site in SITES}

    @property
    def target_vocab_size(self) -> int:
        return self.vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    @property
    def shared_vocab(self) -> bool:
        return self.tgt_vocab_size is None or self.tgt_vocab_size == self.vocab_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**values)
