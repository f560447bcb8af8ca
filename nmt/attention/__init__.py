"""Swappable attention: one config per site, one mask description, four backends, a KV cache."""

from nmt.attention.backends import AttentionBackendError, attend, math_attention, sdpa_attention
from nmt.attention.cache import KVCache
from nmt.attention.config import BACKENDS, AttentionConfig
from nmt.attention.layer import Attention
from nmt.attention.masks import MaskSpec

__all__ = [
    "BACKENDS",
    "Attention",
    "AttentionBackendError",
    "AttentionConfig",
    "KVCache",
    "MaskSpec",
    "attend",
    "math_attention",
    "sdpa_attention",
]
