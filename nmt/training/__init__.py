"""Training: `nmt train`'s entry (``train.py``), the Lightning Trainer and callbacks (``trainer.py``), the
LightningModule (``lit_module.py``), the label-smoothed loss (``loss.py``) and checkpoint averaging (``average.py``)."""
