"""nmt: an encoder–decoder Transformer translation toolkit with swappable attention at every site."""

__version__ = "0.1.0"


def load(model_dir, device="cpu", engine="nmt"):
    """A Translator for an exported model directory or a training checkpoint (``nmt.decoding.loading.load_model``
    reads both): ``nmt.load(dir).translate("A dog runs.")``. ``engine="ct2"``: a folder written by ``nmt export ct2``,
    decoded by CTranslate2 (the same tokens). ModelLoadError (a ValueError) names the file that cannot be used."""
    if engine == "ct2":
        from nmt.ct2.translator import CT2Translator

        return CT2Translator.load(model_dir, device)
    if engine != "nmt":
        raise ValueError(f"engine {engine!r}: choose nmt or ct2")
    from nmt.decoding.translate import Translator

    return Translator.load(model_dir, device)
