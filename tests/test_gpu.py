"""CUDA checks (marker ``gpu``): every backend against the math oracle in bf16 and fp16, forward and gradients.

Skipped on machines without CUDA, with the reason shown. Run them with ``pytest -m gpu`` on a GPU machine.
"""

import pytest
import torch

from nmt.attention import AttentionBackendError, attend, flash, math_attention
from nmt.attention.backends import call_problem
from tests.cases import SITES, VARIANTS, make_case

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3}  # against a float64 reference
VARIANT_NAMES = [v[0] for v in VARIANTS]


def _reference(case):
    as64 = [t.detach().double().requires_grad_() for t in (case.q, case.k, case.v)]
    out, _ = math_attention(*as64, case.mask)
    return out, as64


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash", "matmul"])
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_backend_matches_math_on_cuda(variant, site, backend, dtype, padded):
    torch.manual_seed(0)
    case = make_case(variant, site, dtype=dtype, device="cuda", head_dim=64, padded=padded, requires_grad=True)
    if backend == "flash" and call_problem("flash", case.mask, 0.0, 64) is not None:
        with pytest.raises(AttentionBackendError, match="backend 'flash'"):
            attend(backend, case.q, case.k, case.v, case.mask)
        return
    expected, as64 = _reference(case)
    got, _ = attend(backend, case.q, case.k, case.v, case.mask)
    tol = TOLERANCE[dtype]
    assert not got.isnan().any()
    assert (got.double() - expected).abs().max() <= tol
    weights = torch.randn_like(expected)
    (got.double() * weights).sum().backward()
    (expected * weights).sum().backward()
    for ours, reference in zip((case.q, case.k, case.v), as64):
        assert (ours.grad.double() - reference.grad).abs().max() <= 4 * tol


def test_flash_without_the_package_runs_the_sdpa_flash_kernel(monkeypatch):
    monkeypatch.setattr(flash, "_varlen_kernel", lambda: (None, "torch SDPA FlashAttention-2"))
    case = make_case("gqa", "decoder_self", dtype=torch.bfloat16, device="cuda", head_dim=64, padded=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        got, _ = attend("flash", case.q, case.k, case.v, case.mask)
        torch.cuda.synchronize()
    kernels = " ".join(event.key.lower() for event in prof.key_averages())
    assert "flash" in kernels, kernels
    expected, _ = _reference(case)
    assert (got.double() - expected).abs().max() <= TOLERANCE[torch.bfloat16]


def test_bench_attention_on_cuda_measures_flash_and_the_cuda_allocator_peak(tmp_path):
    import json

    from nmt.bench import main

    assert main(["attention", "--device", "cuda", "--lengths", "256", "1024", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "attention.json").read_text())["cases"]
    flash_rows = [c for c in cases if c["backend"] == "flash" and c["variant"] in ("mha", "window-256")]
    assert flash_rows and all(c["status"] == "ok" and c["peak_bytes"] > 0 for c in flash_rows)
    assert all(c["status"] == "ok" for c in cases if c["backend"] == "flex")  # flex has a backward on CUDA
