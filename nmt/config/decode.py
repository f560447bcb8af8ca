"""How to decode: the one dataclass behind `nmt translate`'s and `nmt evaluate`'s flags (nmt.decoding.flags) and
validation's greedy search. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass


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
