"""The encoder–decoder Transformer (``seq2seq.py``), its positions (``positions.py``), the packed output projection
of CPU inference (``packed_linear.py``); the attention it uses per site is ``nmt.attention``."""

from nmt.model.seq2seq import DecoderState, Seq2Seq, build_model, kv_cache_bytes

__all__ = ["DecoderState", "Seq2Seq", "build_model", "kv_cache_bytes"]
