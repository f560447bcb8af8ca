"""The dispatcher: what ``auto`` picks where, that it logs each choice once, and that attend refuses before compute."""

import logging

import pytest
import torch

from nmt.attention import AttentionBackendError, MaskSpec, attend, dispatch
from nmt.attention.dispatch import choose_backend
from tests.cases import make_case


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
    dispatch._logged_choices.clear()
    case = make_case("sliding_window", "encoder_self", requires_grad=True)
    with caplog.at_level(logging.INFO, logger="nmt.attention.dispatch"):
        for _ in range(3):
            got, _ = attend("auto", case.q, case.k, case.v, case.mask, site="encoder_self")
    messages = [r.getMessage() for r in caplog.records if "auto picked" in r.getMessage()]
    assert messages == [
        "attention encoder_self: auto picked sdpa (CPU: fused SDPA kernel for every mask, forward and backward)"
    ]
    expected, _ = attend("sdpa", case.q, case.k, case.v, case.mask)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("q_len, k_len, needs_grad, expected", [
    (5, 34, False, "matmul"), (8, 128, False, "matmul"), (2, 512, False, "matmul"), (1, 34, False, "sdpa"),
    (16, 128, False, "sdpa"), (4, 512, False, "sdpa"), (5, 34, True, "sdpa"),
])
def test_auto_picks_matmul_for_cpu_decoding_steps(q_len, k_len, needs_grad, expected):
    """Few queries without gradients (a decoding step, beams as extra cross-attention queries): batched matmuls."""
    mask = MaskSpec(q_len=q_len, k_len=k_len, k_lengths=torch.tensor([k_len, 3]))
    assert choose_backend("test", torch.empty(2, 4, q_len, 8), mask, 0.0, needs_grad) == expected


@pytest.mark.parametrize("q_len, k_len, dtype, needs_grad, expected", [
    (13, 13, torch.bfloat16, True, "matmul"), (128, 256, torch.bfloat16, True, "matmul"),
    (224, 224, torch.bfloat16, True, "matmul"), (225, 225, torch.bfloat16, True, "sdpa"),
    (256, 256, torch.bfloat16, True, "sdpa"), (13, 13, torch.float32, True, "sdpa"),
    (64, 64, torch.bfloat16, False, "sdpa"),
])
def test_auto_picks_matmul_for_cpu_bf16_training(q_len, k_len, dtype, needs_grad, expected):
    """bf16 with gradients (training under bf16 autocast) up to MATMUL_MAX_SCORES_BF16_TRAINING scores: matmul, whose
    bf16 products beat SDPA's bf16 backward; float32 training keeps SDPA's fused kernel."""
    mask = MaskSpec(q_len=q_len, k_len=k_len, k_lengths=torch.tensor([k_len, 3]), causal=q_len == k_len)
    assert choose_backend("test", torch.empty(2, 4, q_len, 64, dtype=dtype), mask, 0.1, needs_grad) == expected


@pytest.mark.parametrize("k_len, head_dim, expected", [
    (5, 64, "sdpa"), (6, 64, "sdpa"), (7, 64, "matmul"), (20, 64, "matmul"), (48, 64, "matmul"), (49, 64, "sdpa"),
    (20, 16, "sdpa"), (25, 16, "matmul"),
])
def test_auto_picks_matmul_for_one_query_over_few_keys(k_len, head_dim, expected):
    """A self-attention decoding step (one query, no mask): matmul from where torch's bmm uses BLAS (k_len ·
    head_dim >= MATMUL_MIN_PRODUCT) up to MATMUL_MAX_KEYS_ONE_QUERY keys, SDPA outside."""
    mask = MaskSpec(q_len=1, k_len=k_len, q_start=k_len - 1, causal=True)
    assert choose_backend("test", torch.empty(2, 4, 1, head_dim), mask, 0.0, False) == expected
    assert choose_backend("test", torch.empty(2, 4, 1, head_dim), mask, 0.0, True) == "sdpa"


@pytest.mark.parametrize(
    "length, window, causal, expected",
    [(2048, 256, True, "band"), (4096, 256, False, "band"), (2048, 256, False, "sdpa"), (1024, 256, True, "sdpa"),
     (512, 8, False, "band"), (256, 8, True, "sdpa"), (30, 8, True, "sdpa")],
)
def test_auto_picks_band_on_cpu_only_where_it_wins(length, window, causal, expected):
    mask = MaskSpec(q_len=length, k_len=length, causal=causal, window=window)
    assert choose_backend("test", torch.empty(1, 2, length, 8), mask, 0.0) == expected
    step = MaskSpec(q_len=1, k_len=window, q_start=length, k_start=length - window + 1, causal=causal, window=window)
    assert choose_backend("test", torch.empty(1, 2, 1, 8), step, 0.0) == "sdpa"


@pytest.mark.parametrize(
    "length, window, global_tokens, causal, expected",
    [(1024, 32, 32, False, "band"), (4096, 64, 64, False, "band"), (16384, 128, 128, True, "band"),  # w = g = √n
     (512, 32, 32, False, "sdpa"), (4096, 256, 16, False, "sdpa"), (16384, 256, 16, False, "band"),
     (4096, 256, 16, True, "band"), (2048, 256, 2, True, "sdpa"), (2048, 8, 128, True, "band"),
     (1024, 8, 128, True, "sdpa")],
)
def test_auto_picks_band_for_sparse_masks_where_it_wins(length, window, global_tokens, causal, expected):
    """The window's rule plus 8 positions per global token (dispatch.band_wins); a decoding step is never band."""
    mask = MaskSpec(q_len=length, k_len=length, causal=causal, window=window, global_tokens=global_tokens)
    assert choose_backend("test", torch.empty(1, 2, length, 8), mask, 0.0) == expected
    step = MaskSpec(q_len=1, k_len=window + global_tokens, q_start=length, k_start=length - window + 1,
                    k_globals=global_tokens, causal=causal, window=window, global_tokens=global_tokens)
    assert choose_backend("test", torch.empty(1, 2, 1, 8), step, 0.0) == "sdpa"


@pytest.mark.parametrize("global_tokens", [0, 4], ids=["window", "sparse"])
def test_auto_on_a_long_window_is_band_and_matches_math_with_gradients(global_tokens):
    torch.manual_seed(0)
    length, window = 600, 32
    q, k, v = (torch.randn(2, 2, length, 8, requires_grad=True) for _ in range(3))
    mask = MaskSpec(q_len=length, k_len=length, q_lengths=torch.tensor([length, 450]),
                    k_lengths=torch.tensor([length, 450]), causal=True, window=window, global_tokens=global_tokens)
    assert choose_backend("test", q, mask, 0.0) == "band"
    results = []
    for backend in ("auto", "math"):
        out, _ = attend(backend, q, k, v, mask)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), (q, k, v))
        results.append((out, *grads))
    for got, expected in zip(*results):
        assert (got - expected).abs().max() <= 1e-4


class _CudaQueries:
    """Stands in for CUDA queries (B, n_heads, T, head_dim 8): auto only reads their device, dtype and head_dim."""

    device = torch.device("cuda")

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def size(self, dim: int) -> int:
        return 8


def test_auto_on_cuda_asks_the_registry(monkeypatch):
    """On CUDA auto takes flash where the registry lets it compute the call, else flex for windows where flex can
    (no dropout), else sdpa. Nothing runs: only the choice is computed."""
    from nmt.attention import flash

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flash, "_varlen_kernel", lambda: (object(), "flash-attn 2 varlen"))
    window = MaskSpec(q_len=16, k_len=16, window=4)
    sparse = MaskSpec(q_len=16, k_len=16, window=4, global_tokens=2)
    bf16, fp32 = _CudaQueries(torch.bfloat16), _CudaQueries(torch.float32)
    assert choose_backend("test", bf16, window, 0.0) == "flash"
    assert choose_backend("test", bf16, sparse, 0.0) == "flex"  # flash has no global tokens
    assert choose_backend("test", fp32, window, 0.0) == "flex"  # flash needs fp16/bf16
    assert choose_backend("test", bf16, sparse, 0.1) == "sdpa"  # flex has no dropout
    assert choose_backend("test", fp32, MaskSpec(q_len=16, k_len=16), 0.0) == "sdpa"
