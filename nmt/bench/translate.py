"""``nmt bench translate``: sentences/s of nmt's greedy and beam decoding against Hugging Face ``MarianMTModel``
(and CTranslate2 when it is importable), on the same source ids, batches, thread count and forced output length.

The models are randomly initialised with the same dimensions: speed does not depend on the weights, but random
models never end sensibly, so every system is forced to generate exactly ``--length`` new tokens per sentence (nmt
``length - 1`` subwords plus its eos, Marian and CTranslate2 ``length`` tokens: ``length`` decoder steps each), and the
bench checks and prints that the counts agree.

Where CTranslate2 is installed, nmt's own model exported with ``nmt export ct2`` (float32 and int8) is timed beside
them (nmt/bench/exported.py), with the KV-cache bytes of nmt and of CTranslate2; ``--attention mha,gqa,mqa`` repeats
everything for each attention preset, and ``--trained MODEL`` adds trained models at natural lengths, decoded by nmt
and by their exports, with how many outputs equal nmt's (nmt/bench/natural.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from nmt.bench.common import (
    Batch,
    UsageError,
    UsageParser,
    environment,
    make_batches,
    markdown_table,
    parse_bench_args,
    write_results,
)
from nmt.bench.formats import DTYPES, format_rows, formats_table, reduced_models, row_label
from nmt.bench.peers import ctranslate2_system, ctranslate2_translator, marian_config, marian_system
from nmt.config.compose import CONF_DIR
from nmt.data.corpora import corpus_dir
from nmt.precision import cpu_bf16

TARGETS = {1: 1.5, 5: 2.0}  # beams → the nmt/Marian speed ratio we aim for on CPU
CPU = torch.device("cpu")
PROG = "nmt bench translate"


def _counts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text!r}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = UsageParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--model", default="tiny", help="nmt/conf/model preset: tiny, small or base")
    parser.add_argument("--src", default=str(corpus_dir("multi30k") / "test_2016_flickr.en.gz"),
                        help="raw source text (.gz fine); default Multi30k test_2016_flickr")
    parser.add_argument("--limit", type=int, default=None, help="first N sentences (default: all)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beam sizes (1 = greedy)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per system (median)")
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch (sorted by source length)")
    parser.add_argument("--length", type=int, default=20, help="new tokens every system generates per sentence")
    parser.add_argument("--out", default="outputs/bench", help="writes translate.json and translate.md here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention", type=lambda text: text.split(","), default=None, metavar="PRESET,…",
                        help="attention presets to compare, one random model each (e.g. mha,gqa,mqa)")
    parser.add_argument("--trained", action="append", default=None, metavar="MODEL",
                        help="a trained nmt model directory or checkpoint (repeatable): also decoded at natural "
                             "lengths by nmt and by its CTranslate2 exports (float32, int8)")
    parser.add_argument("--dtypes", type=lambda text: text.split(","), default=None, metavar="DTYPE,…",
                        help="nmt's number formats to time beside float32 (nmt translate --dtype): bfloat16, int8 "
                             "(default: int8, and bfloat16 where the CPU has bf16 matrix instructions; elsewhere "
                             "bf16 is emulated, several times slower)")
    parser.add_argument("--threads", type=_counts, default=None, metavar="N,…",
                        help="thread counts, one full measurement each, e.g. 1,2 (default: torch's, i.e. "
                             "OMP_NUM_THREADS)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, e.g. model.decoder_layers=2 data.vocab_size=1000")
    args = parse_bench_args(parser, argv)
    presets = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    if args.model not in presets:
        raise UsageError(f"--model {args.model!r} is not a preset; choose one of {', '.join(presets)}")
    for name in ("repeats", "batch", "length"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} ({getattr(args, name)}) must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit ({args.limit}) must be >= 1")
    if args.threads is not None and any(t < 1 for t in args.threads):
        raise UsageError(f"--threads ({','.join(map(str, args.threads))}) must all be >= 1")
    if args.dtypes is None:
        args.dtypes = ["float32", "int8", *(["bfloat16"] if cpu_bf16()[0] else [])]
    wrong = [d for d in args.dtypes if d not in DTYPES]
    if wrong:
        raise UsageError(f"--dtypes {wrong[0]!r} is not a format: choose from {', '.join(DTYPES)}")
    if any(b < 1 for b in args.beams):
        raise UsageError(f"--beams ({' '.join(map(str, args.beams))}) must all be >= 1")
    if not Path(args.src).is_file():
        raise UsageError(f"--src {args.src}: no such file")
    attention = sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml"))
    unknown = [a for a in args.attention or [] if a not in attention]
    if unknown:
        raise UsageError(f"--attention {unknown[0]!r} is not a preset; choose from {', '.join(attention)}")
    missing = [m for m in args.trained or [] if not Path(m).exists()]
    if missing:
        raise UsageError(f"--trained {missing[0]}: no such model directory or checkpoint")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"unrecognized arguments: {' '.join(bad)} (overrides look like model.decoder_layers=2)")
    return args


# -- setup: config, tokenizer, batches, models ----------------------------------------------------------------------


def load_config(model: str, overrides: list[str]):
    """The validated TrainConfig of ``nmt train model=<model> <overrides>`` (the model's vocab is data.vocab_size)."""
    from nmt.config.compose import compose_config, config_error_line, to_train_config

    try:
        cfg = to_train_config(compose_config([f"model={model}", *overrides]))
    except Exception as error:  # Hydra/OmegaConf/validation errors: one line, no traceback
        raise UsageError(config_error_line(error)) from None
    return cfg


def load_tokenizer(cfg):
    """The sentencepiece model training builds from ``cfg.data`` (cached under ``data.cache_dir``/spm/<hash>)."""
    from nmt.data.datamodule import TranslationData
    from nmt.data.load import DataError
    from nmt.data.tokenizer import TokenizerError

    try:
        return TranslationData(cfg.data, cfg.seed).load_tokenizer()
    except (DataError, TokenizerError) as error:  # e.g. no corpus at data.path, a vocabulary sentencepiece refuses
        raise UsageError(str(error)) from None


# -- nmt's system (the peers' are in nmt/bench/peers.py): decodes the batches, returns the new tokens' count ---------


def nmt_system(model, batches: list[Batch], length: int) -> Callable[[int], int]:
    from nmt.config import DecodeConfig
    from nmt.decoding.search import decode

    def run(beam: int) -> int:
        # max length counts the final eos: length - 1 subwords (no eos before them) and the eos = length tokens.
        cfg = DecodeConfig(beam=beam, min_len=length - 1, max_len_a=0, max_len_b=length)
        generated = 0
        with torch.inference_mode():
            for b in batches:
                generated += sum(len(h[0].tokens) + 1 for h in decode(model, b.src, b.lengths, cfg, scores=False))
        return generated

    return run


def time_systems(systems: dict[str, list[Callable[[int], int]]], beam: int, repeats: int, warmup) -> dict[str, dict]:
    """Per system, the median over repeats of its wall seconds summed over the batches.

    ``systems`` holds one runner per batch. The systems alternate batch by batch, who goes first rotating, so that a
    slow spell of this noisy machine (whole passes of the same system varied ±30% minute to minute) falls on all of
    them alike. This process's CPU seconds are kept too; they do not count CTranslate2, which runs in its own process.
    """
    for name, run in warmup.items():
        run(beam)
    times: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    tokens: dict[str, set[int]] = {name: set() for name in systems}
    names = list(systems)
    n_batches = len(next(iter(systems.values())))
    for r in range(repeats):
        wall, process, generated = ({name: 0.0 for name in names} for _ in range(3))
        for i in range(n_batches):
            first = (r + i) % len(names)
            for name in names[first:] + names[:first]:
                start_cpu, start = time.process_time(), time.perf_counter()
                generated[name] += systems[name][i](beam)
                wall[name] += time.perf_counter() - start
                process[name] += time.process_time() - start_cpu
        for name in names:
            times[name].append(wall[name])
            cpu[name].append(process[name])
            tokens[name].add(int(generated[name]))
    return {
        name: {
            "seconds": statistics.median(times[name]), "times": times[name],
            "cpu_seconds": statistics.median(cpu[name]), "cpu_times": cpu[name], "tokens": sorted(tokens[name]),
        }
        for name in systems
    }


# -- the command ----------------------------------------------------------------------------------------------------


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


@contextlib.contextmanager
def _hub_offline():
    """Transformers never reaches the Hub here (it is imported under this, and models are built from configs); the
    caller's environment is restored afterwards, so a test session's later tests see their own."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_bench(args: argparse.Namespace) -> int:
    """The command after its options are parsed: builds the batches, measures (measure_all), writes and prints the
    tables; UsageError for what stops it before any timing (Marian not installed, a tokenizer that does not fit)."""
    from nmt.data.textio import read_text

    variants = args.attention or [None]
    configs = {v: load_config(args.model, [*args.overrides, *([f"attention={v}"] if v else [])]) for v in variants}
    if importlib.util.find_spec("transformers") is None:
        raise UsageError("times nmt against Hugging Face MarianMTModel, which is not installed: "
                         "pip install 'nmt[bench]' (from a checkout: pip install -e '.[bench]')")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    cfg = next(iter(configs.values()))
    tokenizer = load_tokenizer(cfg)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} pieces but the model {cfg.model.vocab_size}")
    lines = [line for line in read_text(args.src) if line.strip()][: args.limit]
    ids = tokenizer.encode(lines)
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    batches = make_batches(ids, pieces.__getitem__, args.batch)
    n = len(lines)
    threads = args.threads or [torch.get_num_threads()]
    results, rows, format_records, format_rows_, measured = measure_all(args, configs, tokenizer, pieces, ids,
                                                                        batches, threads)
    env = environment()
    m = cfg.model
    setup = {
        "model": args.model, "overrides": args.overrides, "attention": args.attention, "d_model": m.d_model,
        "n_heads": m.n_heads, "d_ff": m.d_ff, "encoder_layers": m.encoder_layers, "decoder_layers": m.decoder_layers,
        "vocab": m.vocab_size, "source": str(args.src), "sentences": n, "batch": args.batch, "batches": len(batches),
        "source_tokens": sum(len(s) + 1 for s in ids), "new_tokens_per_sentence": args.length,
        "repeats": args.repeats, "ctranslate2": measured["ct2_missing"] or "installed", "dtypes": args.dtypes,
        "threads": threads, "cpu_flags": cpu_bf16()[1],
    }
    markdown = (
        f"nmt bench translate: {n} sentences of {Path(args.src).name}, model {args.model} (d_model {m.d_model}, "
        f"{m.encoder_layers}+{m.decoder_layers} layers, {m.n_heads} heads, FFN {m.d_ff}, vocab {m.vocab_size}), "
        f"random weights, batches of {args.batch} sentences sorted by length, {args.length} new tokens per sentence "
        f"forced in every system; the systems alternate batch by batch; sentences/s from the median of {args.repeats} "
        f"runs' summed wall times, CPU-time ratio = Marian's CPU seconds / nmt's; nmt→CT2: this nmt model exported "
        f"with nmt export ct2; KV cache: one sentence of 20+20 subwords at the row's beams, nmt's measured, "
        f"CTranslate2's from its cache layout; torch {env['torch']}, {'/'.join(map(str, threads))} thread(s), "
        f"{env['device']}"
        f"\n\n{markdown_table(HEADER, rows)}"
    )
    markdown += "\n\n" + formats_table(format_rows_)
    payload = {"environment": env, "setup": setup, "results": results, "formats": format_records}
    if args.trained:
        from nmt.bench.natural import bench_trained

        payload["trained"], trained_markdown = bench_trained(args, lines)
        markdown += "\n\n" + trained_markdown
    write_results(args.out, "translate", payload, markdown)
    print(markdown)
    return 0


def measure_all(args, configs: dict, tokenizer, pieces: list[str], ids: list[list[int]], batches: list[Batch],
                threads: list[int]) -> tuple[list, list, list, list, dict]:
    """Every attention variant's random model at every thread count: (records, rows of the main table, records, rows
    of the number-format table, the last measurement). torch's thread count is restored afterwards."""
    results, rows, format_records, format_rows_ = [], [], [], []
    before = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)  # CTranslate2's worker processes take this count when they start
            for variant, variant_cfg in configs.items():
                measured = measure_random(args, variant_cfg, tokenizer, pieces, ids, batches)
                label = variant or "/".join(dict.fromkeys(variant_cfg.model.variants().values()))
                label = label if len(configs) > 1 else None
                records, variant_rows = tabulate(measured, len(ids), label, count if args.threads else None)
                results += records
                rows += variant_rows
                for record in records:
                    formats_record, formats_row = format_rows(record["systems"], count, record["beam"], label)
                    format_records.append(formats_record)
                    format_rows_.append(formats_row)
    finally:
        torch.set_num_threads(before)
    return results, rows, format_records, format_rows_, measured


def measure_random(args, cfg, tokenizer, pieces: list[str], ids: list[list[int]], batches: list[Batch]) -> dict:
    """The systems' timings on one random model (``cfg``): nmt, Marian, Marian's CTranslate2 conversion and nmt's own
    CTranslate2 exports, each forced to ``args.length`` new tokens per sentence; and the KV-cache bytes."""
    from transformers import MarianMTModel

    from nmt.bench.exported import FORMATS, forced_system, kv_bytes, start_exported
    from nmt.model import build_model

    torch.manual_seed(args.seed)
    model = build_model(cfg.model).eval()
    longest = max(len(s) for s in ids) + 1
    torch.manual_seed(args.seed)
    marian = MarianMTModel(marian_config(cfg.model, max(512, longest + args.length + 2))).eval()
    # One runner per batch and system: time_systems alternates the systems batch by batch.
    systems = {"nmt": [nmt_system(model, [b], args.length) for b in batches],
               "Marian": [marian_system(marian, [b], args.length) for b in batches]}
    warmup = {"nmt": nmt_system(model, batches[:1], args.length),
              "Marian": marian_system(marian, batches[:1], args.length)}
    for name, reduced in reduced_models(model, args.dtypes).items():
        systems[name] = [nmt_system(reduced, [b], args.length) for b in batches]
        warmup[name] = nmt_system(reduced, batches[:1], args.length)
    plain = [[row[: int(n) - 1].tolist() for row, n in zip(b.src, b.lengths)] for b in batches]  # without eos
    with tempfile.TemporaryDirectory(prefix="nmt-bench-ct2-") as workdir:
        worker, ct2_missing = ctranslate2_translator(marian, pieces, Path(workdir) / "marian")
        exported, exported_missing = start_exported(model, tokenizer, Path(workdir) / "nmt")
        try:
            if worker is not None:
                systems["CTranslate2"] = [ctranslate2_system(worker, [b], args.length) for b in batches]
                warmup["CTranslate2"] = ctranslate2_system(worker, batches[:1], args.length)
            for name in FORMATS if exported is not None else ():
                systems[name] = [forced_system(exported, name, rows, args.length) for rows in plain]
                warmup[name] = forced_system(exported, name, plain[0], args.length)
            # Warm-up on the first batch only: first calls allocate and pick kernels; a full pass would double the run.
            measured = {beam: time_systems(systems, beam, args.repeats, warmup) for beam in args.beams}
        finally:
            for process in (worker, exported):
                if process is not None:
                    process.close()
    kv = {beam: kv_bytes(model, beam) for beam in args.beams}
    return {"measured": measured, "ct2_missing": ct2_missing, "exported_missing": exported_missing, "kv": kv}


HEADER = ["decoding", "nmt sent/s", "Marian sent/s", "nmt/Marian", "nmt/Marian by CPU time", "CTranslate2 sent/s",
          "nmt→CT2 float32 sent/s", "nmt→CT2 int8 sent/s", "KV-cache bytes nmt / CTranslate2", "new tokens"]


def tabulate(random: dict, n: int, label: Optional[str] = None,
             threads: Optional[int] = None) -> tuple[list[dict], list[list[str]]]:
    """Per beam size: the JSON record and a Markdown row (sentences/s, ratios against the targets, token counts,
    KV-cache bytes) of one random model; ``label`` (the attention variant) and ``threads`` (with --threads) prefix
    the row."""
    rows, results = [], []
    for beam, by_system in random["measured"].items():
        per = {name: {**r, "sentences_per_s": n / r["seconds"]} for name, r in by_system.items()}
        counts = {name: r["tokens"] for name, r in per.items()}
        # Equal when every system generated one and the same count in every run.
        equal = len({tuple(c) for c in counts.values()}) == 1 and all(len(c) == 1 for c in counts.values())
        ratio = per["nmt"]["sentences_per_s"] / per["Marian"]["sentences_per_s"]
        cpu_ratio = per["Marian"]["cpu_seconds"] / per["nmt"]["cpu_seconds"]
        target = TARGETS.get(beam)
        ours, theirs = random["kv"][beam]
        results.append({"attention": label, "threads": threads, "beam": beam, "systems": per, "nmt_over_marian": ratio,
                        "nmt_over_marian_cpu": cpu_ratio, "target": target,
                        "target_met": None if target is None else ratio >= target, "equal_tokens": equal,
                        "kv_cache_bytes": {"nmt": ours, "CTranslate2 (nmt export)": theirs},
                        "exported": random["exported_missing"] or "exported"})
        verdict = "" if target is None else f" ({'meets' if ratio >= target else 'misses'} ≥{target}×)"
        speed = lambda name, missing: _fmt(per[name]["sentences_per_s"]) if name in per else missing  # noqa: E731
        rows.append([
            row_label(label, threads, beam),
            _fmt(per["nmt"]["sentences_per_s"]), _fmt(per["Marian"]["sentences_per_s"]),
            f"{ratio:.2f}×{verdict}", f"{cpu_ratio:.2f}×", speed("CTranslate2", random["ct2_missing"]),
            speed("nmt→CT2 float32", random["exported_missing"]), speed("nmt→CT2 int8", random["exported_missing"]),
            f"{ours:,} / {theirs:,}",
            " / ".join(f"{name} {','.join(map(str, c))}" for name, c in counts.items())
            + ("" if equal else " **NOT EQUAL**"),
        ])
    return results, rows


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        args = parse_args(argv)
        with _hub_offline():
            return run_bench(args)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
