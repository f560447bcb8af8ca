"""The offline attention viewer: one self-contained ``attention.html`` showing every site × layer × head of a few
sentences as heatmaps over their subwords, with each site's mask drawn under the weights.

The weights come from the ``math`` backend (`Seq2Seq.recording_attention`), from one teacher-forced pass over the
chosen sentences padded into one batch, as the model trains on them — so the padding the batch needs is part of the
picture. The page (``viewer.html`` beside this module) carries its script and styles inline and loads nothing, so it
opens from a file with no network; it draws the heatmaps on canvases.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

import torch

from nmt.config import SITES
from nmt.errors import UsageParser, plural

SCALE = 1000  # weights are stored as integers in [0, SCALE]: 3 decimals, and a third of the bytes of floats
# The page holds every weight of a sentence: sites × layers × heads × queries × keys. A 1,150-subword document in the
# `small` model is ~40 million weights, a page of hundreds of MB and many GB of Python lists while it is written; at
# this many subwords a side (source, target) it is ~2 million, a few MB.
MAX_SUBWORDS = 200
TEMPLATE = Path(__file__).with_name("viewer.html")
DATA_MARK = "/*ATTENTION_DATA*/null"


def mask_cells(site_cfg, causal: bool, q_real: int, k_real: int, q_padded: int, k_padded: int) -> str:
    """The mask of one site for one sentence as a string of ``q_padded · k_padded`` cell codes, row-major:
    ``a`` allowed by the window (or no window), ``g`` allowed only through a global token, ``m`` masked (causality or
    the window), ``p`` padding (a query or key past the sentence's real length). Rules: `nmt.attention.masks`."""
    from nmt.attention.masks import MaskSpec

    spec = MaskSpec(q_len=q_padded, k_len=k_padded, causal=causal, window=site_cfg.window,
                    global_tokens=site_cfg.global_tokens)
    q_pos, k_pos = spec.positions(torch.device("cpu"))
    allowed = spec.allowed(q_pos[:, None], k_pos[None, :])  # (q_padded, k_padded)
    local = MaskSpec(q_len=q_padded, k_len=k_padded, causal=causal, window=site_cfg.window).allowed(
        q_pos[:, None], k_pos[None, :])
    real = (q_pos[:, None] < q_real) & (k_pos[None, :] < k_real)
    rows = []
    for q in range(q_padded):
        rows.append("".join("p" if not real[q, k] else "a" if local[q, k] else "g" if allowed[q, k] else "m"
                            for k in range(k_padded)))
    return "".join(rows)


def _site_info(model) -> dict:
    cfg = model.cfg
    info = {}
    for site in SITES:
        resolved = cfg.site(site)
        layers = cfg.encoder_layers if site == "encoder_self" else cfg.decoder_layers
        info[site] = {"variant": resolved.variant, "layers": layers, "n_heads": resolved.n_heads,
                      "n_kv_heads": resolved.n_kv_heads, "window": resolved.window,
                      "global_tokens": resolved.global_tokens, "causal": site == "decoder_self"}
    return info


@torch.no_grad()
def attention_data(model, tokenizer, sources: list[str], targets: list[str], title: str = "",
                   lines: Optional[list[int]] = None) -> dict:
    """Everything the page draws, as JSON-ready lists: per sentence its subwords and, per site, the weights of every
    layer and head over the sentence's real cells (integers, weight · SCALE, rounded) and the padded batch's mask
    (`mask_cells`). ``targets`` are the decoder's side (hypotheses or references), teacher-forced. ``lines``: the
    sentences' 1-based line numbers in their file, which the page's menu shows.

    Raises ValueError when ``sources`` is empty, the two lists differ in length, or a sentence has more than
    MAX_SUBWORDS subwords on a side (eos included).
    """
    from nmt.data.batching import collate

    if not sources or len(sources) != len(targets):
        raise ValueError(f"need as many targets as sources, and at least one (got {len(sources)} and {len(targets)})")
    model.eval()
    device = next(model.parameters()).device
    src_ids, tgt_ids = tokenizer.encode(sources), tokenizer.encode(targets)
    for i, (src, tgt) in enumerate(zip(src_ids, tgt_ids)):
        side, n = max(("source", len(src) + 1), ("target", len(tgt) + 1), key=lambda item: item[1])
        if n > MAX_SUBWORDS:
            name = f"line {lines[i]}" if lines else f"sentence {i + 1}"
            raise ValueError(f"{name} has {n:,} {side} subwords: the attention page shows sentences of up to "
                             f"{MAX_SUBWORDS} (it holds every weight of every head); pick shorter lines")
    batch = collate(src_ids, tgt_ids)
    src, src_lengths = batch["src"].to(device), batch["src_lengths"].to(device)
    with model.recording_attention() as weights:
        model.decode(batch["tgt_in"].to(device), model.encode(src, src_lengths), src_lengths)
    sites = _site_info(model)
    S, T = batch["src"].size(1), batch["tgt_in"].size(1)
    sentences = []
    for i, (source, target) in enumerate(zip(sources, targets)):
        s_len, t_len = len(src_ids[i]) + 1, len(tgt_ids[i]) + 1
        pieces = {"src": tokenizer.pieces(source) + ["</s>"], "tgt_in": ["<s>"] + tokenizer.pieces(target),
                  "tgt_out": tokenizer.pieces(target) + ["</s>"]}
        shapes = {"encoder_self": (s_len, s_len, S, S), "decoder_self": (t_len, t_len, T, T),
                  "cross": (t_len, s_len, T, S)}
        per_site = {}
        for site in SITES:
            q_real, k_real, q_pad, k_pad = shapes[site]
            layers = [w[i, :, :q_real, :k_real] for w in weights[site]]  # each (n_heads, q_real, k_real)
            quantized = torch.stack(layers).float().mul(SCALE).round().int()  # (layers, n_heads, q_real, k_real)
            per_site[site] = {"weights": quantized.flatten(2).tolist(),
                              "mask": mask_cells(model.cfg.site(site), sites[site]["causal"], q_real, k_real,
                                                 q_pad, k_pad)}
        line = {"line": lines[i]} if lines else {}
        sentences.append({"source": source, "target": target, **line, **pieces, "sites": per_site})
    return {"title": title, "scale": SCALE, "padded": {"src": S, "tgt": T}, "sites": sites, "sentences": sentences}


def render_html(data: dict) -> str:
    """The page with ``data`` inlined. Every ``<`` is written ``\\u003c`` (the same JSON string), so no text — a
    subword such as ``</s>``, a sentence holding ``<!--<script>`` — can end or re-open the script element."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    template = TEMPLATE.read_text(encoding="utf-8")
    if DATA_MARK not in template:  # a packaging fault, not a user error
        raise RuntimeError(f"{TEMPLATE} has no {DATA_MARK!r} slot")
    return template.replace(DATA_MARK, payload)


def write_viewer(path: Path, model, tokenizer, sources: list[str], targets: list[str], title: str = "",
                 lines: Optional[list[int]] = None) -> Path:
    """Write ``attention.html`` for these sentences (see `attention_data`) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(attention_data(model, tokenizer, sources, targets, title, lines)), encoding="utf-8")
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    from nmt.decoding.flags import add_decode_flags

    parser = UsageParser(
        prog="nmt analyze attention",
        description="Write one offline HTML page with the attention of chosen sentences: every site, layer and head.")
    parser.add_argument("--model", required=True, help="exported model directory or a training .ckpt")
    parser.add_argument("--src", help="source file (.gz read transparently); --lines picks its sentences")
    parser.add_argument("--lines", help="line numbers of --src, 1-based, comma-separated "
                        "(default 1,2,3)")
    parser.add_argument("--sentence", action="append", default=[], help="a source sentence, instead of --src; "
                        "repeat the flag for more (--sentence A --sentence B)")
    parser.add_argument("--ref", help="teacher-force these references (same lines of this file) instead of the "
                        "model's translations")
    parser.add_argument("--out", default="attention.html", help="the page to write (default attention.html)")
    add_decode_flags(parser, exclude=("nbest", "dtype"))  # one float32 hypothesis per line
    return parser.parse_args(argv)


def chosen_lines(spec: str, n_lines: int, path: str) -> list[int]:
    """0-based indices from ``--lines`` (1-based, comma-separated). Raises ValueError naming the bad item."""
    indices = []
    for item in spec.split(","):
        if not re.fullmatch(r"[0-9]+", item.strip()) or not 1 <= int(item) <= n_lines:
            raise ValueError(f"--lines: {item.strip()!r} is not a line number of {path} (1 … {n_lines})")
        indices.append(int(item) - 1)
    return indices


def _sentences(args: argparse.Namespace) -> tuple[list[str], Optional[list[str]], Optional[list[int]]]:
    """The sources, the references (with --ref) and the 1-based line numbers (with --src) to show. Raises
    ValueError naming the flag, file or line."""
    from nmt.data.textio import read_aligned, read_text

    if bool(args.src) == bool(args.sentence):
        raise ValueError("give --src FILE (with --lines) or --sentence TEXT, not both and not neither")
    if args.sentence:
        if args.ref or args.lines:
            raise ValueError(f"{'--ref' if args.ref else '--lines'} goes with --src, not with --sentence")
        blank = [n + 1 for n, s in enumerate(args.sentence) if not s.strip()]
        if blank:
            raise ValueError(f"--sentence number {blank[0]} is blank: nothing to attend over")
        return args.sentence, None, None
    lines, refs = read_aligned(args.src, args.ref, "show") if args.ref else (read_text(args.src), None)
    picked = chosen_lines(args.lines or "1,2,3", len(lines), args.src)
    blank = [i + 1 for i in picked if not lines[i].strip()]
    if blank:
        raise ValueError(f"{args.src}: line {blank[0]} is blank: nothing to attend over")
    sources, numbers = [lines[i] for i in picked], [i + 1 for i in picked]
    if not args.ref:
        return sources, None, numbers
    return sources, [refs[i] for i in picked], numbers


def main(argv: list[str]) -> int:
    from nmt.decoding.flags import FlagError, check_device, decode_config
    from nmt.errors import first_line

    args = parse_args(argv)
    try:
        cfg = decode_config(args)
        check_device(args.device)
        sources, targets, numbers = _sentences(args)
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder: give the page's file name, e.g. {out / 'attention.html'}")
        from nmt.decoding.loading import load_model_info
        from nmt.decoding.translate import Translator

        model, tokenizer, _ = load_model_info(args.model, args.device)
        title = f"{args.model}" + (f", {args.src}" if args.src else "")
        if targets is None:
            targets = [t.text for t in Translator(model, tokenizer, args.device).translate_full(
                sources, cfg, args.batch_tokens, args.max_source_len)]
        else:
            title += f", teacher-forced on the references of {args.ref}"
        path = write_viewer(out, model, tokenizer, sources, targets, title=title, lines=numbers)
    except (FlagError, ValueError, OSError) as error:
        print(f"nmt analyze attention: {first_line(error)}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size:,} bytes, {plural(len(sources), 'sentence')})")
    return 0
