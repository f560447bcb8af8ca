"""Translate and score with sacreBLEU — the one code path for validation BLEU and ``nmt evaluate`` — and the
evaluation report (scores, settings, speed, size, KV cache, attention pictures)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import sacrebleu
import torch

from nmt.config import DecodeConfig
from nmt.decode_flags import MAX_SOURCE_LEN, FlagError, add_decode_flags, check_device, decode_config
from nmt.errors import first_line
from nmt.textio import read_lines, some

log = logging.getLogger("nmt.evaluate")


def translate_texts(model, tokenizer, texts: list[str], cfg: DecodeConfig, max_tokens: int = 4096,
                    max_len: int = MAX_SOURCE_LEN) -> list[str]:
    """Detokenized translations, one per input, in input order; a blank input gives a blank output."""
    from nmt.translate import Translator

    was_training = model.training
    try:
        translator = Translator(model, tokenizer, next(model.parameters()).device)
        return [t.text for t in translator.translate_full(texts, cfg, max_tokens, max_len, scores=False)]
    finally:
        model.train(was_training)


def _metric(name: str, tokenize: Optional[str] = None):
    if name == "bleu":
        # tokenize='none' says the text is already tokenized, so sacreBLEU's "forgot to detokenize?" heuristic only
        # repeats three warnings per validation; force silences it without entering the signature.
        return sacrebleu.BLEU(tokenize=tokenize, force=tokenize == "none")
    return sacrebleu.CHRF() if name == "chrf" else sacrebleu.TER()


def bleu(hypotheses: list[str], references: list[str], tokenize: Optional[str] = None) -> float:
    return _metric("bleu", tokenize).corpus_score(hypotheses, [references]).score


def corpus_scores(hypotheses: list[str], references: list[str], tokenized: bool = False) -> dict:
    """sacreBLEU BLEU, chrF and TER with signatures; with ``tokenized`` also BLEU with tokenize='none', the figure
    papers report on pre-tokenized, lowercased references."""
    scores: dict = {}
    names = [("bleu", None), ("chrf", None), ("ter", None)] + ([("bleu_tokenized", "none")] if tokenized else [])
    for name, tokenize in names:
        metric = _metric(name.split("_")[0], tokenize)
        scores[name] = round(metric.corpus_score(hypotheses, [references]).score, 4)
        scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


def translate_and_score(model, tokenizer, sources: list[str], references: list[str], cfg: DecodeConfig,
                        max_tokens: int = 4096, max_len: int = MAX_SOURCE_LEN,
                        tokenize: Optional[str] = None) -> tuple[float, list[str]]:
    with torch.no_grad():
        hypotheses = translate_texts(model, tokenizer, sources, cfg, max_tokens, max_len)
    return bleu(hypotheses, references, tokenize), hypotheses


def read_text(path: str | Path) -> list[str]:
    """The lines of a source, reference or hypothesis file as nmt.textio reads them for every command (training and
    validation included): .gz decompressed, split at "\\n" only, CRLF and a leading byte-order mark dropped. Invalid
    UTF-8 is replaced (U+FFFD) with a warning naming the lines; a missing file is a one-line error."""
    lines, invalid = read_lines(path, errors="replace")
    if invalid:
        log.warning("%s: %d lines are not valid UTF-8; invalid bytes replaced by U+FFFD (lines %s)",
                    path, len(invalid), some(invalid))
    return lines


@torch.no_grad()
def kv_cache_bytes(model, src_ids: list[int], hyp_len: int, beam: int) -> dict[str, int]:
    """Bytes of the decoder's KV caches for one sentence decoded with ``beam`` beams to ``hyp_len`` subwords,
    read from the allocated cache tensors."""
    from nmt.batching import collate
    from nmt.tokenizer import BOS_ID

    device = next(model.parameters()).device
    batch = collate([src_ids], [[]])
    src, lengths = batch["src"].to(device), batch["src_lengths"].to(device)
    state = model.init_state(model.encode(src, lengths), lengths)
    # As beam search lays it out: `beam` decoder rows over one source row (one cross-attention copy per sentence
    # where cross-attention has no window; see DecoderState.select_beams).
    state.select_beams(torch.zeros(beam, dtype=torch.long, device=device), torch.arange(1, device=device), beam)
    tokens = torch.full((beam, 1), BOS_ID, device=device)
    for _ in range(max(hyp_len, 1)):
        tokens = model.decode_step(tokens, state).argmax(-1)
    self_bytes, cross_bytes = state.self_cache_bytes(), state.cross_cache_bytes()
    return {"self_attention": self_bytes, "cross_attention": cross_bytes, "total": self_bytes + cross_bytes}


@torch.no_grad()
def attention_pictures(model, tokenizer, source: str, hypothesis: str, out_dir: Path) -> dict[str, str]:
    """Per-head grids (last layer) for the three sites and the cross-attention alignment, for one sentence."""
    from nmt import plots
    from nmt.batching import collate

    device = next(model.parameters()).device
    src_ids, hyp_ids = tokenizer.encode([source, hypothesis])
    batch = collate([src_ids], [hyp_ids])
    encoder_w: list = []
    decoder_w: dict = {"decoder_self": [], "cross": []}
    memory = model.encode(batch["src"].to(device), batch["src_lengths"].to(device), weights=encoder_w)
    model.decode(batch["tgt_in"].to(device), memory, batch["src_lengths"].to(device), weights=decoder_w)
    src_pieces = tokenizer.pieces(source) + ["</s>"]
    tgt_in_pieces = ["<s>"] + tokenizer.pieces(hypothesis)
    # A decoder query row is labelled with the subword it produces, in every picture (the alignment's convention);
    # decoder self-attention keys hold the decoder's input at their position, bos first.
    tgt_out_pieces = tokenizer.pieces(hypothesis) + ["</s>"]
    last = lambda ws: ws[-1][0].float().cpu().numpy()  # noqa: E731 (last layer, the only sentence)
    files = {
        "encoder_self": plots.head_grid(last(encoder_w), src_pieces, src_pieces, "encoder self-attention (last layer)",
                                        out_dir / "attention_encoder_self.png", "source", "source"),
        "decoder_self": plots.head_grid(last(decoder_w["decoder_self"]), tgt_out_pieces, tgt_in_pieces,
                                        "decoder self-attention (last layer)", out_dir / "attention_decoder_self.png",
                                        "target", "target prefix (decoder input)"),
        "cross": plots.head_grid(last(decoder_w["cross"]), tgt_out_pieces, src_pieces,
                                 "cross-attention (last layer)", out_dir / "attention_cross.png", "target", "source"),
        "alignment": plots.alignment(last(decoder_w["cross"]).mean(0), tgt_out_pieces, src_pieces,
                                     "cross-attention alignment (last layer, mean over heads)",
                                     out_dir / "alignment.png"),
    }
    return {name: path.name for name, path in files.items()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt evaluate", description="Translate a test set and score it.")
    parser.add_argument("--model", required=True, help="exported model directory or a training .ckpt")
    parser.add_argument("--src", required=True, help="source file (.gz read transparently)")
    parser.add_argument("--ref", required=True, help="reference file (.gz read transparently)")
    parser.add_argument("--hyp", help="score these hypotheses instead of translating")
    parser.add_argument("--report", help="write metrics.json, report.md, hypotheses.txt (nbest.txt) and pictures here")
    parser.add_argument("--tokenized", action="store_true",
                        help="references are tokenized and lowercased: also report BLEU with tokenize=none (implied "
                             "when the model's run used data.bleu_tokenize=none)")
    add_decode_flags(parser)
    return parser.parse_args(argv)


def _read_test_set(args: argparse.Namespace) -> tuple[list[str], list[str], Optional[list[str]]]:
    """Sources, references and (with --hyp) hypotheses: as many lines each, and at least one."""
    sources, references = read_text(args.src), read_text(args.ref)
    if len(sources) != len(references):
        raise ValueError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
    hypotheses = read_text(args.hyp) if args.hyp else None
    if hypotheses is not None and len(hypotheses) != len(references):
        raise ValueError(f"{args.hyp} has {len(hypotheses)} lines but {args.ref} has {len(references)}")
    if not references:
        raise ValueError(f"{args.ref} has no lines: nothing to score")
    return sources, references, hypotheses


def evaluate(args: argparse.Namespace) -> dict:
    from nmt.loading import load_model_info
    from nmt.translate import Translator, format_output

    cfg = decode_config(args)
    check_device(args.device)
    sources, references, hypotheses = _read_test_set(args)
    model, tokenizer, info = load_model_info(args.model, args.device)
    tokenized = args.tokenized or info.get("bleu_tokenize") == "none"  # an exported directory or a checkpoint
    start = time.perf_counter()
    seconds, translations = None, None
    if hypotheses is None:
        translations = Translator(model, tokenizer, args.device).translate_full(
            sources, cfg, args.batch_tokens, args.max_source_len, scores=cfg.nbest > 1)
        hypotheses = [t.text for t in translations]
        seconds = time.perf_counter() - start
    metrics: dict = {"scores": corpus_scores(hypotheses, references, tokenized)}
    metrics["decoding"] = {**asdict(cfg), "batch_tokens": args.batch_tokens, "max_source_len": args.max_source_len,
                           "device": args.device, "hypotheses_from": args.hyp or "model"}
    out_tokens = sum(len(ids) + 1 for ids in tokenizer.encode(hypotheses))
    if seconds:
        metrics["speed"] = {"seconds": round(seconds, 3), "sentences_per_s": round(len(sources) / seconds, 2),
                            "tokens_per_s": round(out_tokens / seconds, 1)}
    parameters, size = model.size()
    metrics["model"] = {"parameters": parameters, "bytes": size, "attention": model.cfg.variants()}
    example = _example(sources)
    if example is not None:
        hyp_len = len(tokenizer.encode([hypotheses[example]])[0]) + 1
        src_ids = tokenizer.encode([sources[example]])[0][: args.max_source_len]
        metrics["kv_cache_bytes_per_sentence"] = {"beam": cfg.beam, "source_subwords": len(src_ids) + 1,
                                                  "target_subwords": hyp_len,
                                                  **kv_cache_bytes(model, src_ids, hyp_len, cfg.beam)}
    if args.report:
        nbest = format_output(translations, cfg.nbest) if translations is not None and cfg.nbest > 1 else None
        write_report(Path(args.report), metrics, args, model, tokenizer, sources, hypotheses, example, nbest)
    return metrics


def write_report(report_dir: Path, metrics: dict, args: argparse.Namespace, model, tokenizer, sources: list[str],
                 hypotheses: list[str], example: Optional[int], nbest: Optional[str]) -> None:
    """metrics.json, report.md, hypotheses.txt (one line per source line), nbest.txt with --nbest N > 1, and the
    attention pictures of the example sentence."""
    pictures = attention_pictures(model, tokenizer, sources[example], hypotheses[example], report_dir) \
        if example is not None else {}
    metrics["pictures"] = pictures
    metrics["example"] = {"line": example + 1 if example is not None else None,
                          "source": sources[example] if example is not None else None,
                          "hypothesis": hypotheses[example] if example is not None else None}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (report_dir / "report.md").write_text(render_report(metrics, args))
    (report_dir / "hypotheses.txt").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    if nbest is not None:
        (report_dir / "nbest.txt").write_text(nbest, encoding="utf-8")


def _example(sources: list[str]) -> Optional[int]:
    """The sentence of median length among the non-blank ones: a typical example for pictures and cache sizes."""
    candidates = sorted((len(s), i) for i, s in enumerate(sources) if s.strip())
    return candidates[len(candidates) // 2][1] if candidates else None


def render_report(metrics: dict, args: argparse.Namespace) -> str:
    s = metrics["scores"]
    lines = [f"# Evaluation of `{args.model}`", "", f"Source `{args.src}`, reference `{args.ref}`.", "",
             "| metric | score | sacreBLEU signature |", "|---|---|---|"]
    for name in ("bleu", "chrf", "ter", "bleu_tokenized"):
        if name in s:
            signature = s[name + "_signature"].replace("|", "\\|")  # pipes would split the table cell
            lines.append(f"| {name} | {s[name]:.2f} | {signature} |")
    d = metrics["decoding"]
    search = (f"sampling (top-k {d['top_k']}, top-p {d['top_p']}, temperature {d['temperature']}, seed {d['seed']})"
              if d["sampling"] else f"beam {d['beam']}, length penalty α={d['length_penalty']}")
    lines += ["", "## Decoding", "", f"{search}, max length {d['max_len_a']}·source + {d['max_len_b']}, "
              f"min length {d['min_len']}, sources truncated at {d['max_source_len']} subwords, batches of "
              f"{d['batch_tokens']} tokens, device {d['device']}"]
    if "speed" in metrics:
        sp = metrics["speed"]
        lines += ["", f"Speed: {sp['sentences_per_s']} sentences/s, {sp['tokens_per_s']} target tokens/s "
                  f"({sp['seconds']} s in all)."]
    m = metrics["model"]
    lines += ["", "## Model", "", f"{m['parameters']:,} parameters ({m['bytes'] / 2**20:.1f} MiB); attention: "
              + ", ".join(f"{site} {variant}" for site, variant in m["attention"].items())]
    if "kv_cache_bytes_per_sentence" in metrics:
        kv = metrics["kv_cache_bytes_per_sentence"]
        lines += ["", f"KV cache for one sentence at beam {kv['beam']} ({kv['source_subwords']} source, "
                  f"{kv['target_subwords']} target subwords): {kv['total']:,} bytes (self-attention "
                  f"{kv['self_attention']:,}, cross-attention {kv['cross_attention']:,})."]
    if metrics.get("pictures"):
        ex = metrics["example"]
        lines += ["", "## Attention", "", f"Line {ex['line']}: {ex['source']} → {ex['hypothesis']}", ""]
        lines += [f"![{name}]({file})" for name, file in metrics["pictures"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="nmt evaluate: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        metrics = evaluate(args)
    except (FlagError, ValueError, OSError) as error:
        print(f"nmt evaluate: {first_line(error)}", file=sys.stderr)
        return 2
    for name, value in metrics["scores"].items():
        print(f"{name}: {value}")
    if "speed" in metrics:
        print(f"sentences/s: {metrics['speed']['sentences_per_s']}")
    return 0
