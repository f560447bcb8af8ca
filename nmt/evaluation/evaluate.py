"""``nmt evaluate``: translate a test set (or read hypotheses) and score it with sacreBLEU (nmt.evaluation.scoring);
with ``--report DIR`` also write the evaluation report (nmt.evaluation.eval_report)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from nmt.data.textio import read_aligned
from nmt.decoding.flags import FlagError, add_decode_flags, check_device, check_dtype, decode_config
from nmt.errors import UsageParser, first_line
from nmt.evaluation.scoring import corpus_scores

log = logging.getLogger("nmt.evaluation.evaluate")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = UsageParser(prog="nmt evaluate", description="Translate a test set and score it.")
    parser.add_argument("--model", required=True, help="exported model directory or a training .ckpt")
    parser.add_argument("--src", required=True, help="source file (.gz read transparently)")
    parser.add_argument("--ref", required=True, help="reference file (.gz read transparently)")
    parser.add_argument("--hyp", help="score these hypotheses instead of translating")
    parser.add_argument("--report", help="write metrics.json, report.md, hypotheses.txt (nbest.txt), pictures and "
                        "attention.html (the offline attention viewer) into this folder")
    parser.add_argument("--tokenized", action="store_true",
                        help="references are tokenized and lowercased: also report BLEU with tokenize=none (implied "
                             "when the model's run used data.bleu_tokenize=none)")
    add_decode_flags(parser)
    return parser.parse_args(argv)


def _read_test_set(args: argparse.Namespace) -> tuple[list[str], list[str], Optional[list[str]]]:
    """Sources, references and (with --hyp) hypotheses: as many lines each, and at least one."""
    sources, references = read_aligned(args.src, args.ref)
    hypotheses = read_aligned(args.hyp, args.ref)[0] if args.hyp else None
    return sources, references, hypotheses


def evaluate(args: argparse.Namespace) -> dict:
    from nmt.decoding.dtypes import inference_model, weight_bytes
    from nmt.decoding.loading import load_model_info
    from nmt.decoding.translate import Translator, format_output
    from nmt.evaluation.eval_report import example_line, write_report
    from nmt.model import kv_cache_bytes

    cfg = decode_config(args)
    check_device(args.device)
    check_dtype(args.dtype, args.device)
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():  # before the decoding, not after
        raise ValueError(f"--report {args.report} is a file, not a folder")
    sources, references, hypotheses = _read_test_set(args)
    model, tokenizer, info = load_model_info(args.model, args.device)
    parameters = model.parameter_count()[0]  # before int8 turns the linear layers' weights into packed buffers
    model, dtype = inference_model(model, args.dtype if hypotheses is None else "float32", args.device)
    tokenized = args.tokenized or info.get("bleu_tokenize") == "none"  # an exported directory or a checkpoint
    start = time.perf_counter()
    seconds, translations = None, None
    if hypotheses is None:
        translations = Translator(model, tokenizer, args.device).translate_full(
            sources, cfg, args.batch_tokens, args.max_source_len, scores=cfg.nbest > 1)
        hypotheses = [t.text for t in translations]
        seconds = time.perf_counter() - start
    metrics: dict = {"scores": corpus_scores(hypotheses, references, tokenized)}
    settings = {**asdict(cfg), "batch_tokens": args.batch_tokens, "max_source_len": args.max_source_len,
                "device": args.device, "dtype": dtype}
    if args.hyp:  # nothing was decoded: the same keys, null, so no setting reads as if the hypotheses came from it
        settings = dict.fromkeys(settings)
    metrics["decoding"] = {**settings, "hypotheses_from": args.hyp or "model"}
    out_tokens = sum(len(ids) + 1 for ids in tokenizer.encode(hypotheses))
    if seconds:
        metrics["speed"] = {"seconds": round(seconds, 3), "sentences_per_s": round(len(sources) / seconds, 2),
                            "tokens_per_s": round(out_tokens / seconds, 1)}
    metrics["model"] = {"parameters": parameters, "bytes": weight_bytes(model), "attention": model.cfg.variants()}
    example = example_line(sources)
    if example is not None:
        # The reference's length, not the hypothesis's: models with the same sentencepiece model scored on this test
        # set get the same lengths, so their cache bytes compare (a hypothesis's length is the model's own).
        tgt_len = len(tokenizer.encode([references[example]])[0]) + 1
        src_ids = tokenizer.encode([sources[example]])[0][: args.max_source_len]
        metrics["kv_cache_bytes_per_sentence"] = {"beam": cfg.beam, "source_subwords": len(src_ids) + 1,
                                                  "target_subwords": tgt_len,
                                                  **kv_cache_bytes(model, src_ids, tgt_len, cfg.beam)}
    if args.report:
        nbest = format_output(translations, cfg.nbest) if translations is not None and cfg.nbest > 1 else None
        write_report(Path(args.report), metrics, args, model, tokenizer, sources, hypotheses, example, nbest)
    return metrics


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="nmt evaluate: %(message)s", stream=sys.stderr)
    try:
        metrics = evaluate(parse_args(argv))  # a bad flag is one line (UsageParser), like every other error here
    except (FlagError, ValueError, OSError) as error:
        print(f"nmt evaluate: {first_line(error)}", file=sys.stderr)
        return 2
    for name, value in metrics["scores"].items():
        print(f"{name}: {value}")
    if "speed" in metrics:
        print(f"sentences/s: {metrics['speed']['sentences_per_s']}")
    return 0
