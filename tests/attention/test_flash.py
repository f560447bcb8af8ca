"""The flash backend on CPU: its refusals name what is missing, and its varlen packing matches the math oracle
(the real kernels are checked by the gpu tests, tests/test_gpu.py)."""

import pytest
import torch

from nmt.attention import AttentionBackendError, MaskSpec, attend, flash, math_attention
from nmt.attention.backends import call_problem, static_problem
from tests.cases import SITES, make_case


def test_flash_on_cpu_is_a_clear_error_not_a_fallback(monkeypatch):
    case = make_case("mha", "encoder_self")
    with pytest.raises(AttentionBackendError, match=r"attention encoder_self: backend 'flash' needs a CUDA device"):
        attend("flash", case.q, case.k, case.v, case.mask, site="encoder_self")
    cuda = torch.device("cuda")
    assert "fp16 or bf16" in static_problem("flash", cuda, torch.float32, False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert flash.device_problem(cuda, torch.bfloat16) is None
    assert static_problem("flash", cuda, torch.bfloat16, True) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "compute capability >= 8.0 (this one has 7.5)" in flash.device_problem(cuda, torch.float16)
    assert "compute capability >= 8.0 (this one has 7.5)" in static_problem("flash", cuda, torch.float16, False)
    assert "head_dim <= 256 and a multiple of 8 (got 320)" in flash.head_dim_problem(320)
    assert flash.head_dim_problem(64) is None


def test_flash_mask_problems_name_what_is_missing(monkeypatch):
    sparse = make_case("sparse", "encoder_self").mask
    assert "global tokens" in call_problem("flash", sparse, 0.0, 8)
    # Without the flash-attn package, SDPA's flash kernel takes no padding or window.
    monkeypatch.setattr(flash, "_varlen_kernel", lambda: (None, "torch SDPA FlashAttention-2"))
    assert flash.mask_problem(MaskSpec(q_len=4, k_len=4, causal=True)) is None
    assert flash.mask_problem(MaskSpec(q_len=4, k_len=4)) is None
    assert "install flash-attn" in flash.mask_problem(make_case("mha", "encoder_self").mask)
    assert "install flash-attn" in flash.mask_problem(MaskSpec(q_len=4, k_len=4, causal=True, window=2))
    # With it, padding and windows are fine, but a cross-attention window is not aligned the way flash aligns.
    monkeypatch.setattr(flash, "_varlen_kernel", lambda: (object(), "flash-attn 2 varlen"))
    assert flash.mask_problem(make_case("sliding_window", "encoder_self").mask) is None
    assert flash.mask_problem(make_case("sliding_window", "decoder_self").mask) is None
    assert "bottom-right" in flash.mask_problem(make_case("sliding_window", "cross").mask)
    # The registry's call check runs the same checks, then dropout (flash-attn 4 has none) and head_dim.
    assert "bottom-right" in call_problem("flash", make_case("sliding_window", "cross").mask, 0.0, 8)
    assert "head_dim <= 256" in call_problem("flash", make_case("mha", "encoder_self").mask, 0.0, 12)
    monkeypatch.setattr(flash, "_varlen_kernel", lambda: (object(), "flash-attn 4 (cute) varlen"))
    assert "no attention dropout" in call_problem("flash", make_case("mha", "encoder_self").mask, 0.1, 8)


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, causal=False, window_size=(-1, -1)):
    """flash_attn_varlen_func's documented semantics in plain torch: per packed sequence, bottom-right aligned
    causal mask and inclusive (left, right) window, native GQA."""
    out = torch.zeros_like(q)
    group = q.size(1) // k.size(1)
    for b in range(len(cu_q) - 1):
        qs, ks = q[cu_q[b] : cu_q[b + 1]], k[cu_k[b] : cu_k[b + 1]]
        vs = v[cu_k[b] : cu_k[b + 1]]
        n_q, n_k = len(qs), len(ks)
        if n_q == 0 or n_k == 0:
            continue
        i = torch.arange(n_q)[:, None] + (n_k - n_q)  # query i aligned to key i + n_k - n_q
        j = torch.arange(n_k)[None, :]
        ok = torch.ones(n_q, n_k, dtype=torch.bool)
        if causal:
            ok &= j <= i
        left, right = window_size
        if left >= 0:
            ok &= j >= i - left
        if right >= 0:
            ok &= j <= i + right
        scores = torch.einsum("qhd,khd->hqk", qs, ks.repeat_interleave(group, 1)) / q.size(-1) ** 0.5
        p = scores.masked_fill(~ok, float("-inf")).softmax(-1).nan_to_num(0.0)
        out[cu_q[b] : cu_q[b + 1]] = torch.einsum("hqk,khd->qhd", p, vs.repeat_interleave(group, 1))
    return out


# Flash cannot express global tokens, nor align a cross-attention window (both refused before compute).
FLASH_CASES = [(v, s) for v in ("mha", "gqa", "mqa", "sliding_window") for s in SITES
               if (v, s) != ("sliding_window", "cross")]


@pytest.mark.parametrize("variant, site", FLASH_CASES)
def test_flash_varlen_packing_matches_math(site, variant):
    """The flash path's packing, cu_seqlens, window mapping and scatter-back, run on CPU with a reference kernel
    that follows flash-attn's documented semantics (the real kernels are checked by the gpu tests)."""
    case = make_case(variant, site)
    expected, _ = math_attention(case.q, case.k, case.v, case.mask)
    got = flash.varlen_attention(case.q, case.k, case.v, case.mask, 0.0, reference_varlen)
    assert (got - expected).abs().max() <= 1e-5
