"""Pruning curves per attention site (Michel et al. 2019, §4.2): mask a site's heads one by one, least important
first, translate the test set with the masked model and score it with sacreBLEU at every step; then how many heads
each site needs to stay within a BLEU tolerance, and which site tolerates the fewest.

Heads are masked through `Seq2Seq.head_gates` (gate 0) on the model that decodes, not on a copy of it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from nmt.config import SITES
from nmt.evaluation.scoring import corpus_scores


@dataclass
class Curve:
    """One site's curve: ``order`` the (layer, head) pairs in masking order; ``scores[k]`` sacreBLEU's scores
    (nmt.evaluation.scoring.corpus_scores) with the first k of them masked, k = 0 … all heads of the site."""

    order: list[tuple[int, int]]
    scores: list[dict]
    seconds: float = 0.0

    def metric(self, name: str) -> list[float]:
        return [s[name] for s in self.scores]


@dataclass
class Verdict:
    """``kept[site]``: the fewest heads a site keeps while every point of its curve up to there stays within
    ``tolerance`` BLEU of the unpruned model (the first drop below ends the count, later recoveries do not count);
    ``fewest`` / ``most``: the sites that keep the smallest / largest fraction of their heads."""

    tolerance: float
    unpruned: float
    heads: dict[str, int]
    kept: dict[str, int]
    fewest: list[str] = field(default_factory=list)
    most: list[str] = field(default_factory=list)

    @property
    def conclusive(self) -> bool:
        """False when the unpruned model scores no more than ``tolerance``: BLEU cannot fall below 0, so no curve
        can drop by more than the tolerance, every site 'keeps' 0 heads, and the counts say nothing."""
        return self.unpruned > self.tolerance


def masking_order(importance_normalized: np.ndarray) -> list[tuple[int, int]]:
    """A site's (layer, head) pairs by increasing layer-normalized importance (the scores Michel et al. prune by),
    ties by layer then head."""
    layers, heads = importance_normalized.shape
    pairs = [(layer, head) for layer in range(layers) for head in range(heads)]
    return sorted(pairs, key=lambda p: (float(importance_normalized[p]), p))


def pruning_curves(model, translate: Callable[[], list[str]], references: list[str], tokenized: bool,
                   orders: dict[str, list[tuple[int, int]]],
                   progress: Optional[Callable[[str, int, int, dict], None]] = None) -> dict[str, Curve]:
    """Every site's curve: k = 0 (unpruned, translated once and shared by all sites) to all of the site's heads
    masked (the site's attention then adds only out_proj's bias; the last point says what the site is worth at all).
    ``translate`` decodes the test set with the model as gated at the time of the call; ``progress(site, k, total,
    scores)`` is called after every point."""
    with model.head_gates() as gates:
        unpruned = corpus_scores(translate(), references, tokenized)
        curves = {}
        for site in SITES:
            start, scores = time.perf_counter(), [unpruned]
            for k, (layer, head) in enumerate(orders[site], start=1):
                gates[site][layer, head] = 0.0
                with _errors_only("sacrebleu"):  # its warnings are about the data: said at the unpruned point
                    scores.append(corpus_scores(translate(), references, tokenized))
                if progress is not None:
                    progress(site, k, len(orders[site]), scores[-1])
            gates[site].fill_(1.0)
            curves[site] = Curve(orders[site], scores, round(time.perf_counter() - start, 2))
    return curves


@contextlib.contextmanager
def _errors_only(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def verdict(curves: dict[str, Curve], metric: str, tolerance: float) -> Verdict:
    """How many heads each site keeps within ``tolerance`` of the unpruned ``metric`` (see Verdict)."""
    unpruned = next(iter(curves.values())).scores[0][metric]
    heads, kept = {}, {}
    for site, curve in curves.items():
        values = curve.metric(metric)
        masked = 0
        while masked + 1 < len(values) and values[masked + 1] >= unpruned - tolerance:
            masked += 1
        heads[site], kept[site] = len(curve.order), len(curve.order) - masked
    share = {site: kept[site] / heads[site] for site in curves}
    low, high = min(share.values()), max(share.values())
    return Verdict(tolerance, unpruned, heads, kept, [s for s in curves if share[s] == low],
                   [s for s in curves if share[s] == high])

