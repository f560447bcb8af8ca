"""Encoder–decoder Transformer whose three attention sites are configured independently."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.attention import Attention, AttentionBackendError, KVCache
from nmt.attention.backends import static_problem
from nmt.config import SITES, ModelConfig
from nmt.model.packed_linear import PackedLinear
from nmt.model.positions import RotaryEmbedding, SinusoidalPositions
from nmt.model.unpad import Unpadded


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # CPU inference on AVX-512: oneDNN, packed (nmt.model.packed_linear)
        self.inner = PackedLinear(cfg.d_model, cfg.d_ff, bias=cfg.bias, avx512_only=True)
        self.outer = PackedLinear(cfg.d_ff, cfg.d_model, bias=cfg.bias, avx512_only=True)
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


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: Optional[RotaryEmbedding]) -> None:
        super().__init__()
        self.self_attn = Attention(cfg.d_model, cfg.site("encoder_self"), bias=cfg.bias, rope=rope, site="encoder_self")
        self.feed_forward = FeedForward(cfg)
        self.attn_block, self.ff_block = Sublayer(cfg), Sublayer(cfg)

    def forward(self, x: Tensor, lengths: Optional[Tensor], unpadded: Optional[Unpadded] = None) -> Tensor:
        """x (B, S, d_model), or (N, d_model) with ``unpadded`` (its real tokens only) → the same shape."""
        x = self.attn_block(x, lambda h: self.self_attn(h, lengths=lengths, unpadded=unpadded)[0])
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
        beam: int = 1,
    ) -> Tensor:
        """``beam`` > 1 (cached decoding only): every ``beam`` consecutive rows of ``x`` share one row of
        ``memory`` and of the cross-attention cache (see DecoderState)."""
        self_cache, cross_cache = caches if caches is not None else (None, None)

        def cross(h: Tensor) -> Tensor:
            rows, T, d = h.shape
            # A sentence's beams become extra queries of its one source row: same keys, so the same result, with
            # the source K/V stored and reordered once per sentence instead of once per beam.
            h = h.reshape(rows // beam, beam * T, d)  # (sentences, beam · T, d_model)
            out = self.cross_attn(h, memory, memory_lengths=memory_lengths, cache=cross_cache)[0]
            return out.reshape(rows, T, d)  # (rows, T, d_model)

        # Target padding needs no mask here: it sits after every real token, so causality already hides it.
        x = self.self_block(x, lambda h: self.self_attn(h, cache=self_cache)[0])
        x = self.cross_block(x, cross)
        return self.ff_block(x, self.feed_forward)


@dataclass
class DecoderState:
    """What incremental decoding carries between steps: per-layer (self, cross) caches and the source.

    Decoder rows are hypotheses; each ``beam`` consecutive rows decode the same source sentence. The cross-attention
    caches, ``memory`` and ``memory_lengths`` hold one row per sentence (row i of the decoder reads sentence
    i // beam), so beam search never copies source keys and values per beam. ``share_sources`` is False where a
    cross-attention window makes query positions matter; there ``beam`` stays 1 and every row has its own copy.
    """

    caches: list[tuple[KVCache, KVCache]]
    memory: Tensor
    memory_lengths: Optional[Tensor]
    beam: int = 1  # decoder rows per source sentence
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
        if self.beam > 1:
            sentence_of_row = torch.arange(self.memory.size(0), device=index.device).repeat_interleave(self.beam)
            sources, self.beam = sentence_of_row.index_select(0, index), 1
        for self_cache, _ in self.caches:
            self_cache.reorder(index)
        self._reorder_sources(sources)

    def select_beams(self, rows: Tensor, sentences: Tensor, beam: int) -> None:
        """Beam search: decoder row i continues old row ``rows[i]``, and the new rows are ``beam`` per sentence for
        the old sentences ``sentences`` (increasing), so ``rows[i]`` decodes old sentence ``sentences[i // beam]``."""
        if not self.share_sources:
            self.reorder(rows)
            return
        for self_cache, _ in self.caches:
            self_cache.reorder(rows)
        if len(sentences) != self.memory.size(0):  # an increasing subset of the same size keeps every sentence
            self._reorder_sources(sentences)
        self.beam = beam

    def self_cache_bytes(self) -> int:
        return sum(self_cache.nbytes for self_cache, _ in self.caches)

    def cross_cache_bytes(self) -> int:
        return sum(cross_cache.nbytes for _, cross_cache in self.caches)


class Seq2Seq(nn.Module):
    """Pre-norm (or post-norm) Transformer with scaled, optionally tied embeddings and sinusoidal or rotary
    positions."""

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

    def parameter_count(self) -> tuple[int, int]:
        """(parameters, bytes of parameters), counting tied matrices once."""
        unique = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in unique), sum(p.numel() * p.element_size() for p in unique)

    @contextlib.contextmanager
    def recording_attention(self) -> Iterator[dict[str, list[Tensor]]]:
        """Record attention weights while the block runs: ``{site: [weights per call]}`` for the sites
        ``encoder_self``, ``decoder_self`` and ``cross``, each call's weights (B, n_heads, T, keys) in the order the
        layers ran (a teacher-forced pass: one per layer). The recorded calls run on the ``math`` backend, the only one
        that returns weights; outside the block every layer computes as configured.

            with model.recording_attention() as weights:
                model.decode(tgt_in, model.encode(src, src_lengths), src_lengths)
            weights["cross"][-1]  # the last layer's cross-attention
        """
        weights: dict[str, list[Tensor]] = {site: [] for site in SITES}
        layers = self.attention_layers()
        for layer in layers:
            layer.recording = weights[layer.site]
        try:
            yield weights
        finally:
            for layer in layers:
                layer.recording = None

    @contextlib.contextmanager
    def head_gates(
        self, values: Optional[dict[str, Tensor]] = None, *, requires_grad: bool = False, batch: Optional[int] = None
    ) -> Iterator[dict[str, Tensor]]:
        """Gate each attention head's output while the block runs (Michel et al. 2019, "Are Sixteen Heads Really
        Better than One?", §2.3 and §4.1): head h of a layer contributes ξ_h · Att_h(x) to the output projection, so
        ξ_h = 0 masks the head and ∂L/∂ξ_h at ξ = 1 is its importance. Yields ``{site: gates}`` for the sites
        ``encoder_self``, ``decoder_self`` and ``cross``, each gates tensor (layers, n_heads) in the order the layers
        run, or (layers, batch, n_heads) with ``batch`` (one gate per batch row: teacher-forced passes of exactly
        that batch, whose summed loss then gives each row's own gradient). The layers read the yielded tensors at
        every call, so edits inside the block (``gates["cross"][1, 2] = 0``) take effect, on every path: teacher
        forcing, cached greedy and beam decoding, any backend. Outside the block no layer is gated.

        ``values``: the gates to use, e.g. autograd inputs (all three sites, each of the shape above); otherwise
        ones in the parameters' dtype and device, leaves with ``requires_grad``. Gradients reach the gates whatever
        the parameters' own ``requires_grad``.

            with model.head_gates(requires_grad=True) as gates:
                loss = F.cross_entropy(model(src, src_lengths, tgt_in).flatten(0, 1), tgt_out.flatten())
                grads = torch.autograd.grad(loss, list(gates.values()))  # (layers, n_heads) per site
        """
        layers = self.attention_layers()
        if any(layer.head_gate is not None for layer in layers):  # the inner block's exit would ungate the outer's
            raise RuntimeError("head_gates blocks do not nest: set the gates you want in the one block")
        by_site = {site: [layer for layer in layers if layer.site == site] for site in SITES}
        weight = self.src_embed.weight
        if values is None:
            values = {site: torch.ones(len(site_layers), *(() if batch is None else (batch,)),
                                       self.cfg.site(site).n_heads, dtype=weight.dtype, device=weight.device,
                                       requires_grad=requires_grad) for site, site_layers in by_site.items()}
        for site, site_layers in by_site.items():  # all checked before any layer is gated
            _check_gates(site, values.get(site), len(site_layers), self.cfg.site(site).n_heads)
        for site, site_layers in by_site.items():
            for row, layer in enumerate(site_layers):
                layer.head_gate = (values[site], row)
        try:
            yield values
        finally:
            for layer in layers:
                layer.head_gate = None

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

    def encode(self, src: Tensor, src_lengths: Optional[Tensor] = None) -> Tensor:
        """src (B, S) token ids, right-padded to ``src_lengths`` (B,) → memory (B, S, d_model).

        At CPU inference the layers run on the real tokens only (nmt.model.unpad) and the padded positions of the
        memory come out as zeros; otherwise they hold what the layers computed there. Either way nothing reads them:
        cross-attention masks them out."""
        self._check(src)
        x = self._embed(self.src_embed, src)
        # Measured on CPU inference only (docs/performance.md); training keeps the padded layout and its autograd.
        unpadded = None
        if src_lengths is not None and src.device.type == "cpu" and not torch.is_grad_enabled():
            unpadded = Unpadded.of(src_lengths, src.size(1))
        if unpadded is not None:
            x = unpadded.unpad(x)  # (N, d_model)
        for layer in self.encoder_layers:
            x = layer(x, src_lengths, unpadded)
        x = self.encoder_norm(x)
        return x if unpadded is None else unpadded.pad(x)  # (B, S, d_model)

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.output(self.decoder_norm(x))  # (B, T, padded vocab)
        vocab = self.cfg.target_vocab_size
        return logits if logits.size(-1) == vocab else logits[..., :vocab]  # (B, T, vocab)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_lengths: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced decoding: tgt_in (B, T) → logits (B, T, vocab); position t sees tgt_in[:, :t+1]."""
        return self._logits(self._decoder_states(tgt_in, memory, src_lengths))

    def _decoder_states(self, tgt_in: Tensor, memory: Tensor, src_lengths: Optional[Tensor]) -> Tensor:
        self._check(tgt_in)
        x = self._embed(self.tgt_embed, tgt_in)
        for layer in self.decoder_layers:
            x = layer(x, memory, src_lengths)
        return x  # (B, T, d_model), before the final norm

    def forward(self, src: Tensor, src_lengths: Optional[Tensor], tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src, src_lengths), src_lengths)

    def features(self, src: Tensor, src_lengths: Optional[Tensor], tgt_in: Tensor) -> Tensor:
        """The decoder's output before the vocabulary projection, (B, T, d_model): ``forward`` is
        ``F.linear(features, output_weight())``. Training projects it inside the loss (nmt.training.loss)."""
        memory = self.encode(src, src_lengths)
        return self.decoder_norm(self._decoder_states(tgt_in, memory, src_lengths))

    def output_weight(self) -> Tensor:
        """The projection's rows for the real vocabulary (vocab, d_model), without the rows padding it to a multiple;
        dequantized in an int8 model, whose projection holds a packed weight (nmt.decoding.dtypes)."""
        weight = self.output.weight
        return (weight().dequantize() if callable(weight) else weight)[: self.cfg.target_vocab_size]

    def init_state(self, memory: Tensor, src_lengths: Optional[Tensor] = None) -> DecoderState:
        caches = [(layer.self_attn.new_cache(), layer.cross_attn.new_cache()) for layer in self.decoder_layers]
        # Beams can share a source row only where cross-attention ignores query positions (no window, no globals).
        share = self.cfg.site("cross").sees_every_key
        return DecoderState(caches, memory, src_lengths, share_sources=share)

    def decode_step(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Incremental decoding: tokens (B, n) at the next n positions → logits (B, n, vocab), caches updated."""
        self._check(tokens)
        x = self._embed(self.tgt_embed, tokens, start=state.length)
        for layer, caches in zip(self.decoder_layers, state.caches):
            x = layer(x, state.memory, state.memory_lengths, caches=caches, beam=state.beam)
        return self._logits(x)


def _check_gates(site: str, gates: Optional[Tensor], n_layers: int, n_heads: int) -> None:
    """ValueError naming the site unless ``gates`` is (n_layers, n_heads) or (n_layers, batch, n_heads)."""
    if gates is None or gates.dim() not in (2, 3) or (gates.size(0), gates.size(-1)) != (n_layers, n_heads):
        got = "none" if gates is None else tuple(gates.shape)
        raise ValueError(f"head gates for {site}: expected ({n_layers}, [batch,] {n_heads}), got {got}")


def build_model(cfg: ModelConfig) -> Seq2Seq:
    return Seq2Seq(cfg)
