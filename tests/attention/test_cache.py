"""The KV cache: what it keeps (the global positions and the last window), its size in bytes against the formula,
and beam-search reorders against recomputation."""

import pytest
import torch

from nmt.attention import Attention, AttentionConfig, KVCache


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_reordered_cache_matches_recomputation(grad):
    """Beam search: after reordering rows by beam index (twice: pending orders compose), the next step equals
    recomputing the reordered prefixes. Without autograd the reorder is gathered straight into the grown cache."""
    for cfg in (AttentionConfig(n_heads=4, n_kv_heads=2), AttentionConfig(n_heads=4, n_kv_heads=1, window=3)):
        layer = Attention(16, cfg, causal=True).eval()
        x = torch.randn(4, 6, 16)
        cache = layer.new_cache()
        with torch.set_grad_enabled(grad):
            for t in range(5):
                layer(x[:, t : t + 1], cache=cache)
            first, then = torch.tensor([1, 2, 0, 3]), torch.tensor([1, 1, 3, 2])
            index = first[then]
            cache.reorder(first)
            cache.reorder(then)
            step, _ = layer(x[index, 5:6], cache=cache)
        expected, _ = layer(torch.cat([x[index, :5], x[index, 5:6]], dim=1))
        assert (step[:, 0] - expected[:, 5]).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cache_bytes_follow_the_formula(dtype):
    B, T, d_model, n_heads, head_dim = 3, 12, 64, 8, 8
    sizes = {}
    for name, cfg in {
        "mha": AttentionConfig(n_heads=n_heads),
        "gqa": AttentionConfig(n_heads=n_heads, n_kv_heads=2),
        "mqa": AttentionConfig(n_heads=n_heads, n_kv_heads=1),
        "window": AttentionConfig(n_heads=n_heads, n_kv_heads=2, window=5),
        "sparse": AttentionConfig(n_heads=n_heads, n_kv_heads=2, window=5, global_tokens=2),
    }.items():
        layer = Attention(d_model, cfg, causal=True).to(dtype).eval()
        cache = layer.new_cache()
        with torch.no_grad():
            for t in range(T):
                layer(torch.randn(B, 1, d_model, dtype=dtype), cache=cache)
        kept = min(T, cfg.window + cfg.global_tokens) if cfg.window else T
        n_kv = cfg.resolve(n_heads).n_kv_heads
        assert cache.k.shape == (B, n_kv, kept, head_dim)
        assert cache.nbytes == 2 * B * kept * n_kv * head_dim * torch.finfo(dtype).bits // 8
        # Nothing larger hides behind the views: the storage is exactly what is reported.
        assert cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes() == cache.nbytes
        sizes[name] = cache.nbytes
        # Beam search's pending reorder (to 2 rows here) counts the rows it will hold, and measuring leaves it pending.
        cache.reorder(torch.tensor([2, 0]))
        assert cache.nbytes == sizes[name] * 2 // B and cache._order is not None
        assert cache.nbytes == cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes()
    assert sizes["mha"] == n_heads * sizes["mqa"]
    assert sizes["mha"] == (n_heads // 2) * sizes["gqa"]


def test_cache_layout_keeps_globals_and_last_window():
    cache = KVCache(window=3, global_tokens=2)
    for position in range(8):
        value = torch.full((1, 1, 1, 1), float(position))
        cache.append(value, value)
    assert cache.k.flatten().tolist() == [0.0, 1.0, 5.0, 6.0, 7.0]
    assert (cache.k_globals, cache.k_start, cache.length) == (2, 5, 8)
