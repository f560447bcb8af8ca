"""``nmt bench attention|data|long|train|translate``: benchmarks that print ratios against a peer measured in the same
run."""

from __future__ import annotations

import sys

COMMANDS = {
    "attention": "attention kernels by variant, backend and length: time, peak memory, growth, KV-cache bytes",
    "data": "what a large corpus costs before the first training step: time and peak memory per stage, cold and "
            "cached, at 0.5M-4.5M pairs",
    "long": "attention variants on Multi30k pseudo-documents of k sentences: training tokens/s and memory, decoding "
            "speed and KV-cache bytes against MHA, and where windows start to pay",
    "train": "training steps of nmt against a torch.nn.Transformer reference with the same settings",
    "translate": "greedy and beam-5 decoding of nmt against Hugging Face MarianMTModel and CTranslate2 (Marian's and "
                 "nmt's own exports, if installed)",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:10s} {text}" for name, text in COMMANDS.items())
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        print(f"usage: nmt bench <{'|'.join(COMMANDS)}> [options]\n{listing}", file=stream)
        return 0 if stream is sys.stdout else 2
    command, rest = argv[0], argv[1:]
    if command == "attention":
        from nmt.bench.attention import main as run
    elif command == "data":
        from nmt.bench.data import main as run
    elif command == "long":
        from nmt.bench.long import main as run
    elif command == "train":
        from nmt.bench.train import main as run
    else:
        from nmt.bench.translate import main as run
    return run(rest)
