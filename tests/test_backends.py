"""Every fast backend against the readable math oracle, for every variant at every site (fp32, CPU)."""

import logging

import pytest
import torch

from nmt.attention import AttentionBackendError, MaskSpec, attend, math_attention
from nmt.attention import backends, flash
from tests.cases import SITES, VARIANTS, make_case

VARIANT_NAMES = [v[0] for v in VARIANTS]


def _real_rows(case):
    """(B, 1, q_len, 1) mask of real query rows; padded rows must be zero for every backend."""
    q_len = case.mask.q_len
    lengths = case.mask.q_lengths if case.mask.q_lengths is not None else torch.full((case.q.size(0),), q_len)
    return (torch.arange(q_len)[None, :] < lengths[:, None])[:, None, :, None]


def test_math_matches_a_float64_loop():
    """The oracle itself, against attention written one (batch, head, query) at a time in float64."""
    case = make_case("sparse", "decoder_self", dtype=torch.float64)
    out, weights = math_attention(case.q, case.k, case.v, case.mask, need_weights=True)
    allowed = case.mask.dense(torch.device("cpu")).expand(case.q.size(0), 1, case.mask.q_len, case.mask.k_len)
    group = case.q.size(1) // case.k.size(1)
    for b in range(case.q.size(0)):
        for h in range(case.q.size(1)):
            for i in range(case.mask.q_len):
                keys = allowed[b, 0, i].nonzero().flatten()
                if len(keys) == 0:
                    assert out[b, h, i].abs().max() == 0
                    continue
                scores = case.k[b, h // group, keys] @ case.q[b, h, i] / case.q.size(-1) ** 0.5
                p = torch.softmax(scores, 0)
                torch.testing.assert_close(out[b, h, i], p @ case.v[b, h // group, keys])
                torch.testing.assert_close(weights[b, h, i, keys], p)


@pytest.mark.parametrize("backend", ["sdpa", "flex", "matmul"])
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_forward_matches_math(backend, site, variant):
    case = make_case(variant, site)
    expected, _ = math_attention(case.q, case.k, case.v, case.mask)
    got, _ = attend(backend, case.q, case.k, case.v, case.mask)
    assert not got.isnan().any()
    assert (got - expected).abs().max() <= 1e-5
    # Padded rows and the empty sequence (nothing to attend) are exact zeros.
    assert got.masked_select(~_real_rows(case)).abs().max() == 0
    assert got[2].abs().max() == 0


@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_gradients_match_math(backend, site, variant):
    """Flex has no backward pass on CPU (torch 2.13); sdpa and matmul are the CPU backends with gradients."""
    grads = {}
    for backend in ("math", backend):
        torch.manual_seed(1)
        case = make_case(variant, site, requires_grad=True)
        out, _ = attend(backend, case.q, case.k, case.v, case.mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[backend] = [t.grad for t in (case.q, case.k, case.v)]
    for expected, got in zip(grads["math"], grads[backend]):
        assert not got.isnan().any()
        assert (got - expected).abs().max() <= 1e-4


def test_unpadded_decoding_masks_match_math():
    """Cached-decoding shapes: a query block after the keys start, a trimmed window, kept global tokens."""
    specs = [
        MaskSpec(q_len=1, k_len=5, q_start=7, k_start=3, causal=True, window=5),
        MaskSpec(q_len=3, k_len=7, q_start=7, k_start=3, causal=True, window=5),
        MaskSpec(q_len=2, k_len=6, q_start=9, k_start=6, k_globals=2, causal=True, window=3, global_tokens=2),
        MaskSpec(q_len=4, k_len=4, causal=True),  # plain causal: SDPA's is_causal path
    ]
    for spec in specs:
        q = torch.randn(2, 4, spec.q_len, 8)
        k, v = torch.randn(2, 2, spec.k_len, 8), torch.randn(2, 2, spec.k_len, 8)
        expected, _ = math_attention(q, k, v, spec)
        for backend in ("sdpa", "flex", "matmul"):
            got, _ = attend(backend, q, k, v, spec)
            assert (got - expected).abs().max() <= 1e-5, (backend, spec)


@pytest.mark.slow
def test_compiled_flex_skips_blocks_and_matches_math():
    """The compiled FlexAttention kernel (unpadded: torch 2.13's compiled CPU flex fails on padding masks)."""
    spec = MaskSpec(q_len=256, k_len=256, causal=True, window=32)
    q, k, v = torch.randn(1, 4, 256, 16), torch.randn(1, 1, 256, 16), torch.randn(1, 1, 256, 16)
    block_mask = backends.flex_block_mask(spec, 1, q.device)
    assert block_mask.sparsity() > 0  # masked blocks are skipped, not computed
    assert backends._flex_kernel(q, spec) is not backends.flex_attention  # the compiled kernel runs
    expected, _ = math_attention(q, k, v, spec)
    got, _ = attend("flex", q, k, v, spec)
    assert (got - expected).abs().max() <= 1e-5


def test_flex_refuses_gradients_on_cpu():
    case = make_case("mha", "encoder_self", requires_grad=True)
    with pytest.raises(AttentionBackendError, match="no backward pass on CPU"):
        attend("flex", case.q, case.k, case.v, case.mask)


def test_only_math_returns_weights():
    case = make_case("gqa", "cross")
    out, weights = attend("math", case.q, case.k, case.v, case.mask, need_weights=True)
    assert weights.shape == (3, 4, case.mask.q_len, case.mask.k_len)
    assert torch.allclose(weights[0].sum(-1), torch.ones(4, case.mask.q_len))
    with pytest.raises(AttentionBackendError, match="only backend 'math' returns attention weights"):
        attend("sdpa", case.q, case.k, case.v, case.mask, need_weights=True)


def test_auto_picks_sdpa_on_cpu_and_logs_once(caplog):
    backends._logged_choices.clear()
    case = make_case("sliding_window", "encoder_self", requires_grad=True)
    with caplog.at_level(logging.INFO, logger="nmt.attention.backends"):
        for _ in range(3):
            got, _ = attend("auto", case.q, case.k, case.v, case.mask, site="encoder_self")
    messages = [r.getMessage() for r in caplog.records if "auto picked" in r.getMessage()]
    assert messages == ["attention encoder_self: auto picked sdpa (CPU: fused SDPA kernel for every mask, forward and backward)"]
    expected, _ = attend("sdpa", case.q, case.k, case.v, case.mask)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("q_len, k_len, needs_grad, expected", [
    (5, 34, False, "matmul"), (8, 128, False, "matmul"), (2, 512, False, "matmul"), (1, 34, False, "sdpa"),
    (16, 128, False, "sdpa"), (4, 512, False, "sdpa"), (5, 34, True, "sdpa"),
])
def test_auto_picks_matmul_for_cpu_decoding_steps(q_len, k_len, needs_grad, expected):
    """Few queries without gradients (a decoding step, beams as extra cross-attention queries): batched matmuls."""
    mask = MaskSpec(q_len=q_len, k_len=k_len, k_lengths=torch.tensor([k_len, 3]))
    assert backends.choose_backend("test", torch.empty(2, 4, q_len, 8), mask, 0.0, needs_grad) == expected


def test_flash_on_cpu_is_a_clear_error_not_a_fallback(monkeypatch):
    case = make_case("mha", "encoder_self")
    with pytest.raises(AttentionBackendError, match=r"attention encoder_self: backend 'flash' needs a CUDA device"):
        attend("flash", case.q, case.k, case.v, case.mask, site="encoder_self")
    cuda = torch.device("cuda")
    assert "fp16 or bf16" in flash.device_problem(cuda, torch.float32)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert flash.device_problem(cuda, torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "compute capability >= 8.0 (this one has 7.5)" in flash.device_problem(cuda, torch.float16)
    assert "head_dim <= 256 and a multiple of 8 (got 320)" in flash.head_dim_problem(320)
    assert flash.head_dim_problem(64) is None


def test_sdpa_empty_row_guard_keeps_results_and_gradients_finite(monkeypatch):
    """The guard used on CUDA (whose kernels may give NaN for rows with nothing to attend), run here on CPU."""
    monkeypatch.setattr(backends, "EMPTY_ROW_GUARD_DEVICES", {"cpu"})
    case = make_case("sparse", "cross", requires_grad=True)
    got, _ = attend("sdpa", case.q, case.k, case.v, case.mask)
    expected, _ = math_attention(case.q, case.k, case.v, case.mask)
    assert (got - expected).abs().max() <= 1e-5
    assert got[2].abs().max() == 0  # the empty sequence
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (case.q, case.k, case.v))


def test_flash_mask_problems_name_what_is_missing(monkeypatch):
    sparse = make_case("sparse", "encoder_self").mask
    assert "global tokens" in flash.mask_problem(sparse)
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
FLASH_CASES = [(v, s) for v in ("mha", "gqa", "mqa", "sliding_window") for s in SITES if (v, s) != ("sliding_window", "cross")]


@pytest.mark.parametrize("variant, site", FLASH_CASES)
def test_flash_varlen_packing_matches_math(site, variant):
    """The flash path's packing, cu_seqlens, window mapping and scatter-back, run on CPU with a reference kernel
    that follows flash-attn's documented semantics (the real kernels are checked by the gpu tests)."""
    case = make_case(variant, site)
    expected, _ = math_attention(case.q, case.k, case.v, case.mask)
    got = flash.varlen_attention(case.q, case.k, case.v, case.mask, 0.0, reference_varlen)
    assert (got - expected).abs().max() <= 1e-5
