"""The backend registry: the names a config may give, each limit refused with the values and what to use instead,
the documentation's table against it, and no torch imported to check a config."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.attention import BACKENDS, backends
from nmt.attention.backends import REGISTRY, SHORT_DTYPES, mask_problem, site_problem, weights_problem

DOCS = Path(__file__).parents[2] / "docs" / "attention.md"


def test_the_config_names_are_auto_and_the_registry():
    assert BACKENDS == ("auto", *REGISTRY) == ("auto", "math", "sdpa", "flex", "flash", "band", "matmul")
    assert all(name == spec.name for name, spec in REGISTRY.items())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_kernel_and_check_the_registry_names_imports(name):
    spec = REGISTRY[name]
    assert callable(backends.kernel(name))
    for check in (spec.device_check, spec.call_check):
        assert check is None or callable(backends._load(check))


@pytest.mark.parametrize(
    "backend, kwargs, expected",
    [
        ("flex", dict(dropout=0.1), "backend 'flex' cannot apply attention dropout (dropout=0.1): FlexAttention takes "
                                    "no dropout and, on CPU, computes no gradients; use backend sdpa or dropout 0"),
        ("band", dict(), "backend 'band' needs a window (window=None): it computes sliding-window attention (plus "
                         "global tokens) only, block by block over one sequence's positions; use backend sdpa, flex "
                         "or auto"),
        ("band", dict(window=4, global_tokens=2), None),
        ("flash", dict(window=4, global_tokens=2), "backend 'flash' cannot express global tokens (global_tokens=2)"),
        ("sdpa", dict(window=4, global_tokens=2, dropout=0.1), None),
        ("flex", dict(window=4, global_tokens=2), None),
        ("band", dict(window=4, dropout=0.1), None),
        ("flash", dict(window=4, dropout=0.1), None),
    ],
    ids=["flex-dropout", "band-no-window", "band-globals", "flash-globals", "sdpa", "flex", "band", "flash"],
)
def test_mask_limits_name_the_values_and_what_to_use(backend, kwargs, expected):
    problem = mask_problem(backend, **{"window": None, "global_tokens": 0, "dropout": 0.0, **kwargs})
    if expected is None:
        assert problem is None
    else:
        assert problem.startswith(expected) and "; use " in problem


def test_site_limits_apply_to_cross_attention_only():
    assert site_problem("band", window=4, cross=False) is None
    assert site_problem("band", window=4, cross=True).startswith("backend 'band' is for self-attention only")
    assert site_problem("flash", window=4, cross=False) is None
    assert site_problem("flash", window=None, cross=True) is None
    assert "cannot window cross-attention (window=4)" in site_problem("flash", window=4, cross=True)
    assert all(site_problem(name, window=4, cross=True) is None for name in ("math", "sdpa", "flex", "matmul"))


def test_only_the_registered_backends_with_weights_return_them():
    assert weights_problem("math") is None
    assert weights_problem("auto") == "only backend 'math' returns attention weights (asked of 'auto')"


def test_the_registry_and_the_config_checks_import_no_torch():
    code = ("import sys; from nmt.config import ModelConfig; from nmt.attention.backends import static_problem; "
            "ModelConfig(); print('torch' in sys.modules)")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "False"


def docs_backend_rows() -> list[tuple[str, str]]:
    """(backend, limits) from the table of the "### Backends" section of docs/attention.md."""
    section = DOCS.read_text().split("### Backends", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), cells[2]))
    return rows


def declared_limits(spec: backends.Backend) -> dict[str, tuple[bool, str]]:
    """Each limit a registry entry may declare: (declared?, how the docs' limits column words it)."""
    dtypes = "/".join(SHORT_DTYPES[d] for d in spec.dtypes)
    devices = " or ".join(d.upper() for d in spec.devices) if spec.devices != backends.ANY_DEVICE else "CPU|CUDA"
    return {
        "no dropout": (not spec.dropout, r"no attention dropout"),
        "no global tokens": (not spec.global_tokens, r"no global tokens"),
        "needs a window": (spec.needs_window, r"windows only"),
        "no cross-attention": (not spec.cross, r"no cross-attention(?! window)"),
        "no cross-attention window": (not spec.cross_window, r"no cross-attention window"),
        "forward only on CPU": ("cpu" in spec.devices and "cpu" not in spec.backward, r"CPU forward only"),
        "devices": (spec.devices != backends.ANY_DEVICE, rf"\b({devices})( with [^;]*)? only"),
        "dtypes": (bool(spec.dtypes), rf"(?<![\w/]){dtypes}(?![\w/])[^;]* only" if dtypes else r"\bfp16\b|\bbf16\b"),
        "weights": (spec.weights, r"returns attention weights"),
        "full scores": (spec.full_scores, r"holds every score"),
    }


def test_the_docs_backends_table_follows_the_registry():
    rows = docs_backend_rows()
    assert [name for name, _ in rows] == [*REGISTRY, "auto"]  # auto last: it picks one of the others
    for name, limits in rows[:-1]:
        for limit, (declared, wording) in declared_limits(REGISTRY[name]).items():
            mentioned = re.search(wording, limits) is not None
            assert mentioned == declared, f"{name}: the registry {'declares' if declared else 'lacks'} {limit!r}, " \
                                          f"the docs' row {'says' if mentioned else 'lacks'} it: {limits}"
