"""nmt: an encoder–decoder Transformer translation toolkit with swappable attention at every site."""

__version__ = "0.1.0"


def load(model_dir, device="cpu", engine="nmt", dtype="float32"):
    """A Translator for an exported model directory or a training checkpoint (``nmt.decoding.loading.load_model``
    reads both): ``nmt.load(dir).translate("A dog runs.")``. ``engine="ct2"``: a folder written by ``nmt export ct2``,
    decoded by CTranslate2 (the same tokens). ``dtype``: float32, bfloat16, int8 or auto, as ``nmt translate
    --dtype`` (nmt's engine). ModelLoadError / FlagError (ValueErrors) name the file or value that cannot be used."""
    if engine == "ct2":
        from nmt.ct2.translator import CT2Translator

        if dtype != "float32":
            raise ValueError(f"dtype {dtype!r}: nmt's engine only; CTranslate2 takes the type it was exported in")
        return CT2Translator.load(model_dir, device)
    if engine != "nmt":
        raise ValueError(f"engine {engine!r}: choose nmt or ct2")
    from nmt.decoding.translate import Translator

    return Translator.load(model_dir, device, dtype)
