"""The Attention module: projections sized by n_heads / n_kv_heads, a mask per call, any backend, a KV cache."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from nmt.attention.backends import attend
from nmt.attention.cache import KVCache
from nmt.attention.config import AttentionConfig
from nmt.attention.masks import MaskSpec
from nmt.positions import RotaryEmbedding


class Attention(nn.Module):
    """Multi-head attention with grouped K/V heads (MHA, GQA, MQA), optional window / global tokens.

    Self-attention projects q, k, v with one fused matrix; cross-attention projects q from the decoder and k, v
    (once per source sentence when cached) from the encoder output. Only ``n_kv_heads`` K/V heads are projected
    and cached, so MQA/GQA shrink the KV cache by ``n_heads / n_kv_heads``.
    """

    def __init__(
        self,
        d_model: int,
        cfg: AttentionConfig,
        *,
        causal: bool = False,
        cross: bool = False,
        bias: bool = True,
        rope: Optional[RotaryEmbedding] = None,
        site: str = "attention",
    ) -> None:
        super().__init__()
        if cfg.n_heads is None:
            raise ValueError(f"attention {site}: n_heads is unset; resolve the config with cfg.resolve(n_heads)")
        if d_model % cfg.n_heads:
            raise ValueError(f"attention {site}: d_model ({d_model}) must be divisible by n_heads ({cfg.n_heads})")
        if cross and causal:
            raise ValueError(f"attention {site}: cross-attention cannot be causal")
        if cross and rope is not None:
            raise ValueError(f"attention {site}: RoPE applies to self-attention only")
        if cross and cfg.backend == "band":
            raise ValueError(f"attention {site}: backend 'band' is for self-attention windows; use sdpa or flex")
        if cross and cfg.window is not None and cfg.backend == "flash":
            raise ValueError(
                f"attention {site}: backend 'flash' aligns windows bottom-right per sequence, which a cross-attention "
                f"window (window={cfg.window}) between source and target positions is not; use flex, sdpa or auto"
            )
        self.cfg = cfg.resolve(cfg.n_heads)
        self.site, self.causal, self.cross, self.rope = site, causal, cross, rope
        self.n_heads, self.n_kv_heads = self.cfg.n_heads, self.cfg.n_kv_heads
        self.head_dim = d_model // self.n_heads
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if cross:
            self.q_proj = nn.Linear(d_model, q_dim, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * kv_dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        self.out_proj = nn.Linear(q_dim, d_model, bias=bias)

    def new_cache(self) -> KVCache:
        if self.cross:
            return KVCache()
        return KVCache(window=self.cfg.window, global_tokens=self.cfg.global_tokens)

    def _heads(self, x: Tensor, n_heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, head_dim)

    def _project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv_proj(source).chunk(2, dim=-1)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)  # (B, n_kv_heads, S, head_dim)

    def forward(
        self,
        x: Tensor,
        memory: Optional[Tensor] = None,
        *,
        lengths: Optional[Tensor] = None,
        memory_lengths: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        need_weights: bool = False,
        backend: Optional[str] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Attend from ``x`` (B, T, d_model).

        Self-attention: keys are ``x`` itself (plus the cached past when ``cache`` is given, in which case ``x``
        holds only the new positions). Cross-attention: keys are ``memory`` (B, S, d_model), or the cache's.
        ``lengths`` (B,) marks right padding in ``x``; padded query rows come out as zeros. ``memory_lengths`` (B,)
        marks padding in ``memory``. ``backend`` overrides the configured one (``need_weights`` needs ``math``).
        Returns (output (B, T, d_model), weights (B, n_heads, T, keys) or None).
        """
        B, T, _ = x.shape
        if cache is not None and lengths is not None and not self.cross:
            raise ValueError(
                f"attention {self.site}: cached decoding takes no padding (lengths); padded keys would stay in the cache"
            )
        q_start = cache.length if cache is not None else 0
        if self.cross:
            q = self._heads(self.q_proj(x), self.n_heads)  # (B, n_heads, T, head_dim)
            if cache is None:
                k, v = self._project_kv(memory)
            else:
                if cache.is_empty:
                    # Contiguous copies: every decoding step reads them, and strided K/V slow SDPA's CPU kernel.
                    k, v = self._project_kv(memory)
                    cache.fill(k.contiguous(), v.contiguous())
                k, v = cache.k, cache.v
                cache.length += T
            mask = cache.mask if cache is not None else None
            # Without a window, the query positions do not matter: the same queries over the same source rows keep
            # the same mask (and its memoized tensors) from step to step.
            if (mask is None or self.cfg.window is not None or self.cfg.global_tokens or mask.q_len != T
                    or mask.k_len != k.size(2) or mask.k_lengths is not memory_lengths
                    or mask.q_lengths is not lengths):
                mask = MaskSpec(
                    q_len=T,
                    k_len=k.size(2),
                    q_start=q_start,
                    q_lengths=lengths,
                    k_lengths=memory_lengths,
                    window=self.cfg.window,
                    global_tokens=self.cfg.global_tokens,
                )
                if cache is not None:
                    cache.mask = mask
        else:
            q, k, v = self.qkv_proj(x).split(
                [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], -1
            )
            q = self._heads(q, self.n_heads)  # (B, n_heads, T, head_dim)
            k, v = self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)  # (B, n_kv_heads, T, head_dim)
            if self.rope is not None:
                q, k = self.rope(q, q_start), self.rope(k, q_start)
            k_start, k_globals = 0, 0
            if cache is not None:
                k, v, k_start, k_globals = cache.append(k, v)
            mask = MaskSpec(
                q_len=T,
                k_len=k.size(2),
                q_start=q_start,
                k_start=k_start,
                k_globals=k_globals,
                q_lengths=lengths,
                k_lengths=lengths if cache is None else None,
                causal=self.causal,
                window=self.cfg.window,
                global_tokens=self.cfg.global_tokens,
            )
        out, weights = attend(
            backend or self.cfg.backend,
            q,
            k,
            v,
            mask,
            dropout_p=self.cfg.dropout if self.training else 0.0,
            need_weights=need_weights,
            site=self.site,
        )
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, n_heads * head_dim)
        return self.out_proj(out), weights
