"""An nmt ``Seq2Seq`` as a CTranslate2 ``TransformerSpec``, built with CTranslate2's spec API, or a one-line refusal.

Followed: CTranslate2's "Add a new converter" guide (docs/conversion.md) and the layouts its own converters fill
(python/ctranslate2/converters/opennmt_py.py, fairseq.py) and its C++ reads (src/layers/attention.cc,
attention_layer.cc, transformer.cc, common.cc of CTranslate2 4.8). What maps, weight for weight:

- embeddings: the real vocabulary rows only (nmt pads them to ``vocab_pad_multiple``); CTranslate2 multiplies them by
  √d_model as nmt does; tied matrices are written once (the spec aliases equal variables);
- sinusoidal positions: nmt's own table (sin on the first half of the features, cos on the second, position 0
  first), stored as ``position_encodings/encodings``: CTranslate2's built-in table starts at position 1;
- RoPE: ``rotary_dim=0`` (the whole head), ``rotary_interleave=False`` (nmt rotates halves), base 10,000, on
  self-attention only, as in nmt;
- attention: the fused q|k|v projection of self-attention and the k|v projection of cross-attention are the layouts
  CTranslate2 expects; K/V head g serves query heads g·(n_heads/n_kv_heads) … in both; ``num_heads_kv`` is set on
  every layer's attention spec, per site, so encoder self-, decoder self- and cross-attention keep their own;
- pre- or post-norm sublayers: a LayerNorm per sublayer (``layer_norm`` of each attention and feed-forward spec) and,
  pre-norm only, the final encoder/decoder norms; ε = 1e-5 (torch's default);
- a decoder self-attention window w: ``sliding_window = w`` on the decoder self-attention specs only (CTranslate2
  keeps the last w keys, the current one included: nmt's window), proven token for token in tests/test_ct2.py.

MQA decoder self-attention is written with the spec flag ``multi_query``, which CTranslate2 reads per attention
scope: it then caches one K/V head (time and head dimensions merged), where ``num_heads_kv=1`` alone makes it copy
the head ``n_heads`` times before caching. GQA (and MQA at the other sites, and a windowed MQA site, whose cache
trimming assumes the unmerged layout) are cached with the K/V heads repeated to ``n_heads``: CTranslate2 4.8 keeps
the projection savings, not the cache savings (``kv_cache_bytes`` below counts what it allocates).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from nmt.config import ModelConfig
from nmt.model.positions import sinusoidal_table

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which nmt's norms use


class ExportError(ValueError):
    """The model cannot be expressed in CTranslate2: one line naming the site (or model key) and the field.
    ``fields``: the offending ``key=value`` settings, e.g. ``["attention.encoder_self.window=8"]``."""

    def __init__(self, message: str, fields: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.fields = fields or []


def problems(cfg: ModelConfig, tokenizer_pieces: Optional[int] = None) -> list[str]:
    """What CTranslate2 cannot express of ``cfg``, one phrase per field; empty when the model is exportable."""
    found = []
    enc, dec, cross = cfg.site("encoder_self"), cfg.site("decoder_self"), cfg.site("cross")
    if enc.window is not None:
        found.append(f"attention.encoder_self.window={enc.window}: CTranslate2's encoder self-attention has no window "
                     "(its sliding_window only trims a decoder's KV cache)")
    if cross.window is not None:
        found.append(f"attention.cross.window={cross.window}: CTranslate2's cross-attention always sees "
                     "the whole source")
    for site, resolved in (("encoder_self", enc), ("decoder_self", dec), ("cross", cross)):
        if resolved.global_tokens:
            found.append(f"attention.{site}.global_tokens={resolved.global_tokens}: CTranslate2 has no global tokens")
    if cross.n_heads != dec.n_heads:
        found.append(f"attention.cross.n_heads={cross.n_heads}: CTranslate2's decoder has one num_heads for self- and "
                     f"cross-attention, and attention.decoder_self.n_heads={dec.n_heads}")
    if cfg.target_vocab_size != cfg.vocab_size:
        found.append(f"model.tgt_vocab_size={cfg.tgt_vocab_size}: nmt's one sentencepiece model gives one vocabulary "
                     f"of {cfg.vocab_size}")
    if tokenizer_pieces is not None and tokenizer_pieces != cfg.vocab_size:
        found.append(f"model.vocab_size={cfg.vocab_size}: the sentencepiece model has {tokenizer_pieces} pieces")
    return found


def check_exportable(cfg: ModelConfig, tokenizer_pieces: Optional[int] = None) -> None:
    """Raise ExportError, one line listing every field CTranslate2 cannot express, unless there is none."""
    found = problems(cfg, tokenizer_pieces)
    if found:
        raise ExportError("cannot export to CTranslate2: " + "; ".join(found), [f.split(":")[0] for f in found])


def uses_multi_query_flag(cfg: ModelConfig) -> bool:
    """Whether the decoder self-attention is written with CTranslate2's ``multi_query`` flag (a one-head cache)."""
    dec = cfg.site("decoder_self")
    return dec.n_kv_heads == 1 and dec.n_heads > 1 and dec.window is None


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _linear(spec, linear: torch.nn.Linear, rows: Optional[int] = None) -> None:
    weight = linear.weight if rows is None else linear.weight[:rows]
    spec.weight = _array(weight)
    if getattr(linear, "bias", None) is not None:
        spec.bias = _array(linear.bias)


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _attention_spec(cfg: ModelConfig, site: str, multi_query: bool = False):
    from ctranslate2.specs import attention_spec

    resolved = cfg.site(site)
    rope = cfg.positions == "rope" and site != "cross"
    spec = attention_spec.MultiHeadAttentionSpec(
        self_attention=site != "cross",
        num_heads_kv=resolved.n_kv_heads,
        rotary_dim=0 if rope else None,
        rotary_interleave=False,
        sliding_window=resolved.window if site == "decoder_self" else None,
    )
    if multi_query:
        # A flag CTranslate2's C++ reads per scope (attention_layer.cc: "<scope>/multi_query") that the spec classes
        # no longer declare; LayerSpec freezes its attributes, so it is added past FrozenAttr.__setattr__.
        object.__setattr__(spec, "multi_query", True)
    return spec


def _fill_attention(spec, attention, block) -> None:
    _norm(spec.layer_norm, block.norm)
    if attention.cross:
        _linear(spec.linear[0], attention.q_proj)
        _linear(spec.linear[1], attention.kv_proj)
        _linear(spec.linear[2], attention.out_proj)
    else:
        _linear(spec.linear[0], attention.qkv_proj)
        _linear(spec.linear[1], attention.out_proj)


def _fill_ffn(spec, layer) -> None:
    _norm(spec.layer_norm, layer.ff_block.norm)
    _linear(spec.linear_0, layer.feed_forward.inner)
    _linear(spec.linear_1, layer.feed_forward.outer)


def build_spec(model, pieces: list[str], max_positions: int):
    """The TransformerSpec of ``model`` (an nmt Seq2Seq) with its vocabulary ``pieces`` (sentencepiece, in id order).

    ``max_positions``: rows of the sinusoidal table (source and target positions must stay below it; RoPE models
    have no such limit). Raises ExportError (see ``problems``).
    """
    from ctranslate2.specs import common_spec, transformer_spec

    cfg: ModelConfig = model.cfg
    check_exportable(cfg, len(pieces))
    pre_norm = cfg.norm == "pre"
    activation = common_spec.Activation.RELU if cfg.activation == "relu" else common_spec.Activation.GELU
    encoder = transformer_spec.TransformerEncoderSpec(
        cfg.encoder_layers, cfg.site("encoder_self").n_heads, pre_norm=pre_norm, activation=activation)
    decoder = transformer_spec.TransformerDecoderSpec(
        cfg.decoder_layers, cfg.site("decoder_self").n_heads, pre_norm=pre_norm, activation=activation)
    multi_query = uses_multi_query_flag(cfg)
    for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
        layer_spec.self_attention = _attention_spec(cfg, "encoder_self")
        _fill_attention(layer_spec.self_attention, layer.self_attn, layer.attn_block)
        _fill_ffn(layer_spec.ffn, layer)
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
        layer_spec.self_attention = _attention_spec(cfg, "decoder_self", multi_query)
        layer_spec.attention = _attention_spec(cfg, "cross")
        _fill_attention(layer_spec.self_attention, layer.self_attn, layer.self_block)
        _fill_attention(layer_spec.attention, layer.cross_attn, layer.cross_block)
        _fill_ffn(layer_spec.ffn, layer)
    _fill_embeddings(encoder, decoder, model, max_positions)
    if pre_norm:
        _norm(encoder.layer_norm, model.encoder_norm)
        _norm(decoder.layer_norm, model.decoder_norm)
    spec = transformer_spec.TransformerSpec(encoder, decoder)
    spec.config.add_source_eos = True  # nmt's sources end with eos; CTranslate2 then appends it itself
    spec.config.layer_norm_epsilon = LAYER_NORM_EPS
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def _fill_embeddings(encoder, decoder, model, max_positions: int) -> None:
    vocab = model.cfg.vocab_size
    encoder.embeddings[0].weight = _array(model.src_embed.weight[:vocab])
    decoder.embeddings.weight = _array(model.tgt_embed.weight[:vocab])
    decoder.projection.weight = _array(model.output.weight[:vocab])
    if model.cfg.positions == "sinusoidal":
        table = sinusoidal_table(max_positions, model.cfg.d_model).numpy()  # (max_positions, d_model)
        encoder.position_encodings.encodings = table
        decoder.position_encodings.encodings = table.copy()


def kv_cache_bytes(cfg: ModelConfig, source_len: int, target_len: int, beam: int, itemsize: int = 4) -> dict[str, int]:
    """Bytes of the K/V caches CTranslate2 4.8 keeps for one sentence decoded with ``beam`` beams to ``target_len``
    positions over ``source_len`` source positions, from its layout (src/layers/attention.cc, transformer.cc):
    decoder self-attention caches ``n_heads`` K/V heads per beam (GQA and MQA heads repeated before caching), one
    with the ``multi_query`` flag, at most ``window`` positions with a window; cross-attention caches ``n_heads``
    heads once per sentence (beams share it). ``itemsize``: 4 for float32 and int8 models on CPU (int8_float32:
    activations, hence caches, stay float32), 2 for float16."""
    dec = cfg.site("decoder_self")
    heads = 1 if uses_multi_query_flag(cfg) else dec.n_heads
    positions = target_len if dec.window is None else min(target_len, dec.window)
    self_bytes = cfg.decoder_layers * beam * positions * 2 * heads * (cfg.d_model // dec.n_heads) * itemsize
    cross_bytes = cfg.decoder_layers * source_len * 2 * cfg.d_model * itemsize  # n_heads × head_dim = d_model
    return {"self_attention": self_bytes, "cross_attention": cross_bytes, "total": self_bytes + cross_bytes}
