"""The band backend (O(n·w) sliding window with gradients) against the math oracle."""

import pytest
import torch

from nmt.attention import AttentionBackendError, AttentionConfig, MaskSpec, attend
from nmt.config import AttentionSites, ModelConfig
from nmt.model import build_model


def case(window, causal, n_kv, padded=True, length=11):
    q = torch.randn(3, 4, length, 8, requires_grad=True)
    k = torch.randn(3, n_kv, length, 8, requires_grad=True)
    v = torch.randn(3, n_kv, length, 8, requires_grad=True)
    lengths = torch.tensor([length, 6, 0]) if padded else None
    mask = MaskSpec(q_len=length, k_len=length, q_lengths=lengths, k_lengths=lengths, causal=causal, window=window)
    return q, k, v, mask


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("window", [1, 3, 5, 11, 16])
def test_band_matches_math_forward_and_gradients(window, causal, n_kv):
    grads = {}
    for backend in ("math", "band"):
        torch.manual_seed(0)
        q, k, v, mask = case(window, causal, n_kv)
        out, _ = attend(backend, q, k, v, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = (out.detach(), q.grad, k.grad, v.grad)
    expected, got = grads["math"], grads["band"]
    assert (got[0] - expected[0]).abs().max() <= 1e-5
    assert got[0][2].abs().max() == 0  # the empty sequence
    for e, g in zip(expected[1:], got[1:]):
        assert (g - e).abs().max() <= 1e-4


def test_band_refuses_what_it_does_not_compute():
    q, k, v, _ = case(3, True, 2, padded=False)
    for mask, message in [
        (MaskSpec(q_len=11, k_len=11, causal=True), "needs a window|no window"),
        (MaskSpec(q_len=11, k_len=11, window=3, global_tokens=1), "global tokens"),
    ]:
        with pytest.raises(AttentionBackendError, match=message):
            attend("band", q[:, :, : mask.q_len], k[:, :, : mask.k_len], v[:, :, : mask.k_len], mask)
    with pytest.raises(ValueError, match=r"backend 'band' needs a window \(window=None\): it computes plain"):
        AttentionConfig(backend="band")
    with pytest.raises(ValueError, match=r"backend 'band' cannot express global tokens \(global_tokens=1\)"):
        AttentionConfig(backend="band", window=4, global_tokens=1)
    from nmt.attention import Attention

    with pytest.raises(ValueError, match=r"backend 'band' is for self-attention only \(not cross-attention\)"):
        Attention(32, AttentionConfig(n_heads=4, window=3, backend="band"), cross=True)


def test_a_model_with_band_self_attention_matches_sdpa_and_trains():
    def model(backend):
        torch.manual_seed(0)
        sites = AttentionSites(AttentionConfig(window=3, backend=backend), AttentionConfig(window=3, backend=backend),
                               AttentionConfig())
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


@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
def test_band_in_many_chunks_matches_math(causal, monkeypatch):
    """Long sequences run in chunks of query blocks; force several (of uneven size) on a short one."""
    from nmt.attention import band

    monkeypatch.setattr(band, "CHUNK_BYTES", 3 * 3 * 4 * 3 * 9 * 4)  # 3 blocks of (B 3, heads 4, 3 × span 9 fp32)
    grads = {}
    for backend in ("math", "band"):
        torch.manual_seed(0)
        q, k, v, mask = case(3, causal, 2, length=29)  # 10 blocks → chunks of 3, 3, 3, 1
        out, _ = attend(backend, q, k, v, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = (out.detach(), q.grad, k.grad, v.grad)
    for e, g in zip(grads["math"], grads["band"]):
        assert (g - e).abs().max() <= 1e-4
