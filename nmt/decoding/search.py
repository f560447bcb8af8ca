"""Decoding over the per-layer KV caches: greedy, sampling and beam search, batched over sentences.

Max length (subwords, the final eos included) is ``max_len_a · source length + max_len_b``; a hypothesis that reaches
it ends there. Finished sentences leave the batch, and decoding stops as soon as every sentence has ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.model import Seq2Seq


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos and eos
    score: float  # length-normalized log-probability (the ranking key)
    logprob: float


class CachedSteps:
    """Next-token logits from the incremental decoder: one new position per step over the KV caches."""

    def __init__(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor) -> None:
        self.model = model
        self.state = model.init_state(model.encode(src, src_lengths), src_lengths)

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.model.decode_step(tokens[:, -1:], self.state)[:, -1]

    def reorder(self, index: Tensor) -> None:
        self.state.reorder(index)

    def select(self, rows: Tensor, sentences: Tensor, beam: int) -> None:
        """Row i continues old row ``rows[i]``; ``beam`` rows per kept sentence (``sentences``, increasing)."""
        self.state.select_beams(rows, sentences, beam)


class RecomputeSteps:
    """The same logits by recomputing the whole prefix each step: the oracle for the cached path."""

    def __init__(self, model: Seq2Seq, src: Tensor, src_lengths: Tensor) -> None:
        self.model, self.src_lengths = model, src_lengths
        self.memory = model.encode(src, src_lengths)

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.model.decode(tokens, self.memory, self.src_lengths)[:, -1]

    def reorder(self, index: Tensor) -> None:
        self.memory, self.src_lengths = self.memory[index], self.src_lengths[index]

    def select(self, rows: Tensor, sentences: Tensor, beam: int) -> None:
        self.reorder(rows)


# Width of the token chunks whose maxima narrow argmax / top-k down before the exact search. On CPU, argmax and topk
# over a (rows, 8000) tensor cost ~15x and ~20x a max-reduction over it, and they run on every decoding step.
CHUNK = 64


def _argmax(x: Tensor) -> Tensor:
    """``x.argmax(-1)`` of a (rows, n) tensor, the first maximum on ties, via per-chunk maxima: the first chunk that
    holds a row's maximum holds its first occurrence."""
    rows, n = x.shape
    if n % CHUNK or n <= CHUNK or not x.is_contiguous():
        return x.argmax(-1)
    chunks = x.view(rows, n // CHUNK, CHUNK)  # (rows, chunks, CHUNK)
    best_chunk = chunks.amax(-1).argmax(-1)  # (rows,)
    within = chunks[torch.arange(rows, device=x.device), best_chunk].argmax(-1)  # (rows,)
    return best_chunk * CHUNK + within


def _top_candidates(scores: Tensor, logprobs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best ``scores[s, b] + logprobs[s, b, t]`` of each sentence s over beams b and tokens t, best first,
    with their flat index ``b * vocab + t``: what ``topk`` over the summed (sentences, beams * vocab) tensor gives
    (the same values; on exact ties possibly other indices), without summing every candidate.

    Each of the k best candidates lies in one of the k chunks of CHUNK tokens with the largest maxima: fewer than k
    chunks can have a larger maximum, as each holds a distinct better candidate. Only those chunks are summed and
    ranked. Adding a beam's score is monotonic, so a chunk's best sum is its best log-probability plus the score.
    """
    n, beams, vocab = logprobs.shape
    if vocab % CHUNK or k * CHUNK >= beams * vocab or not logprobs.is_contiguous():
        return (scores[:, :, None] + logprobs).view(n, beams * vocab).topk(k, dim=1)
    per_beam = vocab // CHUNK
    chunks = logprobs.view(n, beams * per_beam, CHUNK)  # chunk c belongs to beam c // per_beam
    chunk_scores = scores.repeat_interleave(per_beam, dim=1)  # (n, beams * per_beam)
    top_chunks = (chunks.amax(-1) + chunk_scores).topk(k, dim=1).indices  # (n, k)
    picked = chunks.gather(1, top_chunks[:, :, None].expand(n, k, CHUNK))  # (n, k, CHUNK)
    candidates = (chunk_scores.gather(1, top_chunks)[:, :, None] + picked).view(n, k * CHUNK)
    values, where = candidates.topk(k, dim=1)  # (n, k)
    return values, top_chunks.gather(1, where // CHUNK) * CHUNK + where % CHUNK


def _log_softmax_(logits: Tensor) -> Tensor:
    """Log-softmax over the vocabulary, written over ``logits`` (fresh each step, used by nothing else): allocating a
    new (rows, vocab) result made beam search's step ~6% slower on CPU (rows = 5 × 64 sentences, vocab 8,000)."""
    return torch.log_softmax(logits, -1, out=logits)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normalisation ((5 + length) / 6)^α (Wu et al. 2016, "Google's Neural Machine Translation
    System"), ``length`` counting the eos: a hypothesis ranks by its summed log-probability divided by this."""
    return ((5 + length) / 6) ** alpha


def max_lengths(src_lengths: Tensor, cfg: DecodeConfig) -> Tensor:
    """Per sentence, the most subwords a hypothesis may have, eos included (source lengths include their eos)."""
    return (cfg.max_len_a * (src_lengths - 1).float() + cfg.max_len_b).long().clamp(min=1)


def _restrict(logprobs: Tensor, step: int, at_max: Tensor, cfg: DecodeConfig) -> Tensor:
    """No pad or bos ever; no eos before min_len; only eos for rows whose sentence reached its max length."""
    logprobs[:, [PAD_ID, BOS_ID]] = float("-inf")
    if step < cfg.min_len:
        logprobs[:, EOS_ID] = float("-inf")
    if at_max.any():
        eos = logprobs[at_max, EOS_ID].clone()
        logprobs[at_max] = float("-inf")
        logprobs[at_max, EOS_ID] = torch.where(torch.isfinite(eos), eos, torch.zeros_like(eos))
    return logprobs


def _sample(logprobs: Tensor, cfg: DecodeConfig, generator: torch.Generator) -> Tensor:
    logits = logprobs / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def greedy(
    model: Seq2Seq, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig, scores: bool = True
) -> list[list[Hypothesis]]:
    """Greedy (or, with ``cfg.sampling``, sampled) decoding: one hypothesis per sentence.

    ``scores=False`` picks from the raw logits and leaves each hypothesis's score and logprob NaN: the argmax and the
    sampling distribution are the same (log-softmax shifts a row by one constant), and the log-softmax over the
    vocabulary it skips is ~5% of a greedy step — what callers that keep only the text (validation, evaluation,
    ``nmt translate`` without n-best) do not need, as Hugging Face ``generate`` and CTranslate2 skip it by default.
    """
    steps = CachedSteps(model, src, src_lengths)
    limits = max_lengths(src_lengths, cfg)
    generator = torch.Generator(device=src.device).manual_seed(cfg.seed)
    results: list[Optional[Hypothesis]] = [None] * src.size(0)
    sentence = torch.arange(src.size(0), device=src.device)  # original index of each active row
    tokens = torch.full((src.size(0), 1), BOS_ID, device=src.device)
    logprob = torch.full((src.size(0),), 0.0 if scores else float("nan"), device=src.device)
    for step in range(int(limits.max())):
        at_max = step + 1 >= limits[sentence]
        logits = steps(tokens).float()
        logprobs = _restrict(_log_softmax_(logits) if scores else logits, step, at_max, cfg)
        best = _sample(logprobs, cfg, generator) if cfg.sampling else _argmax(logprobs)
        if scores:
            logprob = logprob + logprobs.gather(1, best[:, None]).squeeze(1)
        ended = best == EOS_ID
        if not ended.any():  # the usual step: no sentence ends, none leaves the batch
            tokens = torch.cat([tokens, best[:, None]], dim=1)
            continue
        for row in ended.nonzero().flatten().tolist():
            length = tokens.size(1)  # the tokens after bos, plus this eos
            score = float(logprob[row]) / length_penalty(length, cfg.length_penalty)
            results[int(sentence[row])] = Hypothesis(tokens[row, 1:].tolist(), score, float(logprob[row]))
        alive = (~ended).nonzero().flatten()
        if len(alive) == 0:
            break
        if len(alive) < len(sentence):
            steps.reorder(alive)
        sentence, logprob = sentence[alive], logprob[alive]
        tokens = torch.cat([tokens[alive], best[alive, None]], dim=1)
    return [[hypothesis] for hypothesis in results]


@torch.no_grad()
def beam_search(
    model: Seq2Seq, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig, recompute: bool = False
) -> list[list[Hypothesis]]:
    """Batched beam search; per sentence the ``cfg.nbest`` best finished hypotheses, best first.

    Each step keeps, per sentence, the ``beam`` best continuations that do not end; an eos among the ``beam`` best
    candidates finishes a hypothesis. A sentence ends once it has ``beam`` finished hypotheses or reaches its max
    length. Cross-attention K/V are computed and kept once per sentence; its beams share them (DecoderState).
    """
    K = cfg.beam
    steps = (RecomputeSteps if recompute else CachedSteps)(model, src, src_lengths)
    limits = max_lengths(src_lengths, cfg)
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    n_finished = torch.zeros(src.size(0), dtype=torch.long, device=src.device)  # len(finished[i]), as a tensor
    sentence = torch.arange(src.size(0), device=src.device)  # original index of each alive sentence
    tokens = torch.full((src.size(0), 1), BOS_ID, device=src.device)  # (alive × beams, step + 1)
    scores = torch.zeros(src.size(0), 1, device=src.device)  # (alive, beams) summed log-probabilities
    for step in range(int(limits.max())):
        n_alive, beams = scores.shape
        at_max = step + 1 >= limits[sentence]  # (alive,)
        logprobs = _restrict(_log_softmax_(steps(tokens).float()), step, at_max.repeat_interleave(beams), cfg)
        vocab = logprobs.size(-1)
        top_scores, top_index = _top_candidates(
            scores, logprobs.view(n_alive, beams, vocab), min(2 * K, beams * vocab)
        )  # (alive, 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == EOS_ID
        penalty = length_penalty(step + 1, cfg.length_penalty)
        for s, j in is_eos[:, :K].nonzero().tolist():  # one sync per step; empty on most steps
            original = int(sentence[s])
            if len(finished[original]) < K and torch.isfinite(top_scores[s, j]):
                logprob = float(top_scores[s, j])
                row = s * beams + int(top_beam[s, j])
                finished[original].append(Hypothesis(tokens[row, 1:].tolist(), logprob / penalty, logprob))
                n_finished[original] += 1
        done = at_max | (n_finished[sentence] >= K)
        keep = (~done).nonzero().flatten()
        if len(keep) == 0:
            break
        # The K best continuations that do not end: eos candidates are ranked after every other candidate.
        rank = torch.where(is_eos, top_scores.new_tensor(float("inf")),
                           torch.arange(top_scores.size(1), device=src.device).float())
        pick = rank.topk(K, dim=1, largest=False).indices[keep]  # (kept, K)
        rows = (keep[:, None] * beams + top_beam[keep].gather(1, pick)).flatten()  # rows of the current layout
        steps.select(rows, keep, K)
        tokens = torch.cat([tokens[rows], top_token[keep].gather(1, pick).reshape(-1, 1)], dim=1)
        scores = top_scores[keep].gather(1, pick)
        sentence = sentence[keep]
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[: cfg.nbest] for hyps in finished]


def decode(
    model: Seq2Seq, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig, scores: bool = True
) -> list[list[Hypothesis]]:
    """The n-best list of each source row, by the method ``cfg`` names. Beam search always scores (it ranks by score);
    greedy and sampling leave scores NaN with ``scores=False`` (see ``greedy``)."""
    if cfg.beam == 1:
        return greedy(model, src, src_lengths, cfg, scores)
    return beam_search(model, src, src_lengths, cfg)
