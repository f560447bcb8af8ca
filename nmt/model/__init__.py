"""The encoder–decoder Transformer (``seq2seq.py``), its positions (``positions.py``), the packed linear layers
of CPU inference (``packed_linear.py``), its KV-cache bytes as measured (``cache_bytes.py``) and ``nmt convert``
(``convert.py``); the attention it uses per site is ``nmt.attention``.

The names below load on first use (PEP 562): ``nmt.attention.layer`` needs ``nmt.model.positions`` while
``nmt.model.seq2seq`` needs ``nmt.attention``, so an eager import here would make whichever is imported first find
the other half-loaded.
"""

from importlib import import_module

_EXPORTS = {
    **{name: "seq2seq" for name in ("DecoderState", "Seq2Seq", "build_model")},
    **{name: "cache_bytes" for name in ("kv_cache_bytes", "kv_cache_layer_bytes")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nmt.model' has no attribute {name!r}")
    return getattr(import_module(f"nmt.model.{_EXPORTS[name]}"), name)
