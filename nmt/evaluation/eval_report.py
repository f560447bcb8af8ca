"""The report of ``nmt evaluate --report DIR``: metrics.json, report.md, hypotheses.txt (nbest.txt) and the attention
pictures of a typical sentence, and attention.html, the offline viewer of three sentences (nmt.analysis.viewer), drawn
from weights the ``math`` backend records (Seq2Seq.recording_attention)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def attention_pictures(model, tokenizer, source: str, hypothesis: str, out_dir: Path) -> dict[str, str]:
    """Per-head grids (last layer) for the three sites and the cross-attention alignment, for one sentence."""
    from nmt.data.batching import collate
    from nmt.evaluation import plots

    device = next(model.parameters()).device
    src_ids, hyp_ids = tokenizer.encode([source, hypothesis])
    batch = collate([src_ids], [hyp_ids])
    src, src_lengths = batch["src"].to(device), batch["src_lengths"].to(device)
    with model.recording_attention() as weights:
        model.decode(batch["tgt_in"].to(device), model.encode(src, src_lengths), src_lengths)
    src_pieces = tokenizer.pieces(source) + ["</s>"]
    tgt_in_pieces = ["<s>"] + tokenizer.pieces(hypothesis)
    # A decoder query row is labelled with the subword it produces, in every picture (the alignment's convention);
    # decoder self-attention keys hold the decoder's input at their position, bos first.
    tgt_out_pieces = tokenizer.pieces(hypothesis) + ["</s>"]
    last = lambda ws: ws[-1][0].float().cpu().numpy()  # noqa: E731 (last layer, the only sentence)
    files = {
        "encoder_self": plots.head_grid(last(weights["encoder_self"]), src_pieces, src_pieces,
                                        "encoder self-attention (last layer)", out_dir / "attention_encoder_self.png",
                                        "source", "source"),
        "decoder_self": plots.head_grid(last(weights["decoder_self"]), tgt_out_pieces, tgt_in_pieces,
                                        "decoder self-attention (last layer)", out_dir / "attention_decoder_self.png",
                                        "target", "target prefix (decoder input)"),
        "cross": plots.head_grid(last(weights["cross"]), tgt_out_pieces, src_pieces,
                                 "cross-attention (last layer)", out_dir / "attention_cross.png", "target", "source"),
        "alignment": plots.alignment(last(weights["cross"]).mean(0), tgt_out_pieces, src_pieces,
                                     "cross-attention alignment (last layer, mean over heads)",
                                     out_dir / "alignment.png"),
    }
    return {name: path.name for name, path in files.items()}


def write_report(report_dir: Path, metrics: dict, args: argparse.Namespace, model, tokenizer, sources: list[str],
                 hypotheses: list[str], example: Optional[int], nbest: Optional[str]) -> None:
    """metrics.json, report.md, hypotheses.txt (one line per source line), nbest.txt with --nbest N > 1, the
    attention pictures of the example sentence and attention.html for it and two more (`viewer_lines`)."""
    from nmt.analysis.viewer import MAX_SUBWORDS, write_viewer

    pictures = attention_pictures(model, tokenizer, sources[example], hypotheses[example], report_dir) \
        if example is not None else {}
    metrics["pictures"] = pictures
    lengths = zip(tokenizer.encode(sources), tokenizer.encode(hypotheses))
    fit = {i for i, (s, h) in enumerate(lengths) if max(len(s), len(h)) + 1 <= MAX_SUBWORDS}
    shown = viewer_lines(sources, hypotheses, allowed=fit)
    if not shown and viewer_lines(sources, hypotheses):
        log.info("no attention.html: every line has more than %d subwords on a side, which the page cannot hold "
                 "(nmt analyze attention shows chosen lines)", MAX_SUBWORDS)
        metrics["viewer"] = {"file": None, "why": f"every line is longer than {MAX_SUBWORDS} subwords"}
    if shown:
        title = f"{args.model}, lines {', '.join(str(i + 1) for i in shown)}"
        write_viewer(report_dir / "attention.html", model, tokenizer, [sources[i] for i in shown],
                     [hypotheses[i] for i in shown], title=title, lines=[i + 1 for i in shown])
        metrics["viewer"] = {"file": "attention.html", "lines": [i + 1 for i in shown]}
    metrics["example"] = {"line": example + 1 if example is not None else None,
                          "source": sources[example] if example is not None else None,
                          "hypothesis": hypotheses[example] if example is not None else None}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (report_dir / "report.md").write_text(render_report(metrics, args))
    (report_dir / "hypotheses.txt").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    if nbest is not None:
        (report_dir / "nbest.txt").write_text(nbest, encoding="utf-8")


def example_line(sources: list[str]) -> Optional[int]:
    """The sentence of median length among the non-blank ones: a typical example for pictures and cache sizes."""
    candidates = sorted((len(s), i) for i, s in enumerate(sources) if s.strip())
    return candidates[len(candidates) // 2][1] if candidates else None


def viewer_lines(sources: list[str], hypotheses: list[str], count: int = 3,
                 allowed: Optional[set[int]] = None) -> list[int]:
    """Up to ``count`` lines for the viewer: the quartiles and median of source length among the lines with a source
    and a hypothesis (an empty hypothesis has nothing for the decoder's sites to show), and among ``allowed`` (0-based
    indices) when given; shortest first."""
    candidates = sorted((len(s), i) for i, (s, h) in enumerate(zip(sources, hypotheses))
                        if s.strip() and h.strip() and (allowed is None or i in allowed))
    if len(candidates) <= count:
        return [i for _, i in candidates]
    picks = sorted({round(q * (len(candidates) - 1) / (count + 1)) for q in range(1, count + 1)})
    return [candidates[p][1] for p in picks]


def decoding_line(d: dict) -> str:
    """The report's line on how the hypotheses were made: the search settings, or the file they were read from."""
    if "beam" in d and d["beam"] is None:  # --hyp: every setting null (checked so, as a file may be called "model")
        return f"Nothing decoded: the hypotheses were read from `{d['hypotheses_from']}` (`--hyp`)."
    search = (f"sampling (top-k {d['top_k']}, top-p {d['top_p']}, temperature {d['temperature']}, seed {d['seed']})"
              if d["sampling"] else f"beam {d['beam']}, length penalty α={d['length_penalty']}")
    return (f"{search}, max length {d['max_len_a']}·source + {d['max_len_b']}, min length {d['min_len']}, sources "
            f"truncated at {d['max_source_len']} subwords, batches of {d['batch_tokens']} tokens, device "
            f"{d['device']}, {d.get('dtype', 'float32')}")


def render_report(metrics: dict, args: argparse.Namespace) -> str:
    s = metrics["scores"]
    lines = [f"# Evaluation of `{args.model}`", "", f"Source `{args.src}`, reference `{args.ref}`.", "",
             "| metric | score | sacreBLEU signature |", "|---|---|---|"]
    for name in ("bleu", "chrf", "ter", "bleu_tokenized"):
        if name in s:
            signature = s[name + "_signature"].replace("|", "\\|")  # pipes would split the table cell
            lines.append(f"| {name} | {s[name]:.2f} | {signature} |")
    lines += ["", "## Decoding", "", decoding_line(metrics["decoding"])]
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
    if metrics.get("viewer") and metrics["viewer"]["file"] is None:
        lines += ["", f"No attention viewer: {metrics['viewer']['why']} (`nmt analyze attention` shows chosen lines)."]
    elif metrics.get("viewer"):
        lines += ["", f"Every site, layer and head of lines {', '.join(map(str, metrics['viewer']['lines']))}, "
                  f"with each site's mask: [{metrics['viewer']['file']}]({metrics['viewer']['file']}) (opens offline)."]
    if metrics.get("pictures"):
        ex = metrics["example"]
        lines += ["", "## Attention", "", f"Line {ex['line']}: {ex['source']} → {ex['hypothesis']}", ""]
        lines += [f"![{name}]({file})" for name, file in metrics["pictures"].items()]
    return "\n".join(lines) + "\n"
