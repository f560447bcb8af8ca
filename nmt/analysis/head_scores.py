"""Per-head statistics from teacher-forced passes over reference translations: the mean attention entropy of each
head and its importance in the sense of Michel, Levy and Neubig (2019), "Are Sixteen Heads Really Better than One?"
(NeurIPS; §4.1 and their code).

Both come from one pass per batch: `Seq2Seq.recording_attention` records every layer's weights (on the math backend)
while `Seq2Seq.head_gates` puts a gate ξ = 1 on every head, one per batch row, and the summed cross-entropy is
differentiated with respect to the gates only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.config import SITES
from nmt.data.batching import collate, token_batches
from nmt.data.tokenizer import PAD_ID


@dataclass
class SiteScores:
    """One attention site's statistics; arrays are float64, (layers, n_heads) unless said otherwise.

    ``entropy``: mean over real (non-padded) query rows of −Σ_k p_k ln p_k, in nats. ``uniform_entropy`` (layers,):
    the same mean of ln(keys the row can see), the entropy of uniform attention, for scale (keys counted as those with
    a nonzero weight in some head of the layer: masked keys get exactly 0). ``importance``: Michel et al.'s
    I_h = Σ_x |∂L(x)/∂ξ_h| / target tokens, L(x) the summed cross-entropy (nats) of sentence x given its reference
    prefix. ``importance_normalized``: ``importance`` divided by its layer's L2 norm, as Michel et al. do before
    comparing heads across layers.
    """

    n_heads: int
    n_kv_heads: int
    entropy: np.ndarray
    uniform_entropy: np.ndarray
    importance: np.ndarray
    importance_normalized: np.ndarray

    @property
    def layers(self) -> int:
        return self.entropy.shape[0]


def teacher_forced_batches(tokenizer, sources: list[str], references: list[str], batch_tokens: int,
                           max_len: int) -> list[dict[str, Tensor]]:
    """Padded batches (nmt.data.batching.collate: src, src_lengths, tgt_in, tgt_out) of the pairs whose source and
    reference are both non-blank, both sides cut to ``max_len`` subwords, about ``batch_tokens`` padded subwords per
    batch (sorted by length, as validation batches are)."""
    pairs = [i for i, (s, r) in enumerate(zip(sources, references)) if s.strip() and r.strip()]
    src = [ids[:max_len] for ids in tokenizer.encode([sources[i] for i in pairs])]
    tgt = [ids[:max_len] for ids in tokenizer.encode([references[i] for i in pairs])]
    src_lens, tgt_lens = np.array([len(s) for s in src]), np.array([len(t) for t in tgt])
    budget = max(batch_tokens, int(np.maximum(src_lens, tgt_lens).max(initial=0)) + 2)  # one pair always fits
    batches = token_batches(src_lens, tgt_lens, budget, rng=None)
    return [collate([src[j] for j in rows], [tgt[j] for j in rows]) for rows in batches]


def row_entropies(weights: Tensor, q_lengths: Tensor) -> tuple[Tensor, Tensor, int]:
    """For one layer's weights (B, n_heads, T, keys) and the real query rows per sentence ``q_lengths`` (B,): the
    summed entropy of the real rows per head (n_heads,), float64 nats; the summed ln(visible keys) over those rows;
    and the number of real rows. Padded keys weigh exactly 0 and add nothing (entr(0) = 0)."""
    weights = weights.detach().double()
    real = torch.arange(weights.size(2), device=weights.device)[None, :] < q_lengths[:, None]  # (B, T)
    entropy = torch.special.entr(weights).sum(-1)  # (B, n_heads, T)
    visible = (weights > 0).any(dim=1).sum(-1).clamp(min=1)  # (B, T)
    return entropy.transpose(1, 2)[real].sum(0), visible.double().log()[real].sum(), int(real.sum())


def normalize_by_layer(importance: np.ndarray) -> np.ndarray:
    """Each layer's row divided by its L2 norm (Michel et al.'s code: exponent 2, + 1e-20 against empty rows)."""
    return importance / (np.sqrt((importance**2).sum(-1, keepdims=True)) + 1e-20)


@contextlib.contextmanager
def gradients_for_gates_only(model) -> Iterator[None]:
    """The model's parameters without gradients while the block runs (restored after): backward reaches the gates
    and computes nothing for the weights."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def score_heads(model, batches: list[dict[str, Tensor]]) -> dict[str, SiteScores]:
    """Entropy and importance of every head at every site (SiteScores), from one teacher-forced pass per batch with
    the model in eval mode (no dropout).

    Importance is accumulated per sentence, as in the paper's I_h = E_x |∂L(x)/∂ξ_h|, not per batch: each batch row
    has its own gates (``head_gates(batch=B)``), so the gradient of the batch's summed loss at row x is ∂L(x)/∂ξ.
    The sum of |∂L(x)/∂ξ_h| is divided by the target tokens (eos included), as Michel et al.'s code divides by tokens.
    """
    model.eval()
    device = model.src_embed.weight.device
    entropy = {site: 0.0 for site in SITES}
    uniform = {site: 0.0 for site in SITES}
    importance = {site: 0.0 for site in SITES}
    rows, tokens = {site: 0 for site in SITES}, 0
    with gradients_for_gates_only(model):
        for batch in batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            tgt_lengths = (batch["tgt_out"] != PAD_ID).sum(1)
            with model.recording_attention() as weights, model.head_gates(
                    requires_grad=True, batch=batch["src"].size(0)) as gates:
                logits = model(batch["src"], batch["src_lengths"], batch["tgt_in"])  # (B, T, vocab)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["tgt_out"].flatten(), ignore_index=PAD_ID,
                                       reduction="sum")
                grads = torch.autograd.grad(loss, [gates[site] for site in SITES])  # (layers, B, n_heads) per site
            for site, grad in zip(SITES, grads):
                importance[site] = importance[site] + grad.abs().sum(1).double().cpu().numpy()
                q_lengths = batch["src_lengths"] if site == "encoder_self" else tgt_lengths
                per_layer = [row_entropies(w, q_lengths) for w in weights[site]]
                entropy[site] = entropy[site] + np.stack([e.cpu().numpy() for e, _, _ in per_layer])
                uniform[site] = uniform[site] + np.array([float(u) for _, u, _ in per_layer])
                rows[site] += per_layer[0][2] if per_layer else 0
            tokens += int(tgt_lengths.sum())
    return {site: _site_scores(model, site, entropy[site] / rows[site], uniform[site] / rows[site],
                               importance[site] / tokens) for site in SITES}


def _site_scores(model, site: str, entropy: np.ndarray, uniform: np.ndarray, importance: np.ndarray) -> SiteScores:
    cfg = model.cfg.site(site)
    return SiteScores(cfg.n_heads, cfg.n_kv_heads, entropy, uniform, importance, normalize_by_layer(importance))
