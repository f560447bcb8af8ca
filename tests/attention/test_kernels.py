"""The portable kernels (sdpa, flex, matmul) against the readable math oracle, and the oracle against a loop, for
every variant at every site (fp32, CPU)."""

import pytest
import torch

from nmt.attention import MaskSpec, attend, kernels, math_attention
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
    block_mask = kernels.flex_block_mask(spec, 1, q.device)
    assert block_mask.sparsity() > 0  # masked blocks are skipped, not computed
    assert kernels._flex_kernel(q, spec) is not kernels.flex_attention  # the compiled kernel runs
    expected, _ = math_attention(q, k, v, spec)
    got, _ = attend("flex", q, k, v, spec)
    assert (got - expected).abs().max() <= 1e-5


def test_sdpa_empty_row_guard_keeps_results_and_gradients_finite(monkeypatch):
    """The guard used on CUDA (whose kernels may give NaN for rows with nothing to attend), run here on CPU."""
    monkeypatch.setattr(kernels, "EMPTY_ROW_GUARD_DEVICES", {"cpu"})
    case = make_case("sparse", "cross", requires_grad=True)
    got, _ = attend("sdpa", case.q, case.k, case.v, case.mask)
    expected, _ = math_attention(case.q, case.k, case.v, case.mask)
    assert (got - expected).abs().max() <= 1e-5
    assert got[2].abs().max() == 0  # the empty sequence
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (case.q, case.k, case.v))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_matmul_one_query_matches_math(n_kv_heads):
    """A decoding step: one query over strided K/V views (a cache's first positions) under no mask (self-attention)
    and under a padding mask reused across calls (cross-attention: its blocked positions are built once), with an empty
    source row, which comes out as exact zeros."""
    B, S, head_dim = 3, 9, 64
    q = torch.randn(B, 4, 1, head_dim)
    k, v = (torch.randn(B, n_kv_heads, S + 5, head_dim)[:, :, :S] for _ in range(2))
    assert not k.is_contiguous()
    step = MaskSpec(q_len=1, k_len=S, q_start=S - 1, causal=True)
    padded = MaskSpec(q_len=1, k_len=S, k_lengths=torch.tensor([S, 4, 0]))
    for mask in (step, padded, padded):
        expected, _ = math_attention(q, k, v, mask)
        got, _ = attend("matmul", q, k, v, mask)
        assert (got - expected).abs().max() <= 1e-5
    assert got[2].abs().max() == 0
    assert len(padded._memo) == 2  # the dense mask and the blocked positions made from it, each built once


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matmul_keeps_gradients_finite_for_empty_rows_in_half_precision(dtype):
    """Padded query rows attend to nothing in every padded batch: their output is zero and every gradient finite in
    fp16 and bf16 too (a bias of the dtype's minimum added to a score overflowed to -inf in fp16: NaN gradients)."""
    B, T, S, head_dim = 2, 3, 5, 8
    q = torch.randn(B, 2, T, head_dim) * 4
    k = -q.mean(2, keepdim=True).expand(B, 2, S, head_dim).clone()  # strongly negative scores, as late in training
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, torch.randn(B, 2, S, head_dim)))
    got, _ = attend("matmul", q, k, v, MaskSpec(q_len=T, k_len=S, k_lengths=torch.tensor([S, 0])))
    got.float().sum().backward()
    assert torch.isfinite(got).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
