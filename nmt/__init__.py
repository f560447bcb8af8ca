"""nmt: an encoder–decoder Transformer translation toolkit with swappable attention at every site."""

__version__ = "0.1.0"
