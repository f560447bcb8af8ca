"""``nmt analyze heads``: per attention site, layer and head, the mean attention entropy and the importance of Michel,
Levy and Neubig (2019), "Are Sixteen Heads Really Better than One?" (nmt.analysis.head_scores); a pruning curve per
site — BLEU as the least important heads are masked one by one — and which site tolerates the fewest heads
(nmt.analysis.pruning); the table, heatmaps and curves in ``--out`` (nmt.analysis.heads_report).

Gates and masks act on the loaded model itself (`Seq2Seq.head_gates`). Entropy and importance come from
teacher-forced passes on ``--ref``; the curves translate ``--src`` with the decoding flags of ``nmt evaluate`` and
score with sacreBLEU against ``--ref``, so a curve's first point is what ``nmt evaluate`` reports for the same flags.
Importance and BLEU are measured on the same sentences.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from nmt.data.textio import read_aligned
from nmt.data.tokenizer import PAD_ID
from nmt.decoding.flags import FlagError, add_decode_flags, check_device, decode_config
from nmt.errors import UsageParser, first_line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = UsageParser(
        prog="nmt analyze heads",
        description="Per-head attention entropy and importance (Michel et al. 2019), and BLEU as each site's least "
                    "important heads are masked one by one.")
    parser.add_argument("--model", required=True, help="exported model directory or a training .ckpt")
    parser.add_argument("--src", required=True, help="source file (.gz read transparently)")
    parser.add_argument("--ref", required=True, help="reference file (.gz read transparently)")
    parser.add_argument("--out", default="heads", help="write heads.json, heads.md, heads.png, pruning.png here "
                        "(default ./heads)")
    parser.add_argument("--max-sentences", type=int, default=None,
                        help="use the first N lines of --src and --ref (default: all)")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="BLEU a site may lose and still count its remaining heads as enough (default 1.0)")
    parser.add_argument("--tokenized", action="store_true",
                        help="references are tokenized and lowercased: prune by BLEU with tokenize=none (implied "
                             "when the model's run used data.bleu_tokenize=none)")
    add_decode_flags(parser, exclude=("nbest", "dtype"))  # one float32 hypothesis per line
    return parser.parse_args(argv)


def read_pairs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The first ``--max-sentences`` lines of --src and --ref, which must have as many lines, at least one. Also
    makes ``--out``, so a folder that cannot be written fails before the minutes of decoding, not after."""
    if args.max_sentences is not None and args.max_sentences < 1:
        raise FlagError(f"--max-sentences ({args.max_sentences}) must be >= 1")
    if args.tolerance < 0:
        raise FlagError(f"--tolerance ({args.tolerance:g}) must be >= 0")
    sources, references = read_aligned(args.src, args.ref, "analyse")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return sources[: args.max_sentences], references[: args.max_sentences]


def analyze(args: argparse.Namespace, progress=None) -> tuple[dict, list[str], list[Path]]:
    """Run the whole analysis; returns (the heads.json content, the summary lines, the files written)."""
    from nmt.analysis import heads_report
    from nmt.analysis.head_scores import score_heads, teacher_forced_batches
    from nmt.analysis.pruning import masking_order, pruning_curves, verdict
    from nmt.decoding.loading import load_model_info
    from nmt.decoding.translate import Translator

    cfg = decode_config(args)
    check_device(args.device)
    sources, references = read_pairs(args)
    model, tokenizer, info = load_model_info(args.model, args.device)
    tokenized = args.tokenized or info.get("bleu_tokenize") == "none"
    metric = "bleu_tokenized" if tokenized else "bleu"
    start = time.perf_counter()
    batches = teacher_forced_batches(tokenizer, sources, references, args.batch_tokens, args.max_source_len)
    if not batches:
        raise ValueError(f"{args.src} / {args.ref}: no pair with both sides non-blank: nothing to analyse")
    scores = score_heads(model, batches)
    scored = time.perf_counter()
    translator = Translator(model, tokenizer, args.device)

    def translate() -> list[str]:
        return [t.text for t in translator.translate_full(sources, cfg, args.batch_tokens, args.max_source_len,
                                                          scores=False)]

    orders = {site: masking_order(s.importance_normalized) for site, s in scores.items()}
    progress = functools.partial(progress, metric=metric) if progress is not None else None
    curves = pruning_curves(model, translate, references, tokenized, orders, progress)
    judged = verdict(curves, metric, args.tolerance)
    done = time.perf_counter()
    meta = {
        "model": str(args.model), "src": str(args.src), "ref": str(args.ref), "sentences": len(sources),
        "scored_pairs": sum(int(b["src"].size(0)) for b in batches),
        "target_tokens": sum(int((b["tgt_out"] != PAD_ID).sum()) for b in batches),
        "attention": model.cfg.variants(),
        "decoding": {**asdict(cfg), "batch_tokens": args.batch_tokens, "max_source_len": args.max_source_len,
                     "device": args.device},
        "seconds": {"entropy_and_importance": round(scored - start, 2), "pruning": round(done - scored, 2),
                    "total": round(done - start, 2)},
    }
    report = heads_report.to_json(meta, scores, curves, metric, judged)
    files = heads_report.write_report(Path(args.out), report, scores, curves, metric, judged)
    return report, heads_report.summary(scores, judged, metric), files


def _progress(site: str, k: int, total: int, scores: dict, metric: str = "bleu") -> None:
    """One stderr line per point of a curve (the BLEU the curves use): they decode the test set once per head."""
    print(f"nmt analyze heads: {site}: {k} of {total} heads masked, {metric} {scores[metric]:.2f}", file=sys.stderr)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="nmt analyze heads: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        report, lines, files = analyze(args, _progress)
    except (FlagError, ValueError, OSError) as error:
        print(f"nmt analyze heads: {first_line(error)}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    print(f"wrote {', '.join(str(f) for f in files)} ({report['seconds']['total']:.0f} s)")
    return 0
