"""Swappable attention: one config per site, one mask description, several backends, a KV cache.

Notation, used by every module of this package:

    B           batch size
    T           query length (the positions attending)
    S           key/source length (the positions attended to; S = T in self-attention without a cache)
    n_heads     query heads
    n_kv_heads  key/value heads (n_heads for MHA, 1 for MQA, between for GQA)
    head_dim    channels per head (d_model / n_heads)
    group       n_heads / n_kv_heads: the query heads that share one K/V head

Modules, in the order a call goes through them:

    config     AttentionConfig: what one site computes (heads, window, global tokens, backend, dropout)
    layer      Attention: project → attend → output, with a KVCache for incremental decoding (cache)
    masks      MaskSpec: which (query, key) pairs may interact, in absolute positions
    dispatch   attend: checks a call against the registry, resolves ``auto``, runs the kernel
    backends   REGISTRY: one entry per backend, what it can do (imports no torch)
    kernels    math, sdpa, matmul, flex, and the kernel signature every backend shares; band and flash beside

The names below load on first use (PEP 562), so ``nmt.attention.config`` — which the config modules need — imports
no torch: `nmt train` checks a config in about a second before loading the heavy libraries.
"""

from importlib import import_module

_EXPORTS = {
    "AttentionBackendError": "backends",
    "BACKENDS": "backends",
    "attend": "dispatch",
    "math_attention": "kernels",
    "sdpa_attention": "kernels",
    "KVCache": "cache",
    "AttentionConfig": "config",
    "Attention": "layer",
    "MaskSpec": "masks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nmt.attention' has no attribute {name!r}")
    return getattr(import_module(f"nmt.attention.{_EXPORTS[name]}"), name)
