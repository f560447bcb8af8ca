"""Swappable attention: one config per site, one mask description, several backends, a KV cache.

The names below load on first use (PEP 562), so ``nmt.attention.config`` — which the config modules need — imports
no torch: `nmt train` checks a config in about a second before loading the heavy libraries.
"""

from importlib import import_module

_EXPORTS = {
    "AttentionBackendError": "backends",
    "attend": "backends",
    "math_attention": "backends",
    "sdpa_attention": "backends",
    "KVCache": "cache",
    "BACKENDS": "config",
    "AttentionConfig": "config",
    "Attention": "layer",
    "MaskSpec": "masks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nmt.attention' has no attribute {name!r}")
    return getattr(import_module(f"nmt.attention.{_EXPORTS[name]}"), name)
