"""Typed model and decoding configuration: the single source of truth, validated before any work. Imports no torch,
so `nmt train` can check a config before loading the heavy libraries."""

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


@dataclass
class DecodeConfig:
    """How to decode. ``length_penalty`` is GNMT's α: a hypothesis scores log P / ((5 + len) / 6)^α."""

    beam: int = 1
    nbest: int = 1
    length_penalty: float = 0.6
    max_len_a: float = 1.2
    max_len_b: int = 10
    min_len: int = 0
    sampling: bool = False
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Every message names each field as decode.<field>: `nmt train` shows it as the config key, and `nmt
        # translate` / `nmt evaluate` turn it into their flag (decode.max_len_b → --max-len-b).
        checks = (
            (self.beam < 1, f"decode.beam ({self.beam}) must be >= 1"),
            (not 1 <= self.nbest <= self.beam,
             f"decode.nbest ({self.nbest}) must be in [1, decode.beam ({self.beam})]"),
            (self.max_len_a < 0, f"decode.max_len_a ({self.max_len_a}) must be >= 0"),
            (self.max_len_b < 1, f"decode.max_len_b ({self.max_len_b}) must be >= 1"),
            (self.min_len < 0, f"decode.min_len ({self.min_len}) must be >= 0"),
            (self.sampling and self.beam != 1,
             f"decode.sampling draws one hypothesis: it needs decode.beam 1 (got {self.beam})"),
            (self.top_k < 0, f"decode.top_k ({self.top_k}) must be >= 0"),
            (not 0 < self.top_p <= 1, f"decode.top_p ({self.top_p}) must be in (0, 1]"),
            (self.temperature <= 0, f"decode.temperature ({self.temperature}) must be > 0"),
        )
        for failed, message in checks:
            if failed:
                raise ValueError(message)
