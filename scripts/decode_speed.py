"""Decoding speed (sentences/s) of an exported model on Multi30k test_2016_flickr, greedy and beam 5.

    python scripts/decode_speed.py --model DIR [--beams 1 5] [--repeats 3] [--limit N] [--src FILE]

The same sentences are translated with each beam size in turn, repeated; the median is reported, with the batch
budget and thread count, as a Markdown table and JSON (outputs/bench/decode_speed.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from nmt.evaluate import read_text
from nmt.search import DecodeConfig
from nmt.translate import Translator

DEFAULT_SRC = Path(__file__).resolve().parent.parent.parent / "shared/data/multi30k/test_2016_flickr.en.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--src", default=str(DEFAULT_SRC))
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--out", default="outputs/bench/decode_speed.json")
    args = parser.parse_args()
    sentences = read_text(args.src)[: args.limit]
    translator = Translator.load(args.model)
    results: dict[int, list[float]] = {beam: [] for beam in args.beams}
    with torch.no_grad():
        for _ in range(args.repeats):
            for beam in args.beams:
                start = time.perf_counter()
                translator.translate_full(sentences, DecodeConfig(beam=beam), args.batch_tokens)
                results[beam].append(len(sentences) / (time.perf_counter() - start))
    summary = {"model": args.model, "src": args.src, "sentences": len(sentences), "threads": torch.get_num_threads(),
               "batch_tokens": args.batch_tokens, "sentences_per_s": {b: statistics.median(v) for b, v in results.items()},
               "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"| decoding | sentences/s (median of {args.repeats}) | runs |\n|---|---|---|")
    for beam, values in results.items():
        name = "greedy" if beam == 1 else f"beam {beam}"
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\n{len(sentences)} sentences, batches of <= {args.batch_tokens} tokens, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
