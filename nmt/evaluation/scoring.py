"""Translate and score with sacreBLEU: the one path for validation BLEU during training and for ``nmt evaluate``.

Imports no CLI or report code, so training (nmt.training.lit_module) pulls in only sacreBLEU and the decoder.
"""

from __future__ import annotations

from typing import Optional

import sacrebleu
import torch

from nmt.config import DecodeConfig
from nmt.decoding.flags import MAX_SOURCE_LEN
from nmt.decoding.translate import Translator


def translate_texts(model, tokenizer, texts: list[str], cfg: DecodeConfig, max_tokens: int = 4096,
                    max_len: int = MAX_SOURCE_LEN) -> list[str]:
    """Detokenized translations, one per input, in input order; a blank input gives a blank output."""
    was_training = model.training
    try:
        translator = Translator(model, tokenizer, next(model.parameters()).device)
        return [t.text for t in translator.translate_full(texts, cfg, max_tokens, max_len, scores=False)]
    finally:
        model.train(was_training)


def _metric(name: str, tokenize: Optional[str] = None):
    if name == "bleu":
        # tokenize='none' says the text is already tokenized, so sacreBLEU's "forgot to detokenize?" heuristic only
        # repeats three warnings per validation; force silences it without entering the signature.
        return sacrebleu.BLEU(tokenize=tokenize, force=tokenize == "none")
    return sacrebleu.CHRF() if name == "chrf" else sacrebleu.TER()


def bleu(hypotheses: list[str], references: list[str], tokenize: Optional[str] = None) -> float:
    return _metric("bleu", tokenize).corpus_score(hypotheses, [references]).score


def corpus_scores(hypotheses: list[str], references: list[str], tokenized: bool = False) -> dict:
    """sacreBLEU BLEU, chrF and TER with signatures; with ``tokenized`` also BLEU with tokenize='none', the figure
    papers report on pre-tokenized, lowercased references."""
    scores: dict = {}
    names = [("bleu", None), ("chrf", None), ("ter", None)] + ([("bleu_tokenized", "none")] if tokenized else [])
    for name, tokenize in names:
        metric = _metric(name.split("_")[0], tokenize)
        scores[name] = round(metric.corpus_score(hypotheses, [references]).score, 4)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


def translate_and_score(model, tokenizer, sources: list[str], references: list[str], cfg: DecodeConfig,
                        max_tokens: int = 4096, max_len: int = MAX_SOURCE_LEN,
                        tokenize: Optional[str] = None) -> tuple[float, list[str]]:
    with torch.no_grad():
        hypotheses = translate_texts(model, tokenizer, sources, cfg, max_tokens, max_len)
    return bleu(hypotheses, references, tokenize), hypotheses
