"""nmt: an encoder–decoder Transformer translation toolkit with swappable attention at every site."""

__version__ = "0.1.0"


def load(model_dir, device="cpu"):
    """A Translator for an exported model directory: ``nmt.load(dir).translate(["A dog runs."], beam=5)``."""
    from nmt.translate import Translator

    return Translator.load(model_dir, device)
