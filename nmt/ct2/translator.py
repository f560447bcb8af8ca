"""``nmt translate --engine ct2``: nmt's Translator (input policy, batching, warnings, n-best) over a CTranslate2
model folder written by ``nmt export ct2``; the search is nmt's, run by CTranslate2 (nmt/ct2/search.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from nmt.config import DecodeConfig
from nmt.data.textio import some
from nmt.decoding.search import Hypothesis, max_lengths
from nmt.decoding.translate import Translation, Translator
from nmt.errors import first_line, plural

log = logging.getLogger("nmt.decoding.translate")


class CT2LoadError(ValueError):
    """The folder is not a usable CTranslate2 export of nmt; the message names it and says why (one line)."""


class CT2Translator(Translator):
    """Translator whose batches CTranslate2 decodes. ``search``: a nmt.ct2.search.CT2Search."""

    def __init__(self, search, tokenizer, device: str = "cpu") -> None:
        self.search, self.tokenizer, self.device, self.model = search, tokenizer, device, None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", compute_type: str = "default",
             threads: int = 0) -> "CT2Translator":
        """Load an ``nmt export ct2`` folder. ``threads``: CTranslate2's intra_threads (0: its default)."""
        from nmt.ct2.export import META, SPM
        from nmt.ct2.search import CT2Search
        from nmt.data.tokenizer import Tokenizer

        path = Path(path)
        try:
            import ctranslate2
        except ImportError:
            raise CT2LoadError("--engine ct2 needs the ctranslate2 package: pip install ctranslate2") from None
        missing = [name for name in ("model.bin", META, SPM) if not (path / name).is_file()]
        if missing:
            raise CT2LoadError(f"{path}: not a CTranslate2 model exported by nmt (missing {', '.join(missing)}; "
                               f"write one with nmt export ct2 MODEL {path})")
        try:
            meta = json.loads((path / META).read_text())
            tokenizer = Tokenizer(path / SPM)
            translator = ctranslate2.Translator(str(path), device=device, compute_type=compute_type,
                                                intra_threads=threads)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            raise CT2LoadError(f"{path}: cannot load ({first_line(error)})") from None
        pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        window = ((meta.get("model") or {}).get("attention") or {}).get("decoder_self", {}).get("window")
        return cls(CT2Search(translator, pieces, meta.get("max_positions"), window), tokenizer, device)

    def translate_full(self, texts: list[str], cfg: DecodeConfig, max_tokens: int = 4096,
                       max_source_len: int = 1024, progress: Optional[callable] = None,
                       scores: bool = True) -> list[Translation]:
        """As Translator.translate_full. A sinusoidal export covers ``max_positions`` positions: longer sources are
        truncated to fit (warned as any truncation), and max lengths beyond it are capped, with a warning naming
        the lines."""
        positions = self.search.max_positions
        if positions:
            max_source_len = min(max_source_len, positions - 1)
            self._warn_capped(texts, cfg, max_source_len, positions)
        return super().translate_full(texts, cfg, max_tokens, max_source_len, progress, scores)

    def _warn_capped(self, texts: list[str], cfg: DecodeConfig, max_source_len: int, positions: int) -> None:
        todo = [i for i, text in enumerate(texts) if text.strip()]
        if not todo:
            return
        lengths = [min(len(s), max_source_len) + 1 for s in self.tokenizer.encode([texts[i] for i in todo])]
        limits = max_lengths(torch.tensor(lengths), cfg).tolist()
        capped = [todo[j] + 1 for j, limit in enumerate(limits) if limit > positions]
        if capped:
            log.warning("%s may decode up to %d subwords, more than the %d positions of this CTranslate2 "
                        "export: capped there (lines %s; re-export with a larger --max-positions)",
                        plural(len(capped), "line"), max(limits), positions, some(capped))

    def decode_ids(self, ids: list[list[int]], cfg: DecodeConfig, scores: bool = True) -> list[list[Hypothesis]]:
        """As Translator.decode_ids, by CTranslate2 (CT2Search.decode): each source's n-best list, best first. A
        CTranslate2 RuntimeError is raised as a one-line ValueError."""
        try:
            return self.search.decode(ids, cfg, scores)
        except RuntimeError as error:  # CTranslate2 reports its errors as RuntimeError
            raise ValueError(f"CTranslate2: {first_line(error)}") from None
