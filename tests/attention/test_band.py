"""The band backend (O(n·(w + g)) sliding window, with or without global tokens, with gradients) against the math
oracle."""

import pytest
import torch

from nmt.attention import AttentionBackendError, AttentionConfig, MaskSpec, attend
from nmt.config import AttentionSites, ModelConfig
from nmt.model import build_model


def case(window, causal, n_kv, padded=True, length=11, global_tokens=0):
    """A batch of 3 (full length, 6, and an empty sequence when padded), 4 query heads of 8."""
    q = torch.randn(3, 4, length, 8, requires_grad=True)
    k = torch.randn(3, n_kv, length, 8, requires_grad=True)
    v = torch.randn(3, n_kv, length, 8, requires_grad=True)
    lengths = torch.tensor([length, 6, 0]) if padded else None
    mask = MaskSpec(q_len=length, k_len=length, q_lengths=lengths, k_lengths=lengths, causal=causal, window=window,
                    global_tokens=global_tokens)
    return q, k, v, mask


def outputs_and_gradients(backend, **case_args):
    """(out, dq, dk, dv) of one backend on the seeded case, through a loss that weighs every output differently."""
    torch.manual_seed(0)
    q, k, v, mask = case(**case_args)
    out, _ = attend(backend, q, k, v, mask)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def assert_matches_math(**case_args):
    expected, got = outputs_and_gradients("math", **case_args), outputs_and_gradients("band", **case_args)
    assert (got[0] - expected[0]).abs().max() <= 1e-5
    for e, g in zip(expected[1:], got[1:]):
        assert (g - e).abs().max() <= 1e-4
    return got


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("window", [1, 3, 5, 11, 16])
def test_band_matches_math_forward_and_gradients(window, causal, n_kv):
    out = assert_matches_math(window=window, causal=causal, n_kv=n_kv)[0]
    assert out[2].abs().max() == 0  # the empty sequence


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("window", [1, 3, 5, 16])
@pytest.mark.parametrize("global_tokens", [1, 2, 4, 7, 11, 14])  # 11 and 14: every position of the batch is global
def test_sparse_band_matches_math_forward_and_gradients(global_tokens, window, causal, n_kv):
    """Global keys inside a block's window are counted once; global rows see every key (causality permitting);
    padded and empty sequences have the same zeros and gradients as the oracle."""
    out = assert_matches_math(window=window, causal=causal, n_kv=n_kv, global_tokens=global_tokens)[0]
    assert out[2].abs().max() == 0  # the empty sequence


def test_sparse_band_without_padding_matches_math():
    assert_matches_math(window=4, causal=False, n_kv=2, global_tokens=3, padded=False, length=37)
    assert_matches_math(window=4, causal=True, n_kv=1, global_tokens=3, padded=False, length=37)


def test_band_refuses_what_it_does_not_compute():
    q, k, v, _ = case(3, True, 2, padded=False)
    with pytest.raises(AttentionBackendError, match="needs a window"):
        attend("band", q, k, v, MaskSpec(q_len=11, k_len=11, causal=True))
    with pytest.raises(ValueError, match=r"backend 'band' needs a window \(window=None\): it computes sliding"):
        AttentionConfig(backend="band")
    assert AttentionConfig(backend="band", window=4, global_tokens=1).global_tokens == 1  # sparse: band's too
    from nmt.attention import Attention

    with pytest.raises(ValueError, match=r"backend 'band' is for self-attention only \(not cross-attention\)"):
        Attention(32, AttentionConfig(n_heads=4, window=3, backend="band"), cross=True)


@pytest.mark.parametrize("global_tokens", [0, 2], ids=["window", "sparse"])
def test_a_model_with_band_self_attention_matches_sdpa_and_trains(global_tokens):
    def model(backend):
        torch.manual_seed(0)
        site = AttentionConfig(window=3, global_tokens=global_tokens, backend=backend)
        sites = AttentionSites(site, site, AttentionConfig())
        return build_model(ModelConfig(vocab_size=50, d_model=32, n_heads=4, d_ff=64, encoder_layers=2,
                                       decoder_layers=2, dropout=0.0, attention=sites))

    src, tgt = torch.randint(4, 50, (2, 9)), torch.randint(4, 50, (2, 7))
    lengths = torch.tensor([9, 5])
    band, sdpa = model("band"), model("sdpa")
    out = band(src, lengths, tgt)
    assert (out - sdpa(src, lengths, tgt)).abs().max() <= 1e-5
    out.sum().backward()
    assert all(p.grad is not None for p in band.parameters())
    # Cached decoding steps (which hold only the window's keys) reproduce the teacher-forced output.
    with torch.no_grad():
        band.eval()
        full = band(src, lengths, tgt)
        state = band.init_state(band.encode(src, lengths), lengths)
        steps = torch.cat([band.decode_step(tgt[:, t : t + 1], state) for t in range(tgt.size(1))], dim=1)
    assert (steps - full).abs().max() <= 1e-5


@pytest.mark.parametrize("global_tokens", [0, 2], ids=["window", "sparse"])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("chunks", [1, 2, 4, 10])
def test_band_in_many_chunks_matches_math(chunks, causal, global_tokens, monkeypatch):
    """Long sequences run in chunks of query blocks; force several (of uneven size) on a short one: 10 blocks of 3
    in chunks of 10; 5, 5; 3, 3, 3, 1; and ten of 1."""
    from nmt.attention import band

    per_chunk = -(-10 // chunks)
    span = (2 if causal else 3) * 3 + global_tokens  # a block's keys: its neighbourhood and the global keys
    monkeypatch.setattr(band, "CHUNK_BYTES", per_chunk * 3 * 4 * 3 * span * 4)  # blocks of (B 3, heads 4, 3 × span)
    calls, chunk = [], band._band_chunk
    monkeypatch.setattr(band, "_band_chunk", lambda *args: calls.append(1) or chunk(*args))
    assert_matches_math(window=3, causal=causal, n_kv=2, length=29, global_tokens=global_tokens)
    assert len(calls) == chunks
