"""The decoder's KV-cache bytes as decoding allocates them: a model decodes a few greedy steps laid out as beam search
lays them out, and the cache tensors are measured (``KVCache.nbytes``), so every attention variant (GQA, windows,
global tokens, shared source rows) is counted as it is stored, not from a formula. ``nmt evaluate``, ``nmt report``
and the benches report these numbers; nmt.analysis.kv_cache computes the same from the config alone."""

from __future__ import annotations

import torch

from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.model.seq2seq import DecoderState, Seq2Seq


@torch.no_grad()
def _decoded_state(model: Seq2Seq, sources: list[list[int]], hyp_len: int, beam: int) -> DecoderState:
    """The DecoderState after ``max(hyp_len, 1)`` greedy steps from bos for the batch ``sources`` (eos added to each,
    right-padded to the longest), laid out as beam search lays it out: ``beam`` decoder rows per sentence, over one
    source row per sentence where cross-attention sees every key (DecoderState.share_sources), else one per row."""
    if not sources:
        raise ValueError("kv_cache_layer_bytes needs at least one source sentence")
    device = model.src_embed.weight.device
    lengths = torch.tensor([len(ids) + 1 for ids in sources], device=device)  # (B,) with eos
    src = torch.full((len(sources), int(lengths.max())), model.cfg.pad_id, device=device)  # (B, S)
    for row, ids in enumerate(sources):
        src[row, : len(ids) + 1] = torch.tensor([*ids, EOS_ID], device=device)
    state = model.init_state(model.encode(src, lengths), lengths)
    sentences = torch.arange(len(sources), device=device)
    state.select_beams(sentences.repeat_interleave(beam), sentences, beam)
    tokens = torch.full((len(sources) * beam, 1), BOS_ID, device=device)
    for _ in range(max(hyp_len, 1)):
        tokens = model.decode_step(tokens, state).argmax(-1)
    return state


def kv_cache_layer_bytes(model: Seq2Seq, sources: list[list[int]], hyp_len: int, beam: int) -> list[dict[str, int]]:
    """Bytes of each decoder layer's KV caches for the batch ``sources`` (subword ids per sentence, eos added here)
    decoded with ``beam`` beams each to ``hyp_len`` subwords: one {"self_attention", "cross_attention"} per layer, read
    from the allocated cache tensors (KVCache.nbytes). A padded batch caches every sentence's source at the longest
    one's length S (padding included). Raises ValueError for an empty batch."""
    state = _decoded_state(model, sources, hyp_len, beam)
    return [{"self_attention": self_cache.nbytes, "cross_attention": cross_cache.nbytes}
            for self_cache, cross_cache in state.caches]


def kv_cache_bytes(model: Seq2Seq, src_ids: list[int], hyp_len: int, beam: int) -> dict[str, int]:
    """Bytes of the decoder's KV caches for one sentence of ``src_ids`` (subword ids, eos added here) decoded with
    ``beam`` beams to ``hyp_len`` subwords: {"self_attention", "cross_attention", "total"}, read from the allocated
    cache tensors of a DecoderState laid out as beam search lays it out (``beam`` decoder rows over one source row,
    where cross-attention has no window). Per layer: kv_cache_layer_bytes."""
    layers = kv_cache_layer_bytes(model, [src_ids], hyp_len, beam)
    self_bytes = sum(layer["self_attention"] for layer in layers)
    cross_bytes = sum(layer["cross_attention"] for layer in layers)
    return {"self_attention": self_bytes, "cross_attention": cross_bytes, "total": self_bytes + cross_bytes}
