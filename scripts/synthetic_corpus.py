"""A WMT-size parallel corpus from Multi30k's sentences, offline (nmt.data.synthetic): train/valid/test files that
`nmt train data=local data.path=OUT` reads — issue 29's scale benchmark.

    python scripts/synthetic_corpus.py --pairs 4500000 --out data/synthetic_4.5M [--gzip] [--seed 0] [--shards N]
"""

import argparse
import sys
import time
from array import array

from nmt.data.synthetic import SyntheticCorpus, distinct_share, write_corpus
from nmt.errors import first_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, required=True, help="training lines (e.g. 4500000)")
    parser.add_argument("--out", required=True, help="folder for train/valid/test .en/.de")
    parser.add_argument("--valid", type=int, default=1000, help="validation lines (default 1000)")
    parser.add_argument("--test", type=int, default=1000, help="test lines (default 1000)")
    parser.add_argument("--src-lang", default="en")
    parser.add_argument("--tgt-lang", default="de")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gzip", action="store_true", help="write .gz files (read with "
                        "\"data.file_pattern='{split}.{lang}.gz'\", quoted so)")
    parser.add_argument("--shards", type=int, default=1, help="training files per language: train.00000.en, … "
                        "(read with data.splits.train='train.*'; default 1: train.en)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        corpus = SyntheticCorpus(args.pairs, args.valid, args.test, args.src_lang, args.tgt_lang, args.seed,
                                 args.gzip, args.shards)
        hashes = array("q")
        written = write_corpus(args.out, corpus, hashes)
    except (ValueError, OSError) as error:
        print(f"synthetic_corpus.py: {first_line(error)}", file=sys.stderr)
        return 2
    size = sum(path.stat().st_size for path in written.values())
    print(f"wrote {len(written)} files, {size / 2**20:.0f} MiB, to {args.out} in {time.perf_counter() - start:.0f} s; "
          f"{distinct_share(hashes):.0%} of the {args.pairs} training lines are distinct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
