"""The mask description against the rules written out pair by pair."""

import itertools

import pytest
import torch

from nmt.attention import MaskSpec


def brute_force(spec: MaskSpec, batch: int) -> torch.Tensor:
    q_pos = list(range(spec.q_start, spec.q_start + spec.q_len))
    k_pos = list(range(spec.k_globals)) + list(range(spec.k_start, spec.k_start + spec.k_len - spec.k_globals))
    out = torch.zeros(batch, spec.q_len, spec.k_len, dtype=torch.bool)
    for b, (i, qp), (j, kp) in itertools.product(range(batch), enumerate(q_pos), enumerate(k_pos)):
        if spec.q_lengths is not None and i >= spec.q_lengths[b]:
            continue
        if spec.k_lengths is not None and j >= spec.k_lengths[b]:
            continue
        if spec.causal and kp > qp:
            continue
        if spec.window is not None:
            near = (qp - kp < spec.window) if spec.causal else abs(qp - kp) < spec.window
            is_global = qp < spec.global_tokens or kp < spec.global_tokens
            if not (near or is_global):
                continue
        out[b, i, j] = True
    return out


SPECS = [
    dict(q_len=6, k_len=6),
    dict(q_len=6, k_len=6, causal=True),
    dict(q_len=6, k_len=6, causal=True, window=2),
    dict(q_len=7, k_len=7, window=2, global_tokens=2),
    dict(q_len=7, k_len=7, window=3, global_tokens=1, causal=True),
    dict(q_len=5, k_len=8, window=2),  # cross-attention window
    dict(q_len=1, k_len=4, q_start=9, k_start=6, causal=True, window=4),  # cached decoding step
    dict(q_len=2, k_len=6, q_start=9, k_start=6, k_globals=2, causal=True, window=3, global_tokens=2),
    dict(q_len=4, k_len=6, q_lengths=torch.tensor([4, 2]), k_lengths=torch.tensor([6, 0])),
    dict(q_len=5, k_len=5, q_lengths=torch.tensor([5, 3]), k_lengths=torch.tensor([5, 3]), causal=True, window=2),
]


@pytest.mark.parametrize("kwargs", SPECS, ids=range(len(SPECS)))
def test_dense_mask_matches_the_rules(kwargs):
    spec = MaskSpec(**kwargs)
    dense = spec.dense(torch.device("cpu"))
    expected = brute_force(spec, batch=2)
    if dense is None:
        assert expected.all(), "is_full claimed every pair allowed, but some are not"
    else:
        assert torch.equal(dense[:, 0].expand_as(expected), expected)


def test_inconsistent_cache_layout_is_refused():
    with pytest.raises(ValueError, match=r"k_globals \(1\) must be <= global_tokens \(0\)"):
        MaskSpec(q_len=1, k_len=3, q_start=10, k_start=9, k_globals=1, window=4)


def test_full_and_plain_causal_are_recognised():
    assert MaskSpec(q_len=4, k_len=4).is_full
    assert not MaskSpec(q_len=4, k_len=4, causal=True).is_full
    assert MaskSpec(q_len=4, k_len=4, causal=True).is_plain_causal
    assert MaskSpec(q_len=4, k_len=4, causal=True, window=4).is_plain_causal
    assert not MaskSpec(q_len=4, k_len=4, causal=True, window=3).is_plain_causal
    assert not MaskSpec(q_len=3, k_len=4, causal=True).is_plain_causal
    # A decoding step over a window-trimmed cache sees every cached key: no mask needed.
    assert MaskSpec(q_len=1, k_len=3, q_start=10, k_start=8, causal=True, window=3).is_full
    assert MaskSpec(q_len=1, k_len=5, q_start=10, k_start=8, k_globals=2, causal=True, window=3, global_tokens=2).is_full
