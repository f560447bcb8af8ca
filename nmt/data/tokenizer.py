"""One joint sentencepiece model for source and target, trained on the training split and cached by content."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import sentencepiece as spm

from nmt.files import publish_modes

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class TokenizerSettings:
    vocab_size: int
    model_type: str = "bpe"
    character_coverage: float = 1.0
    max_sentences: int = 2_000_000

    def key(self, corpus_fingerprint: str) -> str:
        payload = json.dumps({"settings": self.__dict__, "corpus": corpus_fingerprint}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Tokenizer:
    """Text ↔ subword ids. Ids 0–3 are pad, unk, bos, eos; byte fallback keeps unseen characters out of <unk>."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_file: str | Path | None, serialized: bytes | None = None) -> None:
        self.model_file = Path(model_file) if model_file is not None else None
        if serialized is None:
            serialized = Path(model_file).read_bytes()
        self.serialized = serialized
        self.sp = spm.SentencePieceProcessor(model_proto=serialized)

    @classmethod
    def from_serialized(cls, serialized: bytes) -> "Tokenizer":
        return cls(None, serialized)

    # Pickled (and hashed by `datasets` for its map cache) as the model's bytes alone: the same sentencepiece model
    # read from a file, a model directory or a checkpoint encodes alike, so it reuses one cached encoding.
    def __getstate__(self) -> dict:
        return {"serialized": self.serialized}

    def __setstate__(self, state: dict) -> None:
        self.__init__(None, state["serialized"])

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)


class TokenizerError(ValueError):
    """sentencepiece could not train a model with these settings on this corpus (one line saying why)."""


def train_tokenizer(sentences: Iterable[str], settings: TokenizerSettings, model_file: Path) -> None:
    """Train a sentencepiece model on ``sentences`` and write it atomically to ``model_file``."""
    model = io.BytesIO()
    try:
        _train(sentences, settings, model)
    except RuntimeError as error:  # e.g. a vocabulary too small for the byte-fallback pieces, or too large
        lines = str(error).strip().splitlines()
        reason = (lines[0].split("] ")[-1] if lines else "") or "no usable training sentences"
        raise TokenizerError(f"sentencepiece (data.vocab_size={settings.vocab_size}): {reason}") from None
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=model_file.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(model.getvalue())
    publish_modes(tmp.name)
    os.replace(tmp.name, model_file)


def _train(sentences: Iterable[str], settings: TokenizerSettings, model: io.BytesIO) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=settings.vocab_size,
        model_type=settings.model_type,
        character_coverage=settings.character_coverage,
        input_sentence_size=settings.max_sentences,
        shuffle_input_sentence=True,
        byte_fallback=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )


def load_or_train(
    sentences: Callable[[], Iterable[str]], settings: TokenizerSettings, corpus_fingerprint: str, cache_dir: str | Path
) -> Tokenizer:
    """The cached model for these settings and this corpus, trained first (on ``sentences()``) if absent.

    The cache key hashes the settings and the corpus fingerprint, so a changed corpus or vocabulary size trains a new
    model while an unchanged one is reused.
    """
    model_file = Path(cache_dir) / "spm" / settings.key(corpus_fingerprint) / "spm.model"
    if model_file.exists():
        log.info("sentencepiece: reusing %s", model_file)
        return Tokenizer(model_file)
    log.info("sentencepiece: training %s (vocab %d) -> %s", settings.model_type, settings.vocab_size, model_file)
    train_tokenizer(sentences(), settings, model_file)
    return Tokenizer(model_file)
