"""``nmt export ct2 MODEL OUT``: an nmt model directory or checkpoint as a CTranslate2 model folder.

The folder holds what CTranslate2 reads (model.bin, config.json, shared_vocabulary.json) plus ``spm.model`` (the
sentencepiece model, so the folder translates on its own) and ``nmt.json`` (the nmt model config, the quantization,
the sinusoidal table's length), which ``nmt translate --engine ct2`` reads. It is written into a temporary sibling
and renamed into place (nmt.decoding.export.write_directory), so a reader never sees half a model; an existing OUT is
replaced only with ``--force``, as CTranslate2's own converters do.

Errors (a model CTranslate2 cannot express, a missing model, a bad option) are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from nmt.errors import UsageError, UsageParser, first_line
from nmt.files import check_output_folder

META = "nmt.json"
SPM = "spm.model"
DEFAULT_POSITIONS = 2048  # sinusoidal table rows: sources of up to 2,047 subwords (+ eos) and as many target steps
PROG = "nmt export ct2"


def quantizations() -> tuple[str, ...]:
    """The weight types CTranslate2 accepts for ``--quantization`` (int8, …, float32), from its installed package;
    raises ImportError without ctranslate2."""
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    return tuple(ACCEPTED_MODEL_TYPES)


def export_ct2(model, tokenizer, out: str | Path, quantization: str = "float32",
               max_positions: int = DEFAULT_POSITIONS, source: Optional[str] = None) -> Path:
    """Write ``model`` (nmt Seq2Seq) and ``tokenizer`` as a CTranslate2 folder ``out``; returns its path.

    ``quantization``: CTranslate2's weight type (int8, int8_float32, float16, …; float32 keeps nmt's weights).
    ``max_positions``: rows of the sinusoidal position table (unused with RoPE). Raises nmt.ct2.spec.ExportError
    (one line) for what CTranslate2 cannot express, ValueError for an unknown quantization.
    """
    from nmt.ct2.spec import build_spec, uses_multi_query_flag
    from nmt.decoding.export import write_directory

    if quantization not in quantizations():
        raise ValueError(f"--quantization {quantization!r}: choose one of {', '.join(quantizations())}")
    if max_positions < 2:
        raise ValueError(f"--max-positions ({max_positions}) must be >= 2")
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    spec = build_spec(model, pieces, max_positions)
    spec.validate()
    spec.optimize(quantization=quantization)
    sinusoidal = model.cfg.positions == "sinusoidal"
    import ctranslate2

    meta = {
        "format": "nmt-ctranslate2",
        "ctranslate2": ctranslate2.__version__,
        "model": model.cfg.to_dict(),
        "quantization": quantization,
        "max_positions": max_positions if sinusoidal else None,
        "one_head_mqa_cache": uses_multi_query_flag(model.cfg),
        "source": source,
    }

    def fill(tmp: Path) -> None:
        spec.save(str(tmp))
        (tmp / SPM).write_bytes(tokenizer.serialized)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")

    return write_directory(out, fill)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The ``nmt export ct2`` options (``argv`` after ``ct2``): model, out, quantization, max_positions, force. A bad
    command line raises UsageError (one line) instead of exiting; ``--help`` prints the help and exits 0."""
    parser = UsageParser(prog=PROG, description="Export an nmt model to a CTranslate2 model folder.")
    parser.add_argument("model", help="exported nmt model directory or training checkpoint (.ckpt)")
    parser.add_argument("out", help="the CTranslate2 model folder to write")
    parser.add_argument("--quantization", default="float32",
                        help="CTranslate2 weight type: int8, int8_float32, int8_float16, int8_bfloat16, int16, "
                             "float16, bfloat16 or float32 (default)")
    parser.add_argument("--max-positions", type=int, default=DEFAULT_POSITIONS,
                        help=f"sinusoidal models: positions the exported table covers (default {DEFAULT_POSITIONS})")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """``nmt export ct2 MODEL OUT ...`` (``argv``: the words after ``export``); returns the exit status: 0 when written
    or for -h, 2 with the usage (no or another subcommand) or a one-line error (ValueError, OSError) on stderr."""
    if not argv or argv[0] != "ct2":
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        print("usage: nmt export ct2 MODEL OUT [--quantization TYPE] [--max-positions N] [--force]\n"
              "  ct2  a CTranslate2 model folder (translate it with nmt translate --engine ct2)", file=stream)
        return 0 if stream is sys.stdout else 2
    try:
        return _run(parse_args(argv[1:]))
    except (ValueError, OSError) as error:
        print(f"{PROG}: {first_line(error)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is None:
        raise UsageError("needs the ctranslate2 package: pip install ctranslate2")
    out, model_path = Path(args.out), Path(args.model)
    check_output_folder(out, args.force, reads=[model_path])
    if args.quantization not in quantizations():
        raise UsageError(f"--quantization {args.quantization!r}: choose one of {', '.join(quantizations())}")
    from nmt.decoding.loading import load_model

    model, tokenizer = load_model(model_path)
    written = export_ct2(model, tokenizer, out, args.quantization, args.max_positions, source=str(model_path))
    print(f"{PROG}: wrote {written} ({args.quantization}); translate with: "
          f"nmt translate --engine ct2 --model {written}", file=sys.stderr)
    return 0
