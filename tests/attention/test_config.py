"""AttentionConfig and the per-site checks of ModelConfig: bad values fail when the config is built, naming them."""

import pytest

from nmt.attention import AttentionConfig
from nmt.config import AttentionSites, ModelConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_heads=8, n_kv_heads=3), r"n_heads \(8\) must be divisible by n_kv_heads \(3\)"),
        (dict(n_kv_heads=0), r"n_kv_heads \(0\) must be >= 1"),
        (dict(window=0), r"window \(0\) must be >= 1"),
        (dict(window=-4), r"window \(-4\) must be >= 1"),
        (dict(global_tokens=2), r"global_tokens \(2\) needs a window"),
        (dict(global_tokens=-1, window=4), r"global_tokens \(-1\) must be >= 0"),
        (dict(backend="fast"), r"backend \('fast'\) must be one of auto, math, sdpa, flex, flash"),
        (dict(dropout=1.0), r"dropout \(1.0\) must be in \[0, 1\)"),
        (dict(backend="flex", dropout=0.1), r"backend 'flex' cannot apply attention dropout \(dropout=0.1\)"),
        (dict(backend="flash", window=4, global_tokens=1), r"backend 'flash' cannot express global tokens"),
    ],
)
def test_bad_attention_configs_name_the_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentionConfig(**kwargs)


@pytest.mark.parametrize(
    "cross, message",
    [
        (AttentionConfig(window=4, backend="band"), r"attention.cross: backend 'band' is for self-attention only"),
        (AttentionConfig(window=4, backend="flash"), r"attention.cross: backend 'flash' cannot window cross-attention "
                                                     r"\(window=4\)"),
    ],
    ids=["band", "windowed-flash"],
)
def test_a_cross_attention_site_is_checked_in_the_model_config(cross, message):
    """Only the model knows which site is cross-attention: its config refuses there what a self-attention site may
    use, before any module is built."""
    self_site = AttentionConfig(window=4, backend=cross.backend)
    ModelConfig(attention=AttentionSites(self_site, self_site, AttentionConfig()))  # fine at self-attention sites
    with pytest.raises(ValueError, match=message):
        ModelConfig(attention=AttentionSites(AttentionConfig(), AttentionConfig(), cross))
    ModelConfig(attention=AttentionSites(cross=AttentionConfig(backend="flash")))  # flash without a window is fine
