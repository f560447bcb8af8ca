"""The Attention module: projections sized by n_heads / n_kv_heads, a mask per call, any backend, a KV cache."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from nmt.attention.backends import site_problem
from nmt.attention.cache import KVCache
from nmt.attention.config import AttentionConfig
from nmt.attention.dispatch import attend
from nmt.attention.masks import MaskSpec
from nmt.model.packed_linear import PackedLinear
from nmt.model.positions import RotaryEmbedding
from nmt.model.unpad import Unpadded


class Attention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017) with grouped K/V heads — MHA, GQA (Ainslie et al. 2023), MQA
    (Shazeer 2019) — and an optional window / global tokens (Beltagy et al. 2020, Longformer). Shape letters: see
    `nmt.attention`.

    Self-attention projects q, k, v with one fused matrix; cross-attention projects q from the decoder and k, v
    (once per source sentence when cached) from the encoder output. Only ``n_kv_heads`` K/V heads are projected
    and cached, so MQA/GQA shrink the KV cache by ``group = n_heads / n_kv_heads``. The constructor raises
    ValueError for what no call could compute (d_model not divisible by n_heads, a backend this site cannot use).
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
        problem = site_problem(cfg.backend, window=cfg.window, cross=cross)
        if problem is not None:
            raise ValueError(f"attention {site}: {problem}")
        self.cfg = cfg.resolve(cfg.n_heads)
        self.site, self.causal, self.cross, self.rope = site, causal, cross, rope
        self.n_heads, self.n_kv_heads = self.cfg.n_heads, self.cfg.n_kv_heads
        self.head_dim = d_model // self.n_heads
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        # CPU inference on AVX-512 runs the wide input projections through oneDNN, packed (nmt.model.packed_linear:
        # faster there; for square d_model → d_model products, cross-attention's queries and the output, it was not)
        if cross:
            self.q_proj = nn.Linear(d_model, q_dim, bias=bias)
            self.kv_proj = PackedLinear(d_model, 2 * kv_dim, bias=bias, avx512_only=True)
        else:
            self.qkv_proj = PackedLinear(d_model, q_dim + 2 * kv_dim, bias=bias, avx512_only=True)
        self.out_proj = nn.Linear(q_dim, d_model, bias=bias)
        self.recording: Optional[list[Tensor]] = None  # where to append each call's weights, while recorded
        # While gated (Seq2Seq.head_gates): the site's gates (layers, n_heads) or (layers, B, n_heads) and this
        # layer's row. The row is taken at every call, so each pass builds its own autograd graph to the gates.
        self.head_gate: Optional[tuple[Tensor, int]] = None

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

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None,
                memory_lengths: Optional[Tensor] = None, cache: Optional[KVCache] = None, need_weights: bool = False,
                backend: Optional[str] = None, unpadded: Optional[Unpadded] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Attend from ``x`` (B, T, d_model): project, attend, project back.

        Self-attention: keys are ``x`` itself (plus the cached past when ``cache`` is given, in which case ``x``
        holds only the new positions). Cross-attention: keys are ``memory`` (B, S, d_model), or the cache's.
        ``lengths`` (B,) marks right padding in ``x``; padded query rows come out as zeros. ``memory_lengths`` (B,)
        marks padding in ``memory``. ``backend`` overrides the configured one (``need_weights`` needs ``math``).
        ``unpadded`` (self-attention without a cache, with ``lengths``): ``x`` is (N, d_model), only the real tokens
        of a (B, T) batch laid out as it says (nmt.model.unpad), and so is the output; attention itself runs on the
        (B, T) layout. Returns (output (B, T, d_model) or (N, d_model), weights (B, n_heads, T, keys) or None).
        Raises ValueError for padding in cached self-attention or an unpadded input it cannot take,
        AttentionBackendError where the backend cannot compute the call.
        """
        if unpadded is not None and (self.cross or cache is not None or lengths is None):
            raise ValueError(f"attention {self.site}: unpadded input is for self-attention without a cache, "
                             "with lengths")
        if self.cross:
            q, k, v, mask = self._cross_inputs(x, memory, lengths, memory_lengths, cache)
        else:
            q, k, v, mask = self._self_inputs(x, lengths, cache, unpadded)
        dropout_p = self.cfg.dropout if self.training else 0.0
        recording = self.recording is not None  # Seq2Seq.recording_attention: on math, which returns the weights
        out, weights = attend("math" if recording else backend or self.cfg.backend, q, k, v, mask, dropout_p=dropout_p,
                              need_weights=need_weights or recording, site=self.site)  # (B, n_heads, T, head_dim)
        if recording:
            self.recording.append(weights)
        if self.head_gate is not None:
            out = self._gate(out)
        out = out.transpose(1, 2).flatten(2)  # (B, T, n_heads · head_dim)
        if unpadded is not None:
            out = unpadded.unpad(out)  # (N, n_heads · head_dim)
        return self.out_proj(out), weights

    def _gate(self, out: Tensor) -> Tensor:
        """Each head's output (B, n_heads, T, head_dim) times its gate ξ_h (Michel et al. 2019, §2.3 and §4.1: a head
        is masked by ξ_h = 0 and its importance is |∂L/∂ξ_h| at ξ = 1). After every backend and cache path, so it holds
        for cached decoding and for beam search's cross-attention, where a sentence's beams are extra query rows
        (the gate is per head, not per row). A (B, n_heads) row gates each batch row on its own: teacher-forced
        passes only, as B must be this call's batch."""
        gates, row = self.head_gate
        gate = gates[row].to(out.dtype)  # (n_heads,) or (B, n_heads)
        if gate.size(-1) != self.n_heads:
            raise ValueError(f"attention {self.site}: {gate.size(-1)} head gates for {self.n_heads} heads")
        return out * gate[..., None, None]

    def _self_inputs(
        self, x: Tensor, lengths: Optional[Tensor], cache: Optional[KVCache], unpadded: Optional[Unpadded] = None
    ) -> tuple[Tensor, Tensor, Tensor, MaskSpec]:
        """q, k, v and the mask of self-attention: keys are ``x``'s own positions after the cached ones (``x``
        unpadded as ``unpadded`` says, when given: projected so, attended in the (B, T) layout)."""
        if cache is not None and lengths is not None:
            raise ValueError(
                f"attention {self.site}: cached decoding takes no padding (lengths); "
                "padded keys would stay in the cache"
            )
        q_start = cache.length if cache is not None else 0
        kv_dim = self.n_kv_heads * self.head_dim
        qkv = self.qkv_proj(x)  # (B, T, q_dim + 2 · kv_dim), or (N, …) unpadded
        if unpadded is not None:
            qkv = unpadded.pad(qkv)  # (B, T, q_dim + 2 · kv_dim)
        q, k, v = qkv.split([self.n_heads * self.head_dim, kv_dim, kv_dim], -1)
        q = self._heads(q, self.n_heads)  # (B, n_heads, T, head_dim)
        k, v = self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)  # (B, n_kv_heads, T, head_dim)
        if self.rope is not None:
            q, k = self.rope(q, q_start), self.rope(k, q_start)
        k_start, k_globals = 0, 0
        if cache is not None:
            k, v, k_start, k_globals = cache.append(k, v)  # (B, n_kv_heads, S, head_dim): cached, then new
        mask = MaskSpec(q_len=q.size(2), k_len=k.size(2), q_start=q_start, k_start=k_start, k_globals=k_globals,
                        q_lengths=lengths, k_lengths=lengths if cache is None else None, causal=self.causal,
                        window=self.cfg.window, global_tokens=self.cfg.global_tokens)
        return q, k, v, mask

    def _cross_inputs(
        self, x: Tensor, memory: Optional[Tensor], lengths: Optional[Tensor], memory_lengths: Optional[Tensor],
        cache: Optional[KVCache],
    ) -> tuple[Tensor, Tensor, Tensor, MaskSpec]:
        """q from ``x``, k and v from ``memory`` (projected once per source when cached), and the mask (the cached
        step's again where `MaskSpec.reusable_for` allows, so its dense tensor is built once per source rows)."""
        q = self._heads(self.q_proj(x), self.n_heads)  # (B, n_heads, T, head_dim)
        if cache is None:
            k, v = self._project_kv(memory)  # (B, n_kv_heads, S, head_dim)
            q_start, mask = 0, None
        else:
            if cache.is_empty:
                # Contiguous copies: every decoding step reads them, and strided K/V slow SDPA's CPU kernel.
                k, v = self._project_kv(memory)
                cache.fill(k.contiguous(), v.contiguous())
            k, v = cache.k, cache.v  # (B, n_kv_heads, S, head_dim)
            q_start, mask = cache.length, cache.mask
            cache.length += x.size(1)
        if mask is None or not mask.reusable_for(x.size(1), k.size(2), lengths, memory_lengths):
            mask = MaskSpec(q_len=x.size(1), k_len=k.size(2), q_start=q_start, q_lengths=lengths,
                            k_lengths=memory_lengths, window=self.cfg.window, global_tokens=self.cfg.global_tokens)
            if cache is not None:
                cache.mask = mask
        return q, k, v, mask
