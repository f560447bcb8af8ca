"""Data: the shipped and local corpora (``corpora.py``), the one text reader (``textio.py``), corpora loaded and
cleaned through Hugging Face datasets (``load.py``), the sentencepiece tokenizer (``tokenizer.py``), token-budget
batches (``batching.py``) and the LightningDataModule that chains them (``datamodule.py``)."""
