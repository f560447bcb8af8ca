"""Looking inside a model's attention: the offline HTML viewer (``viewer.py``, `nmt analyze attention`), head
analysis — entropy, Michel et al. (2019) importance and pruning curves (``heads.py``, `nmt analyze heads`) — and the
KV-cache calculator behind `nmt attention --kv` (``kv_cache.py``)."""
