"""``nmt report RUN_DIR…``: one table and plots comparing training runs (e.g. a multirun over attention variants).

Per run: the attention variant of each site, parameters, best validation BLEU and its step, training tokens/s,
KV-cache bytes for a reference sentence (measured from the cache tensors), and — where ``nmt evaluate --report
RUN_DIR/eval`` was run — test BLEU, chrF and decoding sentences/s; BLEU and chrF of more test sets from
``RUN_DIR/eval_NAME`` folders (``scripts/multi30k_table.sh`` writes ``eval_2017``).

A run's model is its exported ``model/`` directory, or where there is none (a run stopped before its export) its
``checkpoints/best.ckpt`` or ``last.ckpt``: both give the same row. Paths that are not runs (a multirun folder's
``multirun.yaml``, a run that never finished) are skipped with a note on stderr; only when none is a run is that
an error.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch

from nmt.config import SITES
from nmt.errors import UsageParser, first_line, plural

REFERENCE = {"source_subwords": 20, "target_subwords": 20, "beam": 5}


def _float(value: str):
    return float(value) if value not in ("", None) else None


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of every logs/version_*/metrics.csv of a run (one version per start or resume), in order."""
    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    rows: list[dict] = []
    for file in files:
        with open(file, encoding="utf-8", newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def run_model(run_dir: Path) -> Optional[Path]:
    """The run's exported model directory, else its best, else its last checkpoint; None when it has none."""
    candidates = (run_dir / "model", run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt")
    return next((c for c in candidates if c.exists()), None)


def collect(run_dir: Path) -> dict:
    from nmt.decoding.loading import load_model
    from nmt.model import kv_cache_bytes

    if not run_dir.is_dir():
        what = "not a directory" if run_dir.exists() else "no such directory"
        raise ValueError(f"{run_dir}: not a finished nmt run ({what})")
    rows, model_path = read_metrics(run_dir), run_model(run_dir)
    if model_path is None or not rows:
        raise ValueError(f"{run_dir}: not a finished nmt run (needs model/ or checkpoints/best.ckpt, and "
                         "logs/version_*/metrics.csv)")
    model, _ = load_model(model_path)
    validations = [(int(r["step"]), _float(r.get("val_loss")), _float(r.get("val_bleu")))
                   for r in rows if r.get("val_loss")]
    throughput = [_float(r["tok_per_s"]) for r in rows if r.get("tok_per_s")]
    best = max((v for v in validations if v[2] is not None), key=lambda v: v[2], default=None)
    src = [4] * (REFERENCE["source_subwords"] - 1)
    kv = kv_cache_bytes(model, src, REFERENCE["target_subwords"], REFERENCE["beam"])
    run = {
        "run": str(run_dir),
        "attention": model.cfg.variants(),
        "parameters": model.parameter_count()[0],
        "best_val_bleu": best[2] if best else None,
        "best_step": best[0] + 1 if best else None,
        "train_tokens_per_s": round(statistics.median(throughput), 1) if throughput else None,
        "kv_cache_bytes": kv["total"],
        "validations": [{"step": s + 1, "val_loss": loss, "val_bleu": b} for s, loss, b in validations],
    }
    run.update(_test_scores(run_dir / "eval" / "metrics.json"))
    for extra in sorted(run_dir.glob("eval_*/metrics.json")):  # more test sets: eval_2017 → test_bleu_2017, …
        suffix = extra.parent.name[len("eval_"):]
        run.update({f"{key}_{suffix}": value for key, value in _test_scores(extra).items()
                    if key != "decode_sentences_per_s"})
    return run


def _test_scores(evaluation: Path) -> dict:
    """Test BLEU, chrF and decoding speed from an ``nmt evaluate --report`` folder's metrics.json, if there is one."""
    if not evaluation.is_file():
        return {}
    try:
        metrics = json.loads(evaluation.read_text(encoding="utf-8"))
        scores = metrics["scores"]
        # Models trained on tokenized references (multi30k_tok) are scored as papers do: tokenize=none.
        return {"test_bleu": scores.get("bleu_tokenized", scores["bleu"]), "test_chrf": scores["chrf"],
                "decode_sentences_per_s": metrics.get("speed", {}).get("sentences_per_s")}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{evaluation}: not an nmt evaluate metrics.json ({type(error).__name__}: {error})") from None


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def render(runs: list[dict]) -> str:
    extra = sorted({key for run in runs for key in run if key.startswith(("test_bleu_", "test_chrf_"))},
                   key=lambda key: (key.split("_", 2)[2], key))  # per test set: its BLEU, then its chrF
    columns = ["run", "encoder_self", "decoder_self", "cross", "parameters", "best_val_bleu", "best_step",
               "test_bleu", "test_chrf", *extra, "train_tokens_per_s", "decode_sentences_per_s", "kv_cache_bytes"]
    lines = ["# Run comparison", "",
             f"KV-cache bytes: one sentence of {REFERENCE['source_subwords']} source and "
             f"{REFERENCE['target_subwords']} target subwords at beam {REFERENCE['beam']}, all decoder layers, "
             "measured from the cache tensors. Test scores appear where `nmt evaluate --report RUN/eval` ran "
             "(`test_bleu`), and per further test set where it wrote `RUN/eval_NAME` (`test_bleu_NAME`).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run, name in zip(runs, run_names([r["run"] for r in runs])):
        values = {**run, **run["attention"], "run": name}
        lines.append("| " + " | ".join(_cell(values.get(c)) for c in columns) + " |")
    lines += ["", "![BLEU against KV-cache size](bleu_vs_kv_cache.png)", "",
              "![training curves](training_curves.png)"]
    return "\n".join(lines) + "\n"


def run_names(paths: list[str]) -> list[str]:
    """A label per run for the table and plots: its folder's name, or as many trailing path parts as tell it apart
    from the others (``out/gqa2-all/run`` and ``out/mqa-all/run`` are ``gqa2-all/run`` and ``mqa-all/run``)."""
    parts = [Path(p).parts for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(ps[-d:]) for ps, d in zip(parts, depth)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            return labels
        for i in clashing:
            depth[i] += 1


def collect_all(paths: list[Path]) -> list[dict]:
    """The rows of the paths that are runs; the others are skipped with a note. ValueError when none is a run."""
    from nmt.errors import first_line

    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(collect(path))
        except ValueError as error:
            skipped.append(first_line(error))
    if not runs:
        raise ValueError(skipped[0] if len(skipped) == 1 else f"none of the {len(paths)} paths is a finished nmt run "
                         f"(first: {skipped[0]})")
    for reason in skipped:  # on stderr, where they cannot mix into the table a user may redirect
        print(f"nmt report: skipped {reason}", file=sys.stderr)
    return runs


def report(run_dirs: list[Path], out: Path) -> list[dict]:
    from nmt.evaluation import plots

    runs = collect_all(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{name}: " + "/".join(r["attention"][s] for s in SITES)
             for r, name in zip(runs, run_names([r["run"] for r in runs]))]
    bleus = [r.get("test_bleu", r["best_val_bleu"]) or 0.0 for r in runs]
    plots.scatter([r["kv_cache_bytes"] / 1024 for r in runs], bleus, names,
                  "KV cache per sentence (KiB, beam 5)", "BLEU (test where evaluated, else best validation)",
                  out / "bleu_vs_kv_cache.png")
    plots.curves({name: ([v["step"] for v in r["validations"]], [v["val_loss"] for v in r["validations"]])
                  for name, r in zip(names, runs)}, "step", "validation loss", out / "training_curves.png")
    (out / "report.json").write_text(json.dumps(runs, indent=2) + "\n")
    (out / "report.md").write_text(render(runs))
    return runs


def main(argv: list[str]) -> int:
    parser = UsageParser(prog="nmt report", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("runs", nargs="+", help="run directories (a multirun's job folders: DIR/* is fine, what is "
                                                "not a run is skipped with a note)")
    parser.add_argument("--out", default="outputs/report", help="where report.md, report.json and PNGs go")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():
            runs = report([Path(r) for r in args.runs], Path(args.out))
    except (ValueError, OSError) as error:
        print(f"nmt report: {first_line(error)}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text())
    print(f"({plural(len(runs), 'run')}; JSON and plots in {args.out})")
    return 0
