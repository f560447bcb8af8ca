"""Search: greedy, beam over caches against beam by recomputation, n-best order, lengths, sampling, early stop."""

import math

import pytest
import torch

from nmt.attention import dispatch
from nmt.config import DecodeConfig, ModelConfig
from nmt.data.tokenizer import EOS_ID
from nmt.decoding.search import beam_search, decode, greedy, max_lengths
from nmt.model import build_model


class EosFirst(torch.nn.Module):
    """Wraps the output projection so that eos is by far the most likely next token."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, x):
        logits = self.output(x)
        logits[..., EOS_ID] += 100.0
        return logits


def model_and_batch(attention=None, seed=0, d_model=32):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, d_model=d_model, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2,
                      dropout=0.0, attention=attention or {})
    model = build_model(cfg).eval()
    with torch.no_grad():  # sharper next-token distributions than a fresh init, so searches really differ
        model.output.weight.mul_(4)
    src = torch.randint(4, 40, (4, 9))
    src_lengths = torch.tensor([9, 6, 3, 1])
    src = src.masked_fill(torch.arange(9)[None, :] >= src_lengths[:, None], 0)
    src[torch.arange(4), src_lengths - 1] = EOS_ID
    return model, src, src_lengths


def test_beam_one_equals_greedy():
    model, src, lengths = model_and_batch()
    cfg = DecodeConfig(beam=1, max_len_b=12)
    by_greedy = greedy(model, src, lengths, cfg)
    by_beam = beam_search(model, src, lengths, cfg)
    assert [h[0].tokens for h in by_greedy] == [h[0].tokens for h in by_beam]
    assert [round(h[0].score, 5) for h in by_greedy] == [round(h[0].score, 5) for h in by_beam]


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_len_b=12), dict(min_len=4, max_len_a=0, max_len_b=6), dict(sampling=True, top_k=5, top_p=0.9, seed=3)],
    ids=["greedy", "forced-length", "sampling"],
)
def test_greedy_without_scores_picks_the_same_tokens(kwargs):
    """Picking from raw logits instead of log-probabilities changes nothing but the (NaN) scores."""
    model, src, lengths = model_and_batch()
    cfg = DecodeConfig(**kwargs)
    scored, unscored = greedy(model, src, lengths, cfg), greedy(model, src, lengths, cfg, scores=False)
    assert [h[0].tokens for h in scored] == [h[0].tokens for h in unscored]
    assert all(math.isfinite(h[0].score) for h in scored)
    assert all(math.isnan(h[0].score) and math.isnan(h[0].logprob) for h in unscored)


@pytest.mark.parametrize(
    "attention",
    [{}, {"decoder_self": {"n_kv_heads": 1}, "cross": {"n_kv_heads": 2}},
     {"encoder_self": {"window": 2}, "decoder_self": {"window": 3, "global_tokens": 1}}],
    ids=["mha", "mqa-gqa", "window-sparse"],
)
def test_beam_over_caches_equals_beam_by_recomputation(attention):
    model, src, lengths = model_and_batch(attention)
    cfg = DecodeConfig(beam=4, nbest=4, max_len_b=12)
    cached = beam_search(model, src, lengths, cfg)
    recomputed = beam_search(model, src, lengths, cfg, recompute=True)
    assert [[h.tokens for h in hyps] for hyps in cached] == [[h.tokens for h in hyps] for hyps in recomputed]
    for a, b in zip(cached, recomputed):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    assert len({tuple(h.tokens) for h in cached[0]}) == 4  # four distinct hypotheses


PRESETS = {
    "mha": {},
    "gqa": {"decoder_self": {"n_kv_heads": 2}, "cross": {"n_kv_heads": 2}},
    "mqa": {"decoder_self": {"n_kv_heads": 1}, "cross": {"n_kv_heads": 1}},
    "window-sparse": {"encoder_self": {"window": 2}, "decoder_self": {"window": 3, "global_tokens": 1}},
}


@pytest.mark.parametrize("preset", PRESETS)
def test_one_query_matmul_steps_pick_the_tokens_of_math(preset, monkeypatch):
    """With head_dim 64, ``auto`` runs the self-attention steps on matmul from 7 cached positions on
    (dispatch.matmul_wins); greedy and beam search pick exactly the tokens of every site on the math oracle, and
    beam search over the caches those of recomputation."""
    choices = []
    choose = dispatch.choose_backend

    def recorded(site, q, mask, *args, **kwargs):
        choices.append((site, mask.q_len, choose(site, q, mask, *args, **kwargs)))
        return choices[-1][-1]

    monkeypatch.setattr(dispatch, "choose_backend", recorded)
    results = {}
    for backend in ("auto", "math"):
        sites = {site: {**PRESETS[preset].get(site, {}), "backend": backend}
                 for site in ("encoder_self", "decoder_self", "cross")}
        model, src, lengths = model_and_batch(sites, d_model=256)
        greedy_cfg, beam_cfg = DecodeConfig(max_len_b=12), DecodeConfig(beam=4, nbest=4, max_len_b=12)
        results[backend] = [[h.tokens for h in hyps] for cfg in (greedy_cfg, beam_cfg)
                            for hyps in decode(model, src, lengths, cfg)]
        if backend == "auto":
            recomputed = beam_search(model, src, lengths, beam_cfg, recompute=True)
            assert results["auto"][len(src):] == [[h.tokens for h in hyps] for hyps in recomputed]
    assert results["auto"] == results["math"]
    matmul_sites = {site for site, q_len, choice in choices if q_len == 1 and choice == "matmul"}
    # A window of 3 (plus 1 global token) keeps too few keys for BLAS: its self-attention steps stay on SDPA.
    assert matmul_sites == ({"cross"} if preset == "window-sparse" else {"cross", "decoder_self"})


def test_nbest_lists_are_sorted_and_scored_with_the_length_penalty():
    model, src, lengths = model_and_batch()
    cfg = DecodeConfig(beam=5, nbest=5, length_penalty=1.0, max_len_b=10)
    for hyps in beam_search(model, src, lengths, cfg):
        assert len(hyps) == 5
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert h.score == pytest.approx(h.logprob / ((5 + len(h.tokens) + 1) / 6))
    first = beam_search(model, src, lengths, DecodeConfig(beam=5, nbest=1, max_len_b=10))
    full = beam_search(model, src, lengths, DecodeConfig(beam=5, nbest=5, max_len_b=10))
    assert [h[0].tokens for h in first] == [h[0].tokens for h in full]


def test_beam_finds_a_score_at_least_as_good_as_greedy():
    model, src, lengths = model_and_batch(seed=3)
    g = greedy(model, src, lengths, DecodeConfig(length_penalty=0.0, max_len_b=10))
    b = beam_search(model, src, lengths, DecodeConfig(beam=8, length_penalty=0.0, max_len_b=10))
    assert all(bh[0].logprob >= gh[0].logprob - 1e-5 for gh, bh in zip(g, b))


@pytest.mark.parametrize("beam", [1, 3])
def test_max_and_min_length(beam):
    model, src, lengths = model_and_batch()
    cfg = DecodeConfig(beam=beam, max_len_a=0.5, max_len_b=2)
    limits = max_lengths(lengths, cfg).tolist()
    for hyps, limit in zip(decode(model, src, lengths, cfg), limits):
        assert len(hyps[0].tokens) + 1 <= limit  # the eos counts
    model.output = EosFirst(model.output)
    assert all(h[0].tokens == [] for h in decode(model, src, lengths, DecodeConfig(beam=beam)))
    forced = decode(model, src, lengths, DecodeConfig(beam=beam, min_len=3))
    assert all(len(h[0].tokens) >= 3 for h in forced)


def test_decoding_stops_when_every_sentence_has_ended():
    model, src, lengths = model_and_batch()
    model.output = EosFirst(model.output)
    calls = []
    original = model.decode_step
    model.decode_step = lambda *a, **k: calls.append(1) or original(*a, **k)
    beam_search(model, src, lengths, DecodeConfig(beam=4, max_len_b=50))
    assert 1 <= len(calls) <= 2


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model, src, lengths = model_and_batch()
    sample = lambda seed, **kw: [h[0].tokens  # noqa: E731
                                 for h in greedy(model, src, lengths, DecodeConfig(sampling=True, seed=seed, **kw))]
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert sample(5, top_k=1) == [h[0].tokens for h in greedy(model, src, lengths, DecodeConfig())]
    assert sample(5, top_p=1e-6) == [h[0].tokens for h in greedy(model, src, lengths, DecodeConfig())]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beam=0), r"decode.beam \(0\)"),
        (dict(beam=2, nbest=3), r"decode.nbest \(3\)"),
        (dict(beam=2, sampling=True), "needs decode.beam 1"),
        (dict(top_p=0.0), r"top_p \(0.0\)"),
    ],
)
def test_bad_decode_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**kwargs)


def test_chunked_argmax_and_top_candidates_match_the_plain_ops():
    """The chunk-maxima shortcuts of greedy and beam search give what argmax / topk over every candidate give."""
    from nmt.decoding.search import CHUNK, _argmax, _top_candidates

    torch.manual_seed(1)
    x = torch.randn(6, 4 * CHUNK)
    x[0, 7] = x[0, 3 * CHUNK + 5] = 9.0  # a tie across chunks: the first occurrence wins, as with argmax
    x[1] = float("-inf")
    x[1, 2 * CHUNK] = -1.0
    assert torch.equal(_argmax(x), x.argmax(-1))

    scores = torch.randn(3, 2)
    logprobs = torch.randn(3, 2, 4 * CHUNK).log_softmax(-1)
    logprobs[0, 1] = float("-inf")  # a beam with nothing left (e.g. restricted to eos elsewhere)
    for k in (1, 4):
        values, index = _top_candidates(scores, logprobs, k)
        expected_values, expected_index = (scores[:, :, None] + logprobs).view(3, -1).topk(k, dim=1)
        assert torch.equal(values, expected_values)
        assert torch.equal(index, expected_index)
