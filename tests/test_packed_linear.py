"""The packed oneDNN output projection against F.linear: same values, current weights, autograd untouched."""

import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from nmt.model import packed_linear
from nmt.model.packed_linear import PackedLinear

pytestmark = pytest.mark.skipif(not packed_linear.AVAILABLE, reason="this torch build has no oneDNN linear ops")


@pytest.fixture(autouse=True)
def pack_any_size(monkeypatch):
    """The tests' layers are small: pack them all, so that the packed path is what they test (the size rule has a
    test of its own)."""
    monkeypatch.setattr(packed_linear, "MIN_PACKED_WEIGHT", 0)
    monkeypatch.setattr(packed_linear, "MIN_PACKED_MACS", 0)


def test_small_weights_and_calls_take_f_linear(monkeypatch):
    """oneDNN's per-call cost outweighs its gain below MIN_PACKED_WEIGHT elements or MIN_PACKED_MACS multiply-adds."""
    monkeypatch.setattr(packed_linear, "MIN_PACKED_WEIGHT", 16 * 40)
    monkeypatch.setattr(packed_linear, "MIN_PACKED_MACS", 4 * 16 * 40)
    for d_in, rows, packed in ((16, 4, True), (16, 3, False), (15, 8, False)):
        layer = PackedLinear(d_in, 40)
        x = torch.randn(rows, d_in)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert (id(layer.weight) in packed_linear._packed) == packed, (d_in, rows)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 16), (7, 16), (3, 5, 16), (2, 1, 16)])
def test_packed_equals_f_linear(shape, bias):
    torch.manual_seed(0)
    weight, x = torch.randn(40, 16), torch.randn(*shape)
    b = torch.randn(40) if bias else None
    with torch.inference_mode():
        assert packed_linear.packs(x, weight)
        got = packed_linear.linear(x, weight, b)
    assert got.shape == (*shape[:-1], 40)
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    strided = torch.randn(16, 7).t()  # (7, 16), not contiguous
    with torch.no_grad():
        got = packed_linear.linear(strided, weight, b)
    torch.testing.assert_close(got, F.linear(strided, weight, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beam", [1, 5])
def test_a_model_decodes_the_same_tokens_packed_and_through_f_linear(beam, monkeypatch):
    """Every PackedLinear of the model (attention input projections, feed-forward, output) at CPU inference: the
    tokens of cached greedy and beam decoding are those of F.linear everywhere."""
    from nmt.config import DecodeConfig, ModelConfig
    from nmt.decoding.search import decode
    from nmt.model import build_model

    monkeypatch.setattr(packed_linear, "avx512", lambda: True)  # whatever CPU the tests run on
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=300, d_model=64, n_heads=4, d_ff=128, encoder_layers=2,
                                    decoder_layers=2, dropout=0.0)).eval()
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 1 + 2 * 3 + 2 * 4  # output; per encoder layer qkv, FFN ×2; per decoder layer also kv
    assert all(m.bias is not None for m in packed if m is not model.output)
    src = torch.randint(4, 300, (6, 11))
    lengths = torch.tensor([11, 9, 7, 11, 4, 8])
    cfg = DecodeConfig(beam=beam, max_len_a=0, max_len_b=12)
    with torch.inference_mode():
        assert packed_linear.packs(torch.ones(1, 64), model.output.weight)
        got = [[h.tokens for h in hyps] for hyps in decode(model, src, lengths, cfg)]
        monkeypatch.setattr(packed_linear, "AVAILABLE", False)
        expected = [[h.tokens for h in hyps] for hyps in decode(model, src, lengths, cfg)]
    assert got == expected


def test_repacked_after_every_change_of_the_weight():
    """An optimizer step, load_state_dict and a copy in place all show in the next inference call."""
    torch.manual_seed(0)
    layer = PackedLinear(16, 40, bias=False)
    x = torch.randn(4, 16)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)

    check()
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(x).square().sum().backward()  # grad enabled: the F.linear path, with gradients
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    optimizer.step()
    check()
    layer.load_state_dict({"weight": torch.randn(40, 16)})
    check()
    with torch.no_grad():
        layer.weight.mul_(-2)
    check()


def test_training_autocast_and_other_dtypes_take_f_linear():
    weight = torch.randn(40, 16, requires_grad=True)
    x = torch.randn(3, 16)
    assert not packed_linear.packs(x, weight)  # grad enabled and the weight requires it
    with torch.no_grad():
        assert packed_linear.packs(x, weight)
        assert not packed_linear.packs(x.double(), weight.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not packed_linear.packs(x, weight)
    with torch.inference_mode():
        frozen = torch.randn(40, 16)  # an inference tensor has no version counter: never cached
        assert not packed_linear.packs(x, frozen)
        torch.testing.assert_close(packed_linear.linear(x, frozen), F.linear(x, frozen))


def test_packed_copies_are_dropped_with_their_weight_and_models_still_deep_copy():
    layer = PackedLinear(16, 40, bias=False)
    with torch.no_grad():
        layer(torch.randn(2, 16))
    key = id(layer.weight)
    assert key in packed_linear._packed
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        torch.testing.assert_close(twin(torch.ones(1, 16)), layer(torch.ones(1, 16)))
    del layer
    gc.collect()
    assert key not in packed_linear._packed


def test_a_trainable_bias_keeps_its_gradient_and_projections_pack_only_on_avx512(monkeypatch):
    """The packed path has no autograd: a bias that wants a gradient (its weight frozen) takes F.linear. The
    projections (avx512_only) take F.linear on a CPU without AVX-512, where packing gained nothing."""
    layer = PackedLinear(16, 8)
    layer.weight.requires_grad_(False)
    x = torch.randn(3, 16)
    assert not packed_linear.packs(x, layer.weight, layer.bias)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((8,), 3.0))
    projection = PackedLinear(16, 8, avx512_only=True)
    for has_avx512 in (False, True):
        monkeypatch.setattr(packed_linear, "avx512", lambda has=has_avx512: has)
        with torch.no_grad():
            torch.testing.assert_close(projection(x), F.linear(x, projection.weight, projection.bias))
        assert (id(projection.weight) in packed_linear._packed) == has_avx512
