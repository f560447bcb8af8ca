"""nmt's search (nmt/decoding/search.py) run by CTranslate2's ``translate_batch``: the same tokens for the same
sentences.

How each nmt setting maps (CTranslate2 4.8: src/decoding.cc, python translate_batch):

- **bos/eos**: sources end with eos (the exported config's ``add_source_eos``); decoding starts from ``<s>``;
  ``max_input_length=0``: nmt truncates sources itself (``--max-source-len``, with a warning).
- **pad and bos** are never emitted: nmt sets their log-probabilities to −inf *after* the log-softmax (as fairseq
  and Hugging Face do), so they still count in its normalisation; CTranslate2's ``suppress_sequences`` removes them
  *before* it, which shifts every candidate's score by their probability (~1e-4 per step in a model trained a few
  hundred steps: enough to reorder near-equal beams). Greedy picks the same argmax either way and suppresses them.
  Beam search runs unsuppressed, with nmt's normalisation; a sentence where pad or bos made it into a hypothesis is
  searched again with them suppressed.
- **max length** L = max_len_a · source subwords + max_len_b (nmt.decoding.search.max_lengths, eos included) is per
  sentence; ``max_decoding_length`` is one number per call. Greedy: decoding to the batch's largest L − 1 tokens and
  cutting each hypothesis after its own L − 1 is exact (nmt forces eos after L − 1 tokens; greedy steps do not
  interact). Beam: a sentence whose K hypotheses all ended within L − 1 tokens was searched exactly as nmt searches it
  (until its last step CTranslate2's beam step is nmt's: the 2K best candidates, eos among the K best finishes a
  hypothesis, the K best others continue, a sentence ends at K finished). A sentence that reaches L ("tail") differs at
  the end: nmt's last step ends every alive beam with eos, CTranslate2's last step keeps the K best candidates whatever
  their token. Tails are searched again to L − 1 tokens with patience 2 (the same search, as they never had K finished
  hypotheses; every registered hypothesis comes back): those that did not end are alive beams of nmt's last step, as
  are the first L − 1 tokens of every longer hypothesis of the first search; each gets eos and nmt's score
  (``score``), and the best K − (finished) join the finished ones. Exact unless an eos was among the K best
  candidates at step L − 2 and a beam that replaced it left no descendant in the first search's K hypotheses.
- **length penalty**: CTranslate2 divides by length^α, nmt by GNMT's ((5 + length) / 6)^α, and a zero CTranslate2
  penalty switches on its early exit (stop when the best beam ends), which nmt does not have. So CTranslate2 runs
  with α = 1e-12 (length^1e-12 rounds to 1.0: raw log-probabilities, no early exit), returns all K hypotheses with
  ``num_hypotheses=K``, and they are ranked here by GNMT's penalty, as nmt ranks them.
- **min length**: ``min_decoding_length = min_len`` (CTranslate2's default is 1, nmt's 0). CTranslate2 removes eos
  before the log-softmax, nmt after: with ``min_len > 0`` the first min_len steps' scores differ by eos's probability.
- **scores**: where scores are printed (``scores=True``: n-best) or rank a tail's forced endings, they are
  recomputed with nmt's normalisation from CTranslate2's logits, step by step (``score``).
- **n-best**: the best hypothesis is nmt's; the rest of an n-best list can differ where more than K hypotheses end
  on the step that completes a sentence: nmt keeps the first K it found, CTranslate2 the K with the best raw
  log-probabilities (a dropped one ranks below a kept one of the same step under GNMT's penalty, for α ≥ 0).
- **sampling** (``--sampling --top-k --top-p --temperature --seed``) maps to ``sampling_topk/topp/temperature`` and
  ``set_random_seed``: the same distribution, another random stream, so not the same tokens.
"""

from __future__ import annotations

import math
from itertools import groupby
from typing import Optional

import numpy as np
import torch

from nmt.config import DecodeConfig
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.decoding.search import Hypothesis, length_penalty, max_lengths

NO_PENALTY = 1e-12  # a non-zero length penalty that divides every score by exactly 1.0 (see the module doc)


def gnmt(logprob: float, length: int, alpha: float) -> float:
    """nmt's ranking score: ``logprob`` over GNMT's length penalty, ``length`` counting the eos."""
    return logprob / length_penalty(length, alpha)


class CT2Search:
    """Decode batches of source token ids with a ``ctranslate2.Translator`` as ``nmt.decoding.search.decode`` does.

    ``pieces``: the sentencepiece pieces in id order (CTranslate2 takes and returns tokens as strings).
    ``max_positions``: rows of the exported sinusoidal table (None for RoPE): the max lengths are capped there.
    ``decoder_window``: the decoder self-attention window, if any (``score`` then decodes step by step).
    """

    def __init__(self, translator, pieces: list[str], max_positions: Optional[int] = None,
                 decoder_window: Optional[int] = None) -> None:
        self.translator, self.pieces, self.max_positions = translator, pieces, max_positions
        self.decoder_window = decoder_window
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.suppress = [[pieces[PAD_ID]], [pieces[BOS_ID]]]

    def limits(self, ids: list[list[int]], cfg: DecodeConfig) -> list[int]:
        """nmt's max length per sentence (subwords, eos included), capped at the exported positions."""
        limits = max_lengths(torch.tensor([len(s) + 1 for s in ids]), cfg).tolist()
        return [min(L, self.max_positions) for L in limits] if self.max_positions else limits

    def decode(self, ids: list[list[int]], cfg: DecodeConfig, scores: bool = True) -> list[list[Hypothesis]]:
        """Per source (token ids without eos) its ``cfg.nbest`` hypotheses, best first, as
        nmt.decoding.search.decode."""
        if not ids:
            return []
        source = [[self.pieces[i] for i in s] for s in ids]
        limits = self.limits(ids, cfg)
        if cfg.beam == 1:
            return self._greedy(source, limits, cfg, scores)
        return self._beam(source, limits, cfg, scores)

    def _translate(self, source: list[list[str]], max_length: int, cfg: DecodeConfig, suppress: bool, **options):
        return self.translator.translate_batch(
            source, max_batch_size=0, max_input_length=0, max_decoding_length=max_length,
            min_decoding_length=min(cfg.min_len, max_length), suppress_sequences=self.suppress if suppress else None,
            return_end_token=True, **options)

    def _tokens(self, hypothesis: list[str]) -> list[int]:
        return [self.ids[piece] for piece in hypothesis]

    def _greedy(self, source, limits: list[int], cfg: DecodeConfig, scores: bool) -> list[list[Hypothesis]]:
        options = {"beam_size": 1}
        if cfg.sampling:
            import ctranslate2

            ctranslate2.set_random_seed(cfg.seed)
            options.update(sampling_topk=cfg.top_k, sampling_topp=cfg.top_p, sampling_temperature=cfg.temperature)
        results = self._translate(source, max(max(limits) - 1, 1), cfg, True, **options)
        tokens = []
        for result, limit in zip(results, limits):
            hyp = self._tokens(result.hypotheses[0])
            if hyp and hyp[-1] == EOS_ID:
                hyp = hyp[:-1]
            tokens.append(hyp[: limit - 1])  # nmt ends a hypothesis with eos after L - 1 subwords
        logprobs = self.score(source, tokens) if scores else [math.nan] * len(tokens)
        return [[Hypothesis(t, gnmt(lp, len(t) + 1, cfg.length_penalty), lp)] for t, lp in zip(tokens, logprobs)]

    def _beam_run(self, source, max_length: int, cfg: DecodeConfig, suppress: bool, patience: int = 1):
        """CTranslate2's beam search: per sentence its K · ``patience`` best finished (or cut) hypotheses, tokens
        with any eos, and raw summed log-probabilities. A sentence stops at K · ``patience`` finished."""
        results = self._translate(source, max_length, cfg, suppress, beam_size=cfg.beam, patience=patience,
                                  num_hypotheses=cfg.beam * patience, length_penalty=NO_PENALTY, return_scores=True)
        return [[(self._tokens(h), s) for h, s in zip(r.hypotheses, r.scores)] for r in results]

    def _beam(self, source, limits: list[int], cfg: DecodeConfig, scores: bool) -> list[list[Hypothesis]]:
        finished = self._beam_sentences(source, limits, cfg, suppress=False)
        # Unsuppressed, pad and bos compete as nmt never lets them: where one is in a hypothesis, search again
        # without them (the normalisation then differs from nmt's by their probability; see the module doc).
        redo = [i for i, hyps in enumerate(finished) if any(PAD_ID in t or BOS_ID in t for t, _ in hyps)]
        if redo:
            again = self._beam_sentences([source[i] for i in redo], [limits[i] for i in redo], cfg, suppress=True)
            for i, hyps in zip(redo, again):
                finished[i] = hyps
        if scores:  # nmt's scores: log-probabilities over the whole vocabulary
            flat = [(i, t) for i, hyps in enumerate(finished) for t, _ in hyps]
            rescored = self.score([source[i] for i, _ in flat], [t for _, t in flat])
            finished = [[] for _ in source]
            for (i, t), lp in zip(flat, rescored):
                finished[i].append((t, lp))
        return [self._rank(hyps, cfg) for hyps in finished]

    def _beam_sentences(self, source, limits: list[int], cfg: DecodeConfig, suppress: bool):
        """Per sentence nmt's finished hypotheses (tokens without eos, summed log-probability): one search to the
        batch's largest max length, and a second for the sentences that reach their own (``_tail``)."""
        found = self._beam_run(source, max(limits), cfg, suppress)
        finished: list[list[tuple[list[int], float]]] = [[] for _ in source]
        tails = []
        for i, (hyps, limit) in enumerate(zip(found, limits)):
            if all(h and len(h) <= limit - 1 and h[-1] == EOS_ID for h, _ in hyps):
                finished[i] = [(h[:-1], s) for h, s in hyps]
            else:
                tails.append(i)
        for limit, group in groupby(sorted(tails, key=lambda i: limits[i]), key=lambda i: limits[i]):
            group = list(group)
            # Every hypothesis longer than L - 1 went through one of nmt's alive beams at its last step L - 1.
            seen = [[h[: limit - 1] for h, _ in found[i] if len(h) > limit - 1] for i in group]
            for i, hyps in zip(group, self._tail([source[i] for i in group], limit, cfg, suppress, seen)):
                finished[i] = hyps
        return finished

    def _tail(self, source, limit: int, cfg: DecodeConfig, suppress: bool,
              seen: list[list[list[int]]]) -> list[list[tuple[list[int], float]]]:
        """Sentences that reach their max length ``limit``: nmt's finished hypotheses, those ended before step L - 1
        and the forced endings of its beams alive at step L - 1.

        The sentences are searched again to L - 1 tokens with patience 2: they never had K finished hypotheses
        before, so the search is the same, and CTranslate2 returns every hypothesis registered (fewer than 2K), where
        patience 1 would keep only the K best. The unended ones, and ``seen`` (per sentence, beams alive at step
        L - 1 known from a longer search), are nmt's alive beams; each is scored with eos appended."""
        if limit > 1:
            runs = self._beam_run(source, limit - 1, cfg, suppress, patience=2)
        else:
            runs = [[([], math.nan)] for _ in source]
        ended, cut = [], []
        for hyps, known in zip(runs, seen):
            # nmt registers by step, then by score; and stops at K, with no forced endings when it gets there.
            done = sorted(((h[:-1], s) for h, s in hyps if h and h[-1] == EOS_ID), key=lambda e: (len(e[0]), -e[1]))
            ended.append(done[: cfg.beam])
            alive = [h for h, _ in hyps if not (h and h[-1] == EOS_ID)] + known if len(done) < cfg.beam else []
            cut.append([list(h) for h in dict.fromkeys(tuple(h) for h in alive)])
        flat = [(i, h) for i, hyps in enumerate(cut) for h in hyps]
        logprobs = self.score([source[i] for i, _ in flat], [h for _, h in flat])
        forced: list[list[tuple[list[int], float]]] = [[] for _ in source]
        for (i, h), lp in zip(flat, logprobs):
            forced[i].append((h, lp))
        out = []
        for done, ends in zip(ended, forced):
            ends = sorted(ends, key=lambda e: e[1], reverse=True)[: max(cfg.beam - len(done), 0)]
            out.append(done + ends)
        return out

    @staticmethod
    def _rank(hyps: list[tuple[list[int], float]], cfg: DecodeConfig) -> list[Hypothesis]:
        ranked = [Hypothesis(t, gnmt(lp, len(t) + 1, cfg.length_penalty), lp) for t, lp in hyps]
        return sorted(ranked, key=lambda h: h.score, reverse=True)[: cfg.nbest]

    def score(self, source: list[list[str]], targets: list[list[int]]) -> list[float]:
        """Summed log-probability of each target followed by eos, normalised over the whole vocabulary as nmt's
        search scores it. CTranslate2's ``score_batch`` computes it in one pass over each target; targets of one
        length go together (with unequal lengths, a one-head MQA cache makes score_batch fail on the padding). One
        pass applies no ``sliding_window``: a windowed decoder whose targets outrun the window decodes them step by
        step instead (``_score_steps``)."""
        if not targets:
            return []
        if self.decoder_window is not None and max(len(t) for t in targets) + 1 > self.decoder_window:
            return self._score_steps(source, targets)
        totals = [0.0] * len(targets)
        by_length = sorted(range(len(targets)), key=lambda i: len(targets[i]))
        for _, group in groupby(by_length, key=lambda i: len(targets[i])):
            group = list(group)
            results = self.translator.score_batch(
                [source[i] for i in group], [[self.pieces[t] for t in targets[i]] for i in group],
                max_batch_size=0, max_input_length=0)
            for i, result in zip(group, results):
                totals[i] = float(np.sum(np.asarray(result.log_probs, dtype=np.float64)))
        return totals

    def _score_steps(self, source: list[list[str]], targets: list[list[int]]) -> list[float]:
        """``score``, decoding step by step as translation does: the targets as forced prefixes, the log-softmax of
        CTranslate2's logits at each position."""
        prefixes = [[self.pieces[t] for t in target] for target in targets]
        results = self.translator.translate_batch(
            source, target_prefix=prefixes, max_batch_size=0, max_input_length=0, beam_size=1,
            max_decoding_length=max(len(t) for t in targets) + 1, min_decoding_length=0, return_logits_vocab=True)
        totals = []
        for result, target in zip(results, targets):
            steps = result.logits[0][: len(target) + 1]  # the logits at each target position and the eos's
            logits = torch.from_numpy(np.stack([np.asarray(step) for step in steps]).astype(np.float32))
            logprobs = torch.log_softmax(logits, -1)  # (len + 1, vocab)
            chosen = logprobs[torch.arange(len(target) + 1), torch.tensor(target + [EOS_ID])]
            totals.append(float(chosen.sum()))
        return totals
