"""nmt's decoder in float32, bfloat16 and int8 against CTranslate2's float32 and int8, in ``nmt bench translate``.

The same random model, forced lengths and batches as the rest of the bench: ``nmt bfloat16`` and ``nmt int8`` are
nmt's model converted by ``nmt translate --dtype`` (nmt/decoding/dtypes.py), CTranslate2's are the model exported
with ``nmt export ct2`` (nmt/bench/exported.py). The table gives each system's sentences/s at each thread count and
beam, and the two ratios of issue 30's targets: nmt float32 ÷ CTranslate2 float32 (target ≥ 1.0) and nmt's faster
reduced format ÷ CTranslate2 int8 (target ≥ 0.9 at beam 5).
"""

from __future__ import annotations

from typing import Optional

from nmt.bench.common import markdown_table
from nmt.errors import plural

DTYPES = ("float32", "bfloat16", "int8")  # what `--dtypes` takes: nmt translate --dtype's formats but auto
REDUCED = DTYPES[1:]
TARGETS = {"float32": 1.0, "reduced": 0.9}


def reduced_models(model, dtypes: list[str]) -> dict[str, object]:
    """System name → ``model`` converted to each reduced dtype asked for (``nmt bfloat16``, ``nmt int8``)."""
    from nmt.decoding.dtypes import for_inference

    return {f"nmt {dtype}": for_inference(model, dtype, "cpu") for dtype in dtypes if dtype in REDUCED}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a / b


def format_rows(per: dict[str, dict], threads: int, beam: int, label: Optional[str]) -> tuple[dict, list[str]]:
    """The JSON record and Markdown row of one (threads, beam) measurement; ``per`` maps system name to its record
    with ``sentences_per_s``."""
    speed = {name: r["sentences_per_s"] for name, r in per.items()}
    fp32 = _ratio(speed.get("nmt"), speed.get("nmt→CT2 float32"))
    reduced = {name: s for name, s in speed.items() if name in (f"nmt {d}" for d in REDUCED)}
    best = max(reduced, key=reduced.get) if reduced else None
    low = _ratio(reduced.get(best), speed.get("nmt→CT2 int8")) if best else None
    record = {"attention": label, "threads": threads, "beam": beam, "sentences_per_s": speed,
              "nmt_float32_over_ct2_float32": fp32, "fastest_reduced": best, "reduced_over_ct2_int8": low}

    def verdict(value: Optional[float], target: float, applies: bool = True) -> str:
        if value is None:
            return "—"
        mark = f" ({'meets' if value >= target else 'misses'} ≥{target})" if applies else ""
        return f"{value:.2f}×{mark}"

    cells = [speed.get(name) for name in ("nmt", "nmt bfloat16", "nmt int8", "nmt→CT2 float32", "nmt→CT2 int8")]
    row = [row_label(label, threads, beam),
           *("—" if c is None else f"{c:.1f}" for c in cells),
           verdict(fp32, TARGETS["float32"]),
           verdict(low, TARGETS["reduced"], applies=beam == 5) + (f" ({best.split()[1]})" if best else "")]
    return record, row


def row_label(label: Optional[str], threads: Optional[int], beam: int) -> str:
    """A row's name: the attention variant (when several are run), the thread count (when given) and the search, e.g.
    'mqa, 2 threads, beam 5'."""
    parts = [label, threads and plural(threads, "thread"), "greedy" if beam == 1 else f"beam {beam}"]
    return ", ".join(str(part) for part in parts if part)


HEADER = ["threads, decoding", "nmt float32", "nmt bfloat16", "nmt int8", "CT2 float32", "CT2 int8",
          "nmt float32 ÷ CT2 float32", "fastest nmt reduced ÷ CT2 int8"]


def formats_table(rows: list[list[str]]) -> str:
    """The Markdown table of ``format_rows`` rows, with what it shows."""
    return ("nmt in float32, bfloat16 and int8 (`--dtypes`; `nmt translate --dtype`) against its own model exported "
            "to CTranslate2 float32 and int8, sentences/s, the same forced lengths as above; targets: float32 ≥ 1.0× "
            "CTranslate2 float32, the faster of bfloat16/int8 ≥ 0.9× CTranslate2 int8 at beam 5\n\n"
            + markdown_table(HEADER, rows))
