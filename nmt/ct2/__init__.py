"""CTranslate2 deployment of nmt models: ``nmt export ct2`` (spec.py builds the model, export.py writes it) and the
``--engine ct2`` decoder of ``nmt translate`` (translator.py), token-identical to nmt's own search."""
