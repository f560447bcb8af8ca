"""The Attention module: against torch.nn.MultiheadAttention, padding invariance, cached decoding against full
recomputation, the cross-attention mask built once, bad modules refused at construction."""

import pytest
import torch
from torch import nn

from nmt.attention import Attention, AttentionConfig


def _copy_from_mha(ours: Attention, ref: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        if ours.cross:
            d = ref.embed_dim
            ours.q_proj.weight.copy_(ref.in_proj_weight[:d])
            ours.q_proj.bias.copy_(ref.in_proj_bias[:d])
            ours.kv_proj.weight.copy_(ref.in_proj_weight[d:])
            ours.kv_proj.bias.copy_(ref.in_proj_bias[d:])
        else:
            ours.qkv_proj.weight.copy_(ref.in_proj_weight)
            ours.qkv_proj.bias.copy_(ref.in_proj_bias)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("kind", ["encoder_self", "decoder_self", "cross"])
def test_mha_reproduces_torch_multihead_attention(kind, backend):
    d_model, n_heads = 32, 4
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    ours = Attention(
        d_model,
        AttentionConfig(n_heads=n_heads, backend=backend),
        causal=kind == "decoder_self",
        cross=kind == "cross",
    ).eval()
    _copy_from_mha(ours, ref)
    x = torch.randn(2, 7, d_model)
    memory = torch.randn(2, 10, d_model)
    if kind == "cross":
        lengths = torch.tensor([10, 6])
        pad = torch.arange(10)[None, :] >= lengths[:, None]
        expected, expected_w = ref(x, memory, memory, key_padding_mask=pad, average_attn_weights=False)
        got, got_w = ours(x, memory, memory_lengths=lengths, need_weights=backend == "math")
    elif kind == "encoder_self":
        lengths = torch.tensor([7, 4])
        pad = torch.arange(7)[None, :] >= lengths[:, None]
        expected, expected_w = ref(x, x, x, key_padding_mask=pad, average_attn_weights=False)
        got, got_w = ours(x, lengths=lengths, need_weights=backend == "math")
        # nn.MultiheadAttention computes padded query rows too; ours zeroes them, so compare real rows only.
        real = torch.arange(7)[None, :] < lengths[:, None]
        expected, got = expected[real], got[real]
        expected_w = expected_w.transpose(1, 2)[real]
        got_w = None if got_w is None else got_w.transpose(1, 2)[real]
    else:
        causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
        expected, expected_w = ref(x, x, x, attn_mask=causal, average_attn_weights=False)
        got, got_w = ours(x, need_weights=backend == "math")
    assert (got - expected).abs().max() <= 1e-5
    if got_w is not None:
        assert (got_w - expected_w).abs().max() <= 1e-5


def test_padding_leaves_real_positions_unchanged():
    torch.manual_seed(0)
    for cfg in (AttentionConfig(n_heads=4, n_kv_heads=2), AttentionConfig(n_heads=4, window=3, global_tokens=1)):
        layer = Attention(16, cfg).eval()
        x = torch.randn(1, 5, 16)
        alone, _ = layer(x, lengths=torch.tensor([5]))
        padded_x = torch.cat([x, torch.randn(1, 4, 16)], dim=1)
        batch = torch.cat([padded_x, torch.randn(1, 9, 16)])
        padded, _ = layer(batch, lengths=torch.tensor([5, 9]))
        assert (padded[0, :5] - alone[0]).abs().max() <= 1e-5
        # Padded query rows attend to nothing: zeros, so only out_proj's bias comes out.
        assert torch.allclose(padded[0, 5:], layer.out_proj.bias.expand(4, 16))


@pytest.mark.parametrize(
    "cfg",
    [
        AttentionConfig(n_heads=4),
        AttentionConfig(n_heads=4, n_kv_heads=2),
        AttentionConfig(n_heads=4, n_kv_heads=1),
        AttentionConfig(n_heads=4, window=3),
        AttentionConfig(n_heads=4, n_kv_heads=2, window=3, global_tokens=2),
    ],
    ids=["mha", "gqa", "mqa", "window", "sparse"],
)
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_self_attention_matches_full_recomputation(cfg, chunk):
    layer = Attention(16, cfg, causal=True).eval()
    x = torch.randn(2, 11, 16)
    full, _ = layer(x)
    cache = layer.new_cache()
    steps = [layer(x[:, t : t + chunk], cache=cache)[0] for t in range(0, 11, chunk)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_cached_decoding_refuses_padding():
    layer = Attention(16, AttentionConfig(n_heads=4), causal=True)
    with pytest.raises(ValueError, match="cached decoding takes no padding"):
        layer(torch.randn(1, 3, 16), lengths=torch.tensor([2]), cache=layer.new_cache())


def test_rope_is_exact_whatever_the_module_dtype():
    from nmt.model.positions import RotaryEmbedding

    reference = RotaryEmbedding(64)
    rope = RotaryEmbedding(64).to(torch.bfloat16)
    x = torch.randn(1, 1, 1, 64)
    first = rope(x.bfloat16(), 500)
    rope(x.bfloat16(), 2000)  # grows the tables
    assert torch.equal(rope(x.bfloat16(), 500), first)
    assert (first.float() - reference(x, 500)).abs().max() <= 2e-2


def test_cross_attention_projects_the_source_once():
    layer = Attention(16, AttentionConfig(n_heads=4, n_kv_heads=2), cross=True).eval()
    calls = []
    layer.kv_proj.register_forward_hook(lambda *args: calls.append(1))
    memory, lengths = torch.randn(2, 6, 16), torch.tensor([6, 3])
    x = torch.randn(2, 5, 16)
    full, _ = layer(x, memory, memory_lengths=lengths)
    calls.clear()
    cache = layer.new_cache()
    steps = [layer(x[:, t : t + 1], memory, memory_lengths=lengths, cache=cache)[0] for t in range(5)]
    assert len(calls) == 1
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5
    # Stored contiguous: strided K/V (views into the fused projection) halved SDPA's speed in `nmt bench translate`.
    assert cache.k.is_contiguous() and cache.v.is_contiguous()


@pytest.mark.parametrize("backend", ["sdpa", "matmul", "math"])
def test_cross_attention_mask_is_built_once_per_source_rows(backend):
    """The steps of one batch share one mask (its dense tensor built once); a reorder of the source rows, or other
    source lengths, makes a new one, and every step still matches attention without a cache."""
    layer = Attention(16, AttentionConfig(n_heads=4, backend=backend), cross=True).eval()
    memory, lengths = torch.randn(3, 6, 16), torch.tensor([6, 3, 1])
    x = torch.randn(3, 4, 16)
    cache = layer.new_cache()
    with torch.no_grad():
        first, _ = layer(x[:, :1], memory, memory_lengths=lengths, cache=cache)
        mask = cache.mask
        # The dense tensor, and matmul's additive bias made from it: built at the first step only.
        assert mask is not None and len(mask._memo) == (2 if backend == "matmul" else 1)
        built = dict(mask._memo)
        second, _ = layer(x[:, 1:2], memory, memory_lengths=lengths, cache=cache)
        assert cache.mask is mask and all(mask._memo[key] is value for key, value in built.items())
        assert mask._memo.keys() == built.keys()
        full, _ = layer(x[:, :2], memory, memory_lengths=lengths)
        assert (torch.cat([first, second], dim=1) - full).abs().max() <= 1e-5
        index = torch.tensor([2, 0])
        cache.reorder(index)
        assert cache.mask is None
        third, _ = layer(x[index, 2:3], memory[index], memory_lengths=lengths[index], cache=cache)
        assert cache.mask is not mask and cache.mask.k_lengths.tolist() == [1, 6]
        expected, _ = layer(x[index, :3], memory[index], memory_lengths=lengths[index])
        assert (third - expected[:, 2:3]).abs().max() <= 1e-5


def test_bad_attention_modules_fail_at_construction():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        Attention(30, AttentionConfig(n_heads=4))
    with pytest.raises(ValueError, match=r"backend 'flash' cannot window cross-attention \(window=4\).*bottom-right"):
        Attention(32, AttentionConfig(n_heads=4, window=4, backend="flash"), cross=True)
    with pytest.raises(ValueError, match="n_heads is unset"):
        Attention(32, AttentionConfig())
