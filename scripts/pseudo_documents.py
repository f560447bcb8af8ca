"""Pseudo-documents for the long-input benchmark (nmt.data.documents): k consecutive Multi30k sentence pairs of each
split joined into one line per language, one folder per k, read by `data=multi30k_docs` (issue 31).

    python scripts/pseudo_documents.py [--k 8 16 32 64] [--out data/multi30k_docs] [--source DIR]
        [--langs en de] [--splits train val test_2016_flickr test_2017_flickr] [--vocab-size 8000 | 0] [--if-missing]

Prints documents per split and their length in words and in subwords (the sentencepiece model `data=multi30k` trains
on the source sentences, vocabulary --vocab-size, cached under --cache-dir; 0 skips it). With --if-missing, only the
k folders not already complete from the same --source and settings are written (scripts/long_bleu.sh uses it, so
copies started together do not rewrite each other's input).
"""

import sys
import time

from nmt.data.corpora import corpus_dir
from nmt.data.documents import KS, SPLITS, DocumentSpec, ensure_documents, format_stats, write_documents
from nmt.errors import UsageError, UsageParser, first_line, plural


def subword_counter(args):
    """texts → subword counts with the sentencepiece model nmt train builds for the source sentences."""
    from nmt.config.train import DataConfig, SplitNames
    from nmt.data.datamodule import TranslationData

    cfg = DataConfig(src_lang=args.langs[0], tgt_lang=args.langs[1], path=args.source, file_pattern=args.pattern,
                     splits=SplitNames(args.splits[0], args.splits[min(1, len(args.splits) - 1)], None),
                     vocab_size=args.vocab_size, cache_dir=args.cache_dir)
    tokenizer = TranslationData(cfg, seed=0).load_tokenizer()
    return lambda texts: [len(ids) for ids in tokenizer.encode(texts)]


def main() -> int:
    parser = UsageParser(prog="pseudo_documents.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=list(KS), help="pairs per document (default 8 16 32 64)")
    parser.add_argument("--out", default="data/multi30k_docs", help="writes OUT/k<k>/<split>.<lang>.gz")
    parser.add_argument("--source", default=None, help="a Multi30k-style folder (default: the shipped Multi30k)")
    parser.add_argument("--langs", nargs="+", default=["en", "de"], help="languages, aligned (default en de)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="splits (the first is the training one)")
    parser.add_argument("--pattern", default="{split}.{lang}.gz", help="file names in --source, kept in --out")
    parser.add_argument("--vocab-size", type=int, default=8000, help="subword statistics' vocabulary (0: words only)")
    parser.add_argument("--cache-dir", default="data", help="where the sentencepiece model is cached (data.cache_dir)")
    parser.add_argument("--if-missing", action="store_true",
                        help="write only the k folders not already complete (same --source, splits, langs, pattern)")
    try:
        args = parser.parse_args()
        if args.vocab_size < 0:
            parser.error(f"--vocab-size ({args.vocab_size}) must be >= 0")
    except UsageError as error:  # one line, not argparse's usage block
        print(f"pseudo_documents.py: {error}", file=sys.stderr)
        return 2
    args.source = args.source or str(corpus_dir("multi30k"))
    start = time.perf_counter()
    try:
        spec = DocumentSpec(tuple(args.k), tuple(args.splits), tuple(args.langs), args.pattern)
        counter = subword_counter(args) if args.vocab_size else None
        if args.if_missing:
            manifests = ensure_documents(args.source, args.out, spec.ks, spec, counter)
        else:
            manifests = write_documents(args.source, args.out, spec, counter)
    except (ValueError, OSError) as error:
        print(f"pseudo_documents.py: {first_line(error)}", file=sys.stderr)
        return 2
    if manifests:
        print(format_stats(manifests))
    print(f"wrote {plural(len(manifests), 'folder')} under {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
