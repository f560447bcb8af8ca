"""Translate a list of sentences and score them with sacreBLEU: the one code path for validation BLEU and
``nmt evaluate``."""

from __future__ import annotations

from typing import Optional

import numpy as np
import sacrebleu
import torch

from nmt.batching import collate, token_batches
from nmt.model import Seq2Seq
from nmt.search import DecodeConfig, decode
from nmt.tokenizer import Tokenizer


def translate_texts(
    model: Seq2Seq, tokenizer: Tokenizer, texts: list[str], cfg: DecodeConfig, max_tokens: int = 4096, max_len: int = 250
) -> list[str]:
    """Detokenized translations, one per input, in input order; a blank input gives a blank output."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hypotheses = [""] * len(texts)
    todo = [i for i, text in enumerate(texts) if text.strip()]
    ids = [s[:max_len] for s in tokenizer.encode([texts[i] for i in todo])]
    lens = np.array([len(s) for s in ids])
    for batch in token_batches(lens, lens, max_tokens, rng=None):
        tensors = collate([ids[j] for j in batch], [[] for _ in batch])
        nbest = decode(model, tensors["src"].to(device), tensors["src_lengths"].to(device), cfg)
        for j, text in zip(batch, tokenizer.decode([hyps[0].tokens for hyps in nbest])):
            hypotheses[todo[j]] = text
    model.train(was_training)
    return hypotheses


def corpus_scores(hypotheses: list[str], references: list[str], tokenize: Optional[str] = None) -> dict:
    """sacreBLEU BLEU, chrF and TER with their signatures (``tokenize='none'`` for pre-tokenized references)."""
    bleu = sacrebleu.BLEU(**({"tokenize": tokenize} if tokenize else {}))
    chrf, ter = sacrebleu.CHRF(), sacrebleu.TER()
    refs = [references]
    scores = {}
    for name, metric in (("bleu", bleu), ("chrf", chrf), ("ter", ter)):
        scores[name] = metric.corpus_score(hypotheses, refs).score
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


def bleu(hypotheses: list[str], references: list[str], tokenize: Optional[str] = None) -> float:
    metric = sacrebleu.BLEU(**({"tokenize": tokenize} if tokenize else {}))
    return metric.corpus_score(hypotheses, [references]).score


def translate_and_score(
    model: Seq2Seq,
    tokenizer: Tokenizer,
    sources: list[str],
    references: list[str],
    cfg: DecodeConfig,
    max_tokens: int = 4096,
    max_len: int = 250,
    tokenize: Optional[str] = None,
) -> tuple[float, list[str]]:
    with torch.no_grad():
        hypotheses = translate_texts(model, tokenizer, sources, cfg, max_tokens, max_len)
    return bleu(hypotheses, references, tokenize), hypotheses
