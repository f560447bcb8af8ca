"""Encoder–decoder Transformer whose three attention sites are configured independently."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.attention import Attention, AttentionBackendError, KVCache
from nmt.attention.backends import static_problem
from nmt.config import ModelConfig
from nmt.packed_linear import PackedLinear
from nmt.positions import RotaryEmbedding, SinusoidalPositions

Weights = Optional[list]  # collector for per-layer attention weights (math backend), or None


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inner = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.outer = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.activation = F.relu if cfg.activation == "relu" else F.gelu
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.inner(x))
        # Dropout is the identity in eval mode; skipping the call saves dispatch on every decoding step.
        return self.outer(self.dropout(h) if self.training else h)


class Sublayer(nn.Module):
    """Residual around ``fn`` with a LayerNorm before it (pre-norm) or after the sum (post-norm)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            y = fn(self.norm(x))
            return x + (self.dropout(y) if self.training else y)
        y = fn(x)
        return self.norm(x + (self.dropout(y) if self.training else y))


def _attend(attention: Attention, weights: Weights, *args, **kwargs) -> Tensor:
    """Run one attention call; with a weights collector, on the math backend, keeping its weights."""
    if weights is None:
        return attention(*args, **kwargs)[0]
    out, w = attention(*args, need_weights=True, backend="math", **kwargs)
    weights.append(w)
    return out


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: Optional[RotaryEmbedding]) -> None:
        super().__init__()
        self.self_attn = Attention(cfg.d_model, cfg.site("encoder_self"), bias=cfg.bias, rope=rope, site="encoder_self")
        self.feed_forward = FeedForward(cfg)
        self.attn_block, self.ff_block = Sublayer(cfg), Sublayer(cfg)

    def forward(self, x: Tensor, lengths: Optional[Tensor], weights: Weights = None) -> Tensor:
        x = self.attn_block(x, lambda h: _attend(self.self_attn, weights, h, lengths=lengths))
        return self.ff_block(x, self.feed_forward)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: Optional[RotaryEmbedding]) -> None:
        super().__init__()
        self.self_attn = Attention(
            cfg.d_model, cfg.site("decoder_self"), causal=True, bias=cfg.bias, rope=rope, site="decoder_self"
        )
        self.cross_attn = Attention(cfg.d_model, cfg.site("cross"), cross=True, bias=cfg.bias, site="cross")
        self.feed_forward = FeedForward(cfg)
        self.self_block, self.cross_block, self.ff_block = Sublayer(cfg), Sublayer(cfg), Sublayer(cfg)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_lengths: Optional[Tensor],
        caches: Optional[tuple[KVCache, KVCache]] = None,
        weights: Optional[dict[str, list]] = None,
        beams: int = 1,
    ) -> Tensor:
        """``beams`` > 1 (cached decoding only): every ``beams`` consecutive rows of ``x`` share one row of
        ``memory`` and of the cross-attention cache (see DecoderState)."""
        self_cache, cross_cache = caches if caches is not None else (None, None)
        self_w = weights["decoder_self"] if weights is not None else None
        cross_w = weights["cross"] if weights is not None else None

        def cross(h: Tensor) -> Tensor:
            rows, T, d = h.shape
            # A sentence's beams become extra queries of its one source row: same keys, so the same result, with
            # the source K/V stored and reordered once per sentence instead of once per beam.
            h = h.reshape(rows // beams, beams * T, d)  # (sentences, beams · T, d_model)
            out = _attend(self.cross_attn, cross_w, h, memory, memory_lengths=memory_lengths, cache=cross_cache)
            return out.reshape(rows, T, d)  # (rows, T, d_model)

        # Target padding needs no mask here: it sits after every real token, so causality already hides it.
        x = self.self_block(x, lambda h: _attend(self.self_attn, self_w, h, cache=self_cache))
        x = self.cross_block(x, cross)
        return self.ff_block(x, self.feed_forward)


@dataclass
class DecoderState:
    """What incremental decoding carries between steps: per-layer (self, cross) caches and the source.

    Decoder rows are hypotheses; each ``beams`` consecutive rows decode the same source sentence. The cross-attention
    caches, ``memory`` and ``memory_lengths`` hold one row per sentence (row i of the decoder reads sentence
    i // beams), so beam search never copies source keys and values per beam. ``share_sources`` is False where a
    cross-attention window makes query positions matter; there ``beams`` stays 1 and every row has its own copy.
    """

    caches: list[tuple[KVCache, KVCache]]
    memory: Tensor
    memory_lengths: Optional[Tensor]
    beams: int = 1
    share_sources: bool = True

    @property
    def length(self) -> int:
        return self.caches[0][0].length

    def _reorder_sources(self, index: Tensor) -> None:
        for _, cross_cache in self.caches:
            cross_cache.reorder(index)
        self.memory = self.memory.index_select(0, index)
        if self.memory_lengths is not None:
            self.memory_lengths = self.memory_lengths.index_select(0, index)

    def reorder(self, index: Tensor) -> None:
        """Any reordering: decoder row i continues old row ``index[i]``. Afterwards every row has its own source."""
        sources = index
        if self.beams > 1:
            sentence_of_row = torch.arange(self.memory.size(0), device=index.device).repeat_interleave(self.beams)
            sources, self.beams = sentence_of_row.index_select(0, index), 1
        for self_cache, _ in self.caches:
            self_cache.reorder(index)
        self._reorder_sources(sources)

    def select_beams(self, rows: Tensor, sentences: Tensor, beams: int) -> None:
        """Beam search: decoder row i continues old row ``rows[i]``, and the new rows are ``beams`` per sentence for
        the old sentences ``sentences`` (increasing), so ``rows[i]`` decodes old sentence ``sentences[i // beams]``."""
        if not self.share_sources:
            self.reorder(rows)
            return
        for self_cache, _ in self.caches:
            self_cache.reorder(rows)
        if len(sentences) != self.memory.size(0):  # an increasing subset of the same size keeps every sentence
            self._reorder_sources(sentences)
        self.beams = beams

    def self_cache_bytes(self) -> int:
        return sum(self_cache.nbytes for self_cache, _ in self.caches)

    def cross_cache_bytes(self) -> int:
        return sum(cross_cache.nbytes for _, cross_cache in self.caches)


class Seq2Seq(nn.Module):
    """Pre-norm (or post-norm) Transformer with scaled, optionally tied embeddings and sinusoidal or rotary positions."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_scale = math.sqrt(d)
        self.src_embed = nn.Embedding(_round_up(cfg.vocab_size, cfg.vocab_pad_multiple), d, padding_idx=cfg.pad_id)
        if cfg.shared_vocab and cfg.tie_embeddings:
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = nn.Embedding(
                _round_up(cfg.target_vocab_size, cfg.vocab_pad_multiple), d, padding_idx=cfg.pad_id
            )
        self.output = PackedLinear(d, self.tgt_embed.num_embeddings, bias=False)  # CPU inference: oneDNN, packed
        self.positions = SinusoidalPositions(d) if cfg.positions == "sinusoidal" else None
        enc_rope = dec_rope = None
        if cfg.positions == "rope":
            enc_rope = RotaryEmbedding(d // cfg.site("encoder_self").n_heads)
            dec_rope = RotaryEmbedding(d // cfg.site("decoder_self").n_heads)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg, enc_rope) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg, dec_rope) for _ in range(cfg.decoder_layers))
        pre_norm = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self._checked: set[tuple] = set()
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embed in {self.src_embed, self.tgt_embed}:
            # With the √d_model scale, N(0, d^-1/2) gives embeddings of unit scale (as fairseq does).
            nn.init.normal_(embed.weight, std=self.cfg.d_model**-0.5)
            with torch.no_grad():
                embed.weight[self.cfg.pad_id].zero_()

    def size(self) -> tuple[int, int]:
        """(parameters, bytes), counting tied matrices once."""
        unique = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in unique), sum(p.numel() * p.element_size() for p in unique)

    def attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def check_backends(self, device: torch.device, dtype: torch.dtype, training: bool) -> None:
        """Fail before any compute when a configured backend cannot run here (e.g. ``flash`` on CPU)."""
        key = (device, dtype, training)
        if key in self._checked:
            return
        for layer in self.attention_layers():
            problem = static_problem(layer.cfg.backend, device, dtype, training)
            if problem is not None:
                raise AttentionBackendError(f"attention {layer.site}: {problem}")
        self._checked.add(key)

    def _check(self, x: Tensor) -> None:
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else self.src_embed.weight.dtype
        self.check_backends(x.device, dtype, self.training and torch.is_grad_enabled())

    def _embed(self, embed: nn.Embedding, tokens: Tensor, start: int = 0) -> Tensor:
        x = embed(tokens) * self.embed_scale  # (B, T, d_model)
        if self.positions is not None:
            x = self.positions(x, start)
        return self.dropout(x) if self.training else x

    def encode(
        self, src: Tensor, src_lengths: Optional[Tensor] = None, weights: Weights = None
    ) -> Tensor:
        """src (B, S) token ids, right-padded to ``src_lengths`` (B,) → memory (B, S, d_model)."""
        self._check(src)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, src_lengths, weights)
        return self.encoder_norm(x)

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.output(self.decoder_norm(x))  # (B, T, padded vocab)
        vocab = self.cfg.target_vocab_size
        return logits if logits.size(-1) == vocab else logits[..., :vocab]  # (B, T, vocab)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        src_lengths: Optional[Tensor] = None,
        weights: Optional[dict[str, list]] = None,
    ) -> Tensor:
        """Teacher-forced decoding: tgt_in (B, T) → logits (B, T, vocab); position t sees tgt_in[:, :t+1]."""
        return self._logits(self._decoder_states(tgt_in, memory, src_lengths, weights))

    def _decoder_states(
        self, tgt_in: Tensor, memory: Tensor, src_lengths: Optional[Tensor], weights: Optional[dict[str, list]] = None
    ) -> Tensor:
        self._check(tgt_in)
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder_layers:
            x = layer(x, memory, src_lengths, weights=weights)
        return x  # (B, T, d_model), before the final norm

    def forward(self, src: Tensor, src_lengths: Optional[Tensor], tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src, src_lengths), src_lengths)

    def features(self, src: Tensor, src_lengths: Optional[Tensor], tgt_in: Tensor) -> Tensor:
        """The decoder's output before the vocabulary projection, (B, T, d_model): ``forward`` is
        ``F.linear(features, output_weight())``. Training projects it inside the loss (nmt.loss)."""
        memory = self.encode(src, src_lengths)
        return self.decoder_norm(self._decoder_states(tgt_in, memory, src_lengths))

    def output_weight(self) -> Tensor:
        """The projection's rows for the real vocabulary (vocab, d_model), without the rows padding it to a multiple."""
        return self.output.weight[: self.cfg.target_vocab_size]

    def init_state(self, memory: Tensor, src_lengths: Optional[Tensor] = None) -> DecoderState:
        caches = [(layer.self_attn.new_cache(), layer.cross_attn.new_cache()) for layer in self.decoder_layers]
        cross = self.cfg.site("cross")
        # Beams can share a source row only where cross-attention ignores query positions (no window, no globals).
        share = cross.window is None and not cross.global_tokens
        return DecoderState(caches, memory, src_lengths, share_sources=share)

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Incremental decoding: tokens (B, n) at the next n positions → logits (B, n, vocab), caches updated."""
        self._check(tokens)
        x = self._embed(self.tgt_embed, tokens, start=state.length)
        for layer, caches in zip(self.decoder_layers, state.caches):
            x = layer(x, state.memory, state.memory_lengths, caches=caches, beams=state.beams)
        return self._logits(x)


def build_model(cfg: ModelConfig) -> Seq2Seq:
    return Seq2Seq(cfg)
