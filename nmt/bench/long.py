"""``nmt bench long``: attention variants on long inputs — Multi30k pseudo-documents of k joined sentence pairs
(nmt/data/documents.py, ~115 subwords at k = 8 to ~920 at k = 64) — for training speed and memory, decoding speed and
KV-cache bytes, every figure with its ratio to MHA measured in the same run.

For each k: the first ``--steps`` training batches of ``data=multi30k_docs`` at k (``--max-tokens`` padded tokens),
on which every variant trains from one seed, the variants alternating step by step (`nmt bench train`'s method):
target tokens/s, median over ``--repeats``; then greedy (``--beam``) decoding of the first ``--decode-docs`` validation
documents by random-weight models, each document forced to the mean reference length of those documents (random
models never end sensibly), the variants alternating batch by batch: documents/s; the decoder's KV-cache bytes for one
document (the median-length one of them) from the allocated caches; and, after every timing, the peak memory one
training step adds on the largest of the sampled batches, on top of the weights, gradients and optimizer state (so
GQA's smaller weights do not show). Each row also names the kernel ``auto`` ran at each attention site (band, sdpa,
matmul, with the share of calls when mixed), since band's O(n·w) only pays from ~512 positions
(`nmt.attention.dispatch.band_wins`). Everything runs on the CPU, recorded as the device whatever else the machine has.

The documents are written on first use under ``--docs-dir`` (scripts/pseudo_documents.py makes the same).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch

from nmt.bench.common import UsageError, UsageParser, environment, markdown_table, parse_bench_args, write_results
from nmt.errors import plural

PROG = "nmt bench long"
VARIANTS = ("mha", "gqa-2", "window-16", "window-64", "sparse-16+8")
SELF_SITES = ("encoder_self", "decoder_self")
SITES = (*SELF_SITES, "cross")
TARGET_SPEEDUP = 1.2  # issue 31: windowed and sparse train at >= 1.2x MHA's target tokens/s at the largest k
TARGET_KV = 0.25  # ... with a decoder self-attention cache <= 1/4 of MHA's


def variant_overrides(name: str) -> list[str]:
    """The Hydra overrides of a variant name: mha, mqa, gqa-N (N K/V heads at every site), window-W (window W on
    both self-attention sites), sparse-W+G (window W and G global tokens there). The presets sliding_window_16,
    sliding_window_64, sparse_long and gqa compose to window-16, window-64, sparse-16+8 and gqa-2 (tested)."""
    if name in ("mha", "mqa"):
        return [f"attention={name}"]
    if match := re.fullmatch(r"gqa-(\d+)", name):
        return [f"model.attention.{site}.n_kv_heads={match[1]}" for site in SITES]
    if match := re.fullmatch(r"window-(\d+)", name):
        return [f"model.attention.{site}.window={match[1]}" for site in SELF_SITES]
    if match := re.fullmatch(r"sparse-(\d+)\+(\d+)", name):
        return [f"model.attention.{site}.{key}={value}" for site in SELF_SITES
                for key, value in (("window", match[1]), ("global_tokens", match[2]))]
    raise UsageError(f"--variants {name!r} is not a variant: mha, mqa, gqa-N, window-W or sparse-W+G "
                     "(e.g. window-64, sparse-16+8)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, checked (UsageError, one line, for a bad one) before any document is written or model built;
    ``k`` comes back sorted."""
    parser = UsageParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 32, 64], help="sentence pairs per document")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="mha (required: every ratio is to it), "
                        "gqa-N, mqa, window-W, sparse-W+G")
    parser.add_argument("--model", default="small", help="nmt/conf/model preset (default small)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="training and decoding repeats (median)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="training batch budget (padded tokens)")
    parser.add_argument("--decode-docs", type=int, default=8, help="validation documents decoded per k")
    parser.add_argument("--decode-batch", type=int, default=4, help="documents per decoding batch")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--docs-dir", default="data/multi30k_docs", help="pseudo-documents, written if missing")
    parser.add_argument("--source", default=None, help="Multi30k-style folder they are made from (default: shipped)")
    parser.add_argument("--out", default="outputs/bench", help="writes long.json and long.md here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.cache_dir=DIR model.d_model=128")
    args = parse_bench_args(parser, argv)
    for name in ("steps", "repeats", "max_tokens", "decode_docs", "decode_batch", "beam"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} ({getattr(args, name)}) must be >= 1")
    if args.warmup < 0:
        raise UsageError(f"--warmup ({args.warmup}) must be >= 0")
    if min(args.k) < 1 or len(set(args.k)) != len(args.k):
        raise UsageError(f"--k ({' '.join(map(str, args.k))}) must be different counts >= 1")
    if "mha" not in args.variants:
        raise UsageError("--variants must include mha: every ratio is to it")
    if len(set(args.variants)) != len(args.variants):
        raise UsageError(f"--variants ({' '.join(args.variants)}) repeats a variant")
    for name in args.variants:
        variant_overrides(name)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"unrecognized arguments: {' '.join(bad)} (overrides look like model.d_model=128)")
    if args.source is not None and not Path(args.source).is_dir():
        raise UsageError(f"--source {args.source}: no such folder")
    args.k = sorted(args.k)
    return args


def train_config(args: argparse.Namespace, k: int, variant: str):
    """The TrainConfig of ``nmt train data=multi30k_docs data.path=<docs>/k<k> model=<model> <variant> <overrides>``."""
    from nmt.config.compose import compose_config, config_error_line, to_train_config
    from nmt.config.overrides import check_overrides

    overrides = ["data=multi30k_docs", f"data.path={Path(args.docs_dir) / f'k{k}'}", f"model={args.model}",
                 f"data.max_tokens={args.max_tokens}", *variant_overrides(variant), *args.overrides]
    try:
        check_overrides(args.overrides)  # nmt train's key checks: a typo is named, with what it may have meant
        return to_train_config(compose_config(overrides))
    except Exception as error:  # Hydra/OmegaConf/validation errors: one line, no traceback
        raise UsageError(config_error_line(error)) from None


def load_data(k: int, cfg, args: argparse.Namespace):
    """`load_k` with its data problems (no such folder, sentencepiece refusing a vocabulary) as UsageError."""
    from nmt.bench.long_measure import load_k
    from nmt.data.load import DataError
    from nmt.data.tokenizer import TokenizerError

    try:
        return load_k(k, cfg, args.warmup + args.steps, args.decode_docs, args.decode_batch)
    except (DataError, TokenizerError) as error:
        raise UsageError(f"k={k}: {str(error).splitlines()[0]}") from None


def measure(args: argparse.Namespace) -> dict[int, dict]:
    """Every k × variant: {k: {"lengths", "forced_length", "cleaning", "variants": {variant: record}}}."""
    from nmt.bench.long_measure import BackendRecorder, decode_speeds, kv_bytes, train_peak_bytes, train_speeds
    from nmt.data.corpora import corpus_dir
    from nmt.data.documents import ensure_documents

    configs = {k: {v: train_config(args, k, v) for v in args.variants} for k in args.k}  # every config checked first
    written = ensure_documents(args.source or corpus_dir("multi30k"), args.docs_dir, args.k)
    if written:
        print(f"{PROG}: wrote the pseudo-documents of k = {' '.join(map(str, written))} under {args.docs_dir}",
              file=sys.stderr)
    results, loaded = {}, {}
    for k in args.k:
        recorder = BackendRecorder()
        models = {v: cfg.model for v, cfg in configs[k].items()}
        data = loaded[k] = load_data(k, configs[k]["mha"], args)
        train = train_speeds(models, data, args.warmup, args.repeats, recorder)
        decode = decode_speeds(models, data, args.beam, args.repeats, recorder)
        kv = kv_bytes(models, data, args.beam)
        n_docs = sum(b.src.size(0) for b in data.decode)
        results[k] = {"lengths": data.lengths, "forced_length": data.forced_length, "cleaning": data.cleaning,
                      "decoded_documents": n_docs, "variants": {}}
        for v in args.variants:
            results[k]["variants"][v] = {
                "attention": {site: configs[k][v].model.site(site).variant for site in SITES},
                "train_tokens_per_s": statistics.median(train[v]), "train_runs": train[v],
                "decode_documents_per_s": n_docs / decode[v]["seconds"], "decode_times": decode[v]["times"],
                "decode_tokens": decode[v]["tokens"], "kv_cache_bytes": kv[v],
                "backends": {stage: recorder.summary(v, stage) for stage in ("train", "decode")},
            }
        print(f"{PROG}: k={k} measured", file=sys.stderr)
    if not args.no_memory:  # after every timing (see train_peak_bytes)
        for k in args.k:
            for v, peak in train_peak_bytes({v: c.model for v, c in configs[k].items()}, loaded[k]).items():
                results[k]["variants"][v]["train_peak_bytes"] = peak
    add_ratios(results)
    return results


def add_ratios(results: dict[int, dict]) -> None:
    """Each record's ratios to MHA's at the same k: training and decoding speed, peak memory, KV-cache bytes."""
    for entry in results.values():
        mha = entry["variants"]["mha"]
        for record in entry["variants"].values():
            record["ratio_to_mha"] = {
                "train_tokens_per_s": record["train_tokens_per_s"] / mha["train_tokens_per_s"],
                "decode_documents_per_s": record["decode_documents_per_s"] / mha["decode_documents_per_s"],
                **({"train_peak_bytes": record["train_peak_bytes"] / max(mha["train_peak_bytes"], 1)}
                   if "train_peak_bytes" in record else {}),
                **{f"kv_{part}": record["kv_cache_bytes"][part] / mha["kv_cache_bytes"][part]
                   for part in ("self_attention", "cross_attention", "total")},
            }


def crossovers(results: dict[int, dict]) -> dict[str, dict]:
    """Per variant but MHA: the smallest k (and its mean training source length) from which it trains faster than
    MHA at every larger k measured (None if it never does), and the issue's targets at the largest k."""
    ks = sorted(results)
    summary = {}
    for v in results[ks[0]]["variants"]:
        if v == "mha":
            continue
        ratios = [results[k]["variants"][v]["ratio_to_mha"] for k in ks]
        faster = [r["train_tokens_per_s"] > 1 for r in ratios]
        first = next((i for i in range(len(ks)) if all(faster[i:])), None)
        last = ratios[-1]
        windowed = results[ks[-1]]["variants"][v]["attention"]["decoder_self"].find("window") >= 0
        summary[v] = {
            "faster_than_mha_from_k": None if first is None else ks[first],
            "faster_than_mha_from_source_subwords": None if first is None
            else round(results[ks[first]]["lengths"]["train_source_mean"]),
            "largest_k": ks[-1], "train_ratio_at_largest_k": last["train_tokens_per_s"],
            "kv_self_ratio_at_largest_k": last["kv_self_attention"],
            "targets_met": (last["train_tokens_per_s"] >= TARGET_SPEEDUP and last["kv_self_attention"] <= TARGET_KV)
            if windowed else None,
        }
    return summary


def _backends(shares: dict[str, dict[str, float]]) -> str:
    """'enc band, dec band, cross sdpa' with shares when a site ran several kernels ('sdpa 60%/band 40%')."""
    short = {"encoder_self": "enc", "decoder_self": "dec", "cross": "cross"}
    parts = []
    for site, by_backend in shares.items():
        kernels = "/".join(name if len(by_backend) == 1 else f"{name} {share:.0%}"
                           for name, share in by_backend.items())
        parts.append(f"{short.get(site, site)} {kernels}")
    return ", ".join(parts)


def _ratio(x: Optional[float], digits: int = 2) -> str:
    """A ratio to MHA as '1.23×' (``digits`` decimals), '—' where there is none (peak memory not measured)."""
    return "—" if x is None else f"{x:.{digits}f}×"


def render(results: dict[int, dict], summary: dict[str, dict], args: argparse.Namespace, env: dict) -> str:
    """The Markdown the command prints and writes: a sentence on the settings, one table row per k × variant (figures
    and their ratios to MHA, the kernels auto ran) and one line per variant from `crossovers`."""
    header = ["k", "source / target subwords", "variant", "train tgt tok/s", "÷ MHA", "train peak MiB", "÷ MHA",
              "decode docs/s", "÷ MHA", "KV self bytes", "÷ MHA", "KV cross bytes", "÷ MHA", "backends (train)",
              "backends (decode)"]
    rows = []
    for k, entry in results.items():
        n = entry["lengths"]
        for v, r in entry["variants"].items():
            q, peak = r["ratio_to_mha"], r.get("train_peak_bytes")
            rows.append([k, f"{n['train_source_mean']:.0f} / {n['train_target_mean']:.0f}", v,
                         f"{r['train_tokens_per_s']:,.0f}", _ratio(q["train_tokens_per_s"]),
                         "—" if peak is None else f"{peak / 2**20:,.0f}", _ratio(q.get("train_peak_bytes")),
                         f"{r['decode_documents_per_s']:.2f}", _ratio(q["decode_documents_per_s"]),
                         f"{r['kv_cache_bytes']['self_attention']:,}", _ratio(q["kv_self_attention"], 3),
                         f"{r['kv_cache_bytes']['cross_attention']:,}", _ratio(q["kv_cross_attention"], 3),
                         _backends(r["backends"]["train"]), _backends(r["backends"]["decode"])])
    lines = []
    for v, s in summary.items():
        start = (f"from k = {s['faster_than_mha_from_k']} (~{s['faster_than_mha_from_source_subwords']} source "
                 "subwords) on" if s["faster_than_mha_from_k"] is not None else "at no k measured")
        verdict = "" if s["targets_met"] is None else \
            f"; targets (≥ {TARGET_SPEEDUP}×, KV self ≤ {TARGET_KV}): {'met' if s['targets_met'] else 'missed'}"
        lines.append(f"- {v}: trains faster than MHA {start}; at k = {s['largest_k']} "
                     f"{s['train_ratio_at_largest_k']:.2f}× MHA's tokens/s, decoder self-attention cache "
                     f"{s['kv_self_ratio_at_largest_k']:.3f} of MHA's{verdict}")
    m = next(iter(results.values()))["variants"]["mha"]
    first = results[next(iter(results))]
    return "\n".join([
        f"nmt bench long: Multi30k pseudo-documents (k sentence pairs each), model {args.model}; training: "
        f"{args.steps} steps (after {args.warmup} untimed) of ≤ {args.max_tokens}-token batches, variants alternating "
        f"step by step, median of {args.repeats}; peak memory: what one step adds on the largest sampled batch, above "
        f"weights, gradients and optimizer state; decoding: "
        f"{first['decoded_documents']} validation documents in batches of {args.decode_batch}, "
        f"{'greedy' if args.beam == 1 else f'beam {args.beam}'}, random weights, each forced to their mean "
        f"reference length; KV cache: one median-length document at that length (MHA at the first k: "
        f"{m['kv_cache_bytes']['total']:,} bytes); fp32, {env['device']}, {plural(env['threads'], 'thread')}, "
        f"torch {env['torch']}.", "", markdown_table(header, rows), "", *lines,
    ])


def main(argv: list[str]) -> int:
    """``nmt bench long ARGV``: measure, print the Markdown, write long.json and long.md under ``--out``. Returns 0, or
    2 after a one-line message for a bad option or unusable data."""
    try:
        args = parse_args(argv)
        results = measure(args)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    summary = crossovers(results)
    env = environment(torch.device("cpu"))  # every model here is built and run on the CPU
    markdown = render(results, summary, args, env)
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    payload = {"environment": env, "settings": settings, "results": {str(k): v for k, v in results.items()},
               "summary": summary}
    json_path, md_path = write_results(args.out, "long", payload, markdown)
    print(markdown)
    print(f"\n(JSON: {json_path}, Markdown: {md_path})")
    return 0

