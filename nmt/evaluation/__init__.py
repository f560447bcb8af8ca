"""Evaluation: sacreBLEU scores (``scoring.py``), `nmt evaluate` (``evaluate.py``) and its report with attention
pictures (``eval_report.py``, ``plots.py``), and `nmt report`, which compares runs (``report.py``)."""
