"""Padding removal in the encoder at CPU inference (nmt.model.unpad): the real tokens' memory and every decoded token
equal the padded layout's, and the layout itself is exact."""

import pytest
import torch

from nmt.attention import Attention, AttentionConfig
from nmt.config import DecodeConfig
from nmt.decoding.search import decode
from nmt.model import build_model
from nmt.model import unpad as unpad_module
from nmt.model.unpad import Unpadded
from tests.test_model import VARIANT_SITES, tiny


def padded_layout(monkeypatch):
    """Make the encoder keep the padded layout, as it does in training: the oracle."""
    monkeypatch.setattr(unpad_module.Unpadded, "of", classmethod(lambda cls, lengths, length: None))


def test_layout_round_trip_and_no_layout_without_padding():
    lengths = torch.tensor([3, 1, 4])
    layout = Unpadded.of(lengths, 4)
    assert layout.index.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    x = torch.randn(3, 4, 5)
    real = torch.arange(4)[None, :] < lengths[:, None]  # (B, S)
    packed = layout.unpad(x)  # (N, 5)
    assert torch.equal(packed, x[real])
    assert torch.equal(layout.pad(packed), x * real[:, :, None])
    assert Unpadded.of(torch.tensor([4, 4]), 4) is None


@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
@pytest.mark.parametrize("variant", ["mha", "gqa", "sparse", "mixed"])
def test_unpadded_encoder_equals_the_padded_layout(variant, positions, monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny(attention=VARIANT_SITES[variant], positions=positions)).eval()
    src = torch.randint(3, 50, (4, 9))
    src_lengths = torch.tensor([9, 5, 2, 7])
    src = src.masked_fill(torch.arange(9)[None, :] >= src_lengths[:, None], 0)
    real = torch.arange(9)[None, :] < src_lengths[:, None]
    with torch.no_grad():
        memory = model.encode(src, src_lengths)
        padded_layout(monkeypatch)
        expected = model.encode(src, src_lengths)
    assert (memory[real] - expected[real]).abs().max() <= 1e-5
    assert not memory[~real].any()  # zeros where the padded layout may hold values nothing reads


@pytest.mark.parametrize("beam", [1, 4])
def test_decoded_tokens_are_the_padded_layouts(beam, monkeypatch):
    torch.manual_seed(1)
    model = build_model(tiny(vocab_size=64)).eval()
    src_lengths = torch.randint(2, 12, (6,))
    src = torch.randint(3, 64, (6, int(src_lengths.max())))
    src = src.masked_fill(torch.arange(src.size(1))[None, :] >= src_lengths[:, None], 0)
    cfg = DecodeConfig(beam=beam, max_len_a=1.5, max_len_b=5)
    with torch.inference_mode():
        unpadded = decode(model, src, src_lengths, cfg)
        padded_layout(monkeypatch)
        padded = decode(model, src, src_lengths, cfg)
    assert [[h.tokens for h in n] for n in unpadded] == [[h.tokens for h in n] for n in padded]
    assert [[round(h.score, 4) for h in n] for n in unpadded] == [[round(h.score, 4) for h in n] for n in padded]


def test_training_keeps_the_padded_layout(monkeypatch):
    """Autograd runs as measured: the padded layout (the unpadded one is CPU inference only)."""
    calls = []
    monkeypatch.setattr(unpad_module.Unpadded, "of", classmethod(lambda cls, *a: calls.append(a)))
    model = build_model(tiny())
    src = torch.randint(3, 50, (2, 5))
    model.encode(src, torch.tensor([5, 3])).sum().backward()
    assert calls == []
    with torch.no_grad():
        model.encode(src, torch.tensor([5, 3]))
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["cross", "cache", "no lengths"])
def test_attention_refuses_an_unpadded_input_it_cannot_take(kind):
    layout = Unpadded.of(torch.tensor([2, 1]), 2)
    attention = Attention(8, AttentionConfig(n_heads=2), cross=kind == "cross")
    x = torch.randn(3, 8)
    kwargs = {"memory": torch.randn(2, 2, 8)} if kind == "cross" else {}
    if kind == "cache":
        kwargs["cache"] = attention.new_cache()
    if kind != "no lengths":
        kwargs["lengths"] = torch.tensor([2, 1])
    with pytest.raises(ValueError, match="unpadded input is for self-attention without a cache, with lengths"):
        attention(x, unpadded=layout, **kwargs)
