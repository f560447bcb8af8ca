"""Padding removal in the encoder (nmt.model.unpad) against the padded layout, on nmt bench translate's setup.

The `small` model with random weights (seed 1234) decodes the first --limit lines of test_2016_flickr, in batches of
--batch sentences sorted by length as the bench makes them (or, with --unsorted, in a shuffled order: more padding),
forced to --length new tokens; the two layouts alternate pass by pass in one process. Prints the milliseconds per
batch of each, padded ÷ unpadded (> 1: removing padding wins), and whether every decoded token was the same.

    python scripts/unpad_speedup.py [--threads 1] [--length 20] [--beam 1] [--unsorted]
"""

import argparse
import random
import statistics
import time

import torch

from nmt.bench.common import make_batches
from nmt.bench.translate import load_config, load_tokenizer
from nmt.config import DecodeConfig
from nmt.data.textio import read_text
from nmt.decoding.search import decode
from nmt.model import build_model, unpad


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--length", type=int, default=20, help="new tokens forced per sentence")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--unsorted", action="store_true", help="batches of shuffled lines instead of sorted ones")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config("small", [])
    tokenizer = load_tokenizer(cfg)
    lines = [line for line in read_text("data/multi30k/test_2016_flickr.en.gz") if line.strip()][: args.limit]
    ids = tokenizer.encode(lines)
    if args.unsorted:
        random.Random(0).shuffle(ids)
        batches = [make_batches(ids[i: i + args.batch], None, args.batch)[0] for i in range(0, len(ids), args.batch)]
    else:
        batches = make_batches(ids, None, args.batch)
    padding = 1 - sum(int(b.lengths.sum()) for b in batches) / sum(b.src.numel() for b in batches)
    torch.manual_seed(1234)
    model = build_model(cfg.model).eval()
    layout_of = unpad.Unpadded.__dict__["of"]  # the classmethod itself, to put back
    decode_cfg = DecodeConfig(beam=args.beam, min_len=args.length - 1, max_len_a=0, max_len_b=args.length)

    def run(unpadded: bool) -> list:
        unpad.Unpadded.of = layout_of if unpadded else classmethod(lambda cls, lengths, length: None)
        try:
            with torch.inference_mode():
                return [[h[0].tokens for h in decode(model, b.src, b.lengths, decode_cfg, scores=False)]
                        for b in batches]
        finally:
            unpad.Unpadded.of = layout_of

    same = run(True) == run(False)  # also the warm-up
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.repeats):
        for unpadded in (True, False) if r % 2 == 0 else (False, True):
            start = time.perf_counter()
            run(unpadded)
            seconds[unpadded].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) / len(batches) * 1e3 for k, v in seconds.items()}
    print(f"{len(lines)} sentences, {len(batches)} batches of {args.batch} ({'shuffled' if args.unsorted else 'sorted'}"
          f", {padding:.1%} padding), {args.threads} thread(s), beam {args.beam}, {args.length} tokens: unpadded "
          f"{ms[True]:.1f} ms/batch, padded {ms[False]:.1f} ms/batch, padded ÷ unpadded {ms[False] / ms[True]:.3f}, "
          f"tokens {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
