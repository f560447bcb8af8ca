"""``nmt bench translate --trained MODEL…``: trained nmt models at natural lengths, decoded by nmt and by their
CTranslate2 exports (float32, int8) with nmt's search settings (beam, GNMT length penalty 0.6, max length
1.2 · source + 10), on the bench's sentences and batches; sentences/s, how many outputs equal nmt's, new tokens and
the KV-cache bytes of one sentence (nmt/bench/exported.py says how each is counted)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nmt.bench.common import markdown_table


def _measure(path: str, args: argparse.Namespace, lines: list[str]) -> dict:
    from nmt.bench.common import UsageError, make_batches
    from nmt.bench.exported import FORMATS, kv_bytes, natural_system, nmt_natural_system, start_exported
    from nmt.bench.translate import time_systems
    from nmt.decoding.loading import ModelLoadError, load_model

    try:
        model, tokenizer = load_model(path)
    except ModelLoadError as error:
        raise UsageError(f"--trained {error}") from None
    ids = tokenizer.encode(lines)
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    batches = make_batches(ids, pieces.__getitem__, args.batch)
    plain = [[row[: int(n) - 1].tolist() for row, n in zip(b.src, b.lengths)] for b in batches]  # without eos
    outputs: dict[str, dict] = {"nmt": {}, **{name: {} for name in FORMATS}}
    systems = {"nmt": [nmt_natural_system(model, b, outputs["nmt"], i) for i, b in enumerate(batches)]}
    warmup = {"nmt": nmt_natural_system(model, batches[0], {}, 0)}
    with tempfile.TemporaryDirectory(prefix="nmt-bench-trained-") as workdir:
        worker, missing = start_exported(model, tokenizer, Path(workdir))
        try:
            for name in FORMATS if worker is not None else ():
                systems[name] = [natural_system(worker, name, rows, outputs[name], i) for i, rows in enumerate(plain)]
                warmup[name] = natural_system(worker, name, plain[0], {}, 0)
            measured, same = {}, {}
            for beam in args.beams:
                measured[beam] = time_systems(systems, beam, args.repeats, warmup)
                same[beam] = _agreement(outputs)  # the outputs of this beam size's last repeat
        finally:
            if worker is not None:
                worker.close()
    return {"model": str(path), "attention": model.cfg.variants(), "missing": missing, "measured": measured,
            "identical": same, "kv": {beam: kv_bytes(model, beam) for beam in args.beams}}


def _agreement(outputs: dict[str, dict]) -> dict[str, int]:
    """Per exported system, the sentences whose 1-best equals nmt's (token ids)."""
    ours = [t for i in sorted(outputs["nmt"]) for t in outputs["nmt"][i]]
    return {name: sum(a == b for a, b in zip(ours, [t for i in sorted(out) for t in out[i]]))
            for name, out in outputs.items() if name != "nmt" and out}


def bench_trained(args: argparse.Namespace, lines: list[str]) -> tuple[list[dict], str]:
    """Time every ``args.trained`` model against its exports; returns the JSON records and a Markdown table."""
    from nmt.bench.exported import FORMATS

    n, records, rows = len(lines), [], []
    for path in args.trained:
        measured = _measure(path, args, lines)
        label = "/".join(dict.fromkeys(measured["attention"].values()))
        for beam, by_system in measured["measured"].items():
            per = {name: {**r, "sentences_per_s": n / r["seconds"]} for name, r in by_system.items()}
            same = measured["identical"].get(beam, {})
            ours, theirs = measured["kv"][beam]
            records.append({"model": measured["model"], "attention": measured["attention"], "beam": beam,
                            "systems": per, "identical_to_nmt": same, "exported": measured["missing"] or "exported",
                            "kv_cache_bytes": {"nmt": ours, "CTranslate2 (nmt export)": theirs}})
            nmt_speed = per["nmt"]["sentences_per_s"]
            cells = []
            for name in FORMATS:
                if name not in per:
                    cells += [measured["missing"], "—"]
                    continue
                speed = per[name]["sentences_per_s"]
                agree = f", {same[name]}/{n} = nmt" if name in same else ""
                cells += [f"{speed:.1f} ({speed / nmt_speed:.2f}×)",
                          f"{','.join(map(str, per[name]['tokens']))}{agree}"]
            rows.append([f"{label} ({Path(path).name}), {'greedy' if beam == 1 else f'beam {beam}'}",
                         f"{nmt_speed:.1f}", ",".join(map(str, per["nmt"]["tokens"])), *cells,
                         f"{ours:,} / {theirs:,}"])
    header = ["trained model, decoding", "nmt sent/s", "nmt new tokens", "nmt→CT2 float32 sent/s (× nmt)",
              "float32 new tokens, outputs = nmt", "nmt→CT2 int8 sent/s (× nmt)", "int8 new tokens, outputs = nmt",
              "KV-cache bytes nmt / CTranslate2"]
    intro = (f"Trained models at natural lengths: {n} sentences, batches of {args.batch} sorted by length, nmt's "
             f"search settings (length penalty 0.6, max length 1.2 · source + 10) in every system; outputs = nmt: "
             f"sentences whose 1-best token ids equal nmt's; medians of {args.repeats} runs")
    return records, intro + "\n\n" + markdown_table(header, rows)
