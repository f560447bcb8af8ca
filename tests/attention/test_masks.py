"""The mask description against the rules written out pair by pair."""

import itertools
import re
import textwrap

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
    assert MaskSpec(q_len=1, k_len=5, q_start=10, k_start=8, k_globals=2, causal=True, window=3,
                    global_tokens=2).is_full


def render(spec: MaskSpec) -> str:
    """The dense mask as the 0/1 grid MaskSpec's docstring draws: keys across, queries down, absolute positions."""
    cpu = torch.device("cpu")
    q_pos, k_pos = spec.positions(cpu)
    dense = spec.dense(cpu)
    allowed = torch.ones(spec.q_len, spec.k_len, dtype=torch.bool) if dense is None else dense[0, 0]
    width = max(len(str(p)) for p in q_pos.tolist() + k_pos.tolist())
    lines = ["q\\k  " + " ".join(f"{p:>{width}}" for p in k_pos.tolist())]
    for q, row in zip(q_pos.tolist(), allowed.tolist()):
        lines.append(f"{q:>3}  " + " ".join(f"{int(a):>{width}}" for a in row))
    return "\n".join(lines)


def test_the_docstring_grids_are_what_dense_builds():
    """Each ``MaskSpec(…)``:: block of the docstring, rendered from the call it names: the pictures cannot drift."""
    drawn = re.findall(r"``(MaskSpec\(.*?\))``::\n\n((?:        .*\n)+)", MaskSpec.__doc__)
    assert len(drawn) == 3  # causal with a window; bidirectional window plus global tokens; a cached step
    for call, grid in drawn:
        spec = eval(call, {"MaskSpec": MaskSpec})
        assert render(spec) == textwrap.dedent(grid).rstrip("\n"), call
    assert any(eval(call, {"MaskSpec": MaskSpec}).k_globals for call, _ in drawn)


def test_a_mask_is_reusable_only_where_query_positions_do_not_matter():
    lengths = torch.tensor([4, 2])
    full = MaskSpec(q_len=1, k_len=4, q_start=3, k_lengths=lengths)
    assert full.reusable_for(1, 4, None, lengths)
    assert not full.reusable_for(2, 4, None, lengths)  # other queries
    assert not full.reusable_for(1, 5, None, lengths)  # other keys
    assert not full.reusable_for(1, 4, None, lengths.clone())  # other source rows (a reorder, a new batch)
    assert not full.reusable_for(1, 4, torch.tensor([1, 1]), lengths)
    for where in (dict(window=2), dict(window=2, global_tokens=1), dict(causal=True)):
        assert not MaskSpec(q_len=1, k_len=4, q_start=3, k_lengths=lengths, **where).reusable_for(1, 4, None, lengths)
