"""nmt: an encoder–decoder Transformer translation toolkit with swappable attention at every site."""

__version__ = "0.1.0"


def load(model_dir, device="cpu"):
    """A Translator for an exported model directory or a training checkpoint (``nmt.decoding.loading.load_model`` reads both):
    ``nmt.load(dir).translate("A dog runs.")``. ModelLoadError (a ValueError) names the file that cannot be used."""
    from nmt.decoding.translate import Translator

    return Translator.load(model_dir, device)
