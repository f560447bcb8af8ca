"""nmt: an encoder–decoder Transformer translation toolkit with swappable attention at every site."""

__version__ = "0.1.0"


def load(model_dir, device="cpu", engine="nmt"):
    """A Translator for an exported model directory: ``nmt.load(dir).translate(["A dog runs."], beam=5)``.
    ``engine="ct2"``: a folder written by ``nmt export ct2``, decoded by CTranslate2 (the same tokens)."""
    if engine == "ct2":
        from nmt.ct2.translator import CT2Translator

        return CT2Translator.load(model_dir, device)
    if engine != "nmt":
        raise ValueError(f"engine {engine!r}: choose nmt or ct2")
    from nmt.translate import Translator

    return Translator.load(model_dir, device)
