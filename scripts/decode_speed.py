"""Decoding speed (sentences/s) of exported models on Multi30k test_2016_flickr, greedy and beam 5.

    python scripts/decode_speed.py --model DIR [DIR…] [--beams 1 5] [--repeats 3] [--limit N] [--src FILE]

The same sentences are translated by each model with each beam size in turn (models alternate within a repeat, so
they share the machine's noise); the median is reported, with the batch budget and thread count, as a Markdown table
and JSON (outputs/bench/decode_speed.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nmt.config import DecodeConfig
from nmt.data.corpora import corpus_dir
from nmt.data.textio import read_text
from nmt.decoding.translate import Translator
from nmt.errors import plural

DEFAULT_SRC = corpus_dir("multi30k") / "test_2016_flickr.en.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, nargs="+")
    parser.add_argument("--src", default=str(DEFAULT_SRC))
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--out", default="outputs/bench/decode_speed.json")
    args = parser.parse_args()
    sentences = read_text(args.src)[: args.limit]
    translators = {model: Translator.load(model) for model in args.model}
    results: dict[str, dict[int, list[float]]] = {model: {beam: [] for beam in args.beams} for model in args.model}
    with torch.no_grad():
        for _ in range(args.repeats):
            for model, translator in translators.items():
                for beam in args.beams:
                    start = time.perf_counter()
                    translator.translate_full(sentences, DecodeConfig(beam=beam), args.batch_tokens, scores=False)
                    results[model][beam].append(len(sentences) / (time.perf_counter() - start))
    summary = {"src": args.src, "sentences": len(sentences), "threads": torch.get_num_threads(),
               "batch_tokens": args.batch_tokens, "runs": results,
               "sentences_per_s": {m: {b: statistics.median(v) for b, v in r.items()} for m, r in results.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"| model | decoding | sentences/s (median of {args.repeats}) | runs |\n|---|---|---|---|")
    for model, by_beam in results.items():
        for beam, values in by_beam.items():
            name = "greedy" if beam == 1 else f"beam {beam}"
            print(f"| {model} | {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\n{len(sentences)} sentences, batches of <= {args.batch_tokens} tokens, "
          f"{plural(torch.get_num_threads(), 'thread')}")


if __name__ == "__main__":
    main()
