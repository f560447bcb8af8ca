"""Decoding: greedy, beam and sampling over the KV caches (``search.py``), `nmt translate` and the Translator
(``translate.py``), its flags (``flags.py``), loading a model directory or checkpoint (``loading.py``) and writing one
(``export.py``)."""
