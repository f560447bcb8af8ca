"""``nmt translate`` and the Python API: load an exported model, translate lines. Imports neither Lightning nor
Hydra, so it starts fast.

Input policy: exactly one output record per input line (N records with ``--nbest N``), in order. Lines are read by
nmt.data.textio, the reader of every command (``.gz`` decompressed, CRLF and a leading byte-order mark dropped).
Blank or whitespace-only lines are not decoded: they give blank lines (n-best: N blank records scored 0, i.e.
probability 1). Bytes that are not UTF-8 are replaced (U+FFFD) with a warning naming the lines. Sources longer
than ``max_source_len`` subwords are truncated with a warning naming the lines, never dropped. An empty input gives
an empty output.
``--engine ct2`` runs the same Translator, input policy and warnings on a CTranslate2 folder written by
``nmt export ct2`` (nmt/ct2/translator.py), whose decoding gives nmt's tokens (nmt/ct2/search.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from nmt.config import DecodeConfig
from nmt.data.batching import collate, token_batches
from nmt.data.textio import read_lines, some, write_text
from nmt.decoding.flags import (
    DEFAULT_BEAM,
    MAX_SOURCE_LEN,
    FlagError,
    add_decode_flags,
    check_device,
    check_dtype,
    decode_config,
)
from nmt.decoding.search import Hypothesis, decode
from nmt.errors import UsageParser, first_line, plural

log = logging.getLogger("nmt.decoding.translate")


@dataclass
class Translation:
    text: str
    nbest: list[tuple[str, float]]


class Translator:
    def __init__(self, model, tokenizer, device: str | torch.device = "cpu") -> None:
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", dtype: str = "float32") -> "Translator":
        """The model at ``path`` on ``device`` in ``dtype`` (float32, bfloat16, int8 or auto: nmt.decoding.dtypes);
        ModelLoadError / DtypeError in one line."""
        from nmt.decoding.dtypes import inference_model
        from nmt.decoding.loading import load_model

        model, tokenizer = load_model(path, device)
        return cls(inference_model(model, dtype, str(device))[0], tokenizer, device)

    def translate(
        self,
        texts: str | list[str],
        beam: Optional[int] = None,
        nbest: int = 1,
        max_tokens: int = 4096,
        max_source_len: int = MAX_SOURCE_LEN,
        **decode_options,
    ) -> str | list[str]:
        """The translation of one string (a str), or of each string of a list or tuple (a list, in order; blank in,
        blank out). ``beam`` defaults to 5, or 1 with ``sampling=True``; ``decode_options`` are DecodeConfig's other
        fields. TypeError for any other input (a str is not taken for a sequence of characters)."""
        if isinstance(texts, str):
            return self.translate([texts], beam, nbest, max_tokens, max_source_len, **decode_options)[0]
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"Translator.translate takes a str or a list of str, not {type(texts).__name__}")
        wrong = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if wrong is not None:
            raise TypeError(f"Translator.translate: item {wrong} is a {type(texts[wrong]).__name__}, not a str")
        if beam is None:
            beam = 1 if decode_options.get("sampling") else DEFAULT_BEAM
        cfg = DecodeConfig(beam=beam, nbest=nbest, **decode_options)
        return [t.text for t in self.translate_full(list(texts), cfg, max_tokens, max_source_len, scores=False)]

    def translate_full(
        self,
        texts: list[str],
        cfg: DecodeConfig,
        max_tokens: int = 4096,
        max_source_len: int = MAX_SOURCE_LEN,
        progress: Optional[callable] = None,
        scores: bool = True,
    ) -> list[Translation]:
        """Translations with their n-best lists and scores; sorted by length internally, returned in input order.
        ``scores=False``: greedy and sampled scores are NaN, for callers that keep only the text (faster)."""
        # Blank lines are not decoded: a blank translation, and in n-best mode as many blank entries as asked for.
        results = [Translation("", [("", 0.0)] * cfg.nbest) for _ in texts]
        todo = [i for i, text in enumerate(texts) if text.strip()]
        if progress is not None:
            progress(len(texts) - len(todo))  # blank lines are done already
        ids = self.tokenizer.encode([texts[i] for i in todo])
        truncated = [todo[j] + 1 for j, s in enumerate(ids) if len(s) > max_source_len]
        if truncated:
            log.warning("%s longer than %d subwords %s truncated (lines %s)", plural(len(truncated), "source line"),
                        max_source_len, "was" if len(truncated) == 1 else "were", some(truncated))
        ids = [s[:max_source_len] for s in ids]
        lens = np.array([len(s) for s in ids], dtype=np.int64)
        budget = max(max_tokens, int(lens.max(initial=0)) + 2)  # one sentence always fits a batch
        with torch.no_grad():
            for batch in token_batches(lens, lens, budget, rng=None):
                nbest = self.decode_ids([ids[j] for j in batch], cfg, scores)
                for j, hyps in zip(batch, nbest):
                    results[todo[j]] = self._translation(hyps)
                if progress is not None:
                    progress(len(batch))
        return results

    def decode_ids(self, ids: list[list[int]], cfg: DecodeConfig, scores: bool = True) -> list[list[Hypothesis]]:
        """One batch of sources (subword ids, without eos) → each one's n-best list (nmt.decoding.search.decode)."""
        tensors = collate(ids, [[] for _ in ids])
        src, src_lengths = tensors["src"].to(self.device), tensors["src_lengths"].to(self.device)
        return decode(self.model, src, src_lengths, cfg, scores)

    def _translation(self, hyps: list[Hypothesis]) -> Translation:
        # A decoded subword string may contain line breaks (byte fallback); keep one line per sentence.
        texts = [" ".join(t.split()) for t in self.tokenizer.decode([h.tokens for h in hyps])]
        return Translation(texts[0], [(t, h.score) for t, h in zip(texts, hyps)])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = UsageParser(prog="nmt translate", description="Translate lines with an exported model.")
    parser.add_argument("--model", required=True, help="exported model directory (or a Lightning .ckpt); with "
                        "--engine ct2, a folder written by nmt export ct2")
    parser.add_argument("--engine", choices=("nmt", "ct2"), default="nmt",
                        help="decode with nmt (default) or with CTranslate2 (the same search, token for token)")
    parser.add_argument("--compute-type", default="default",
                        help="--engine ct2: CTranslate2's compute type (default: the exported weights' type)")
    parser.add_argument("--input", help="input file, .gz decompressed (default: stdin)")
    parser.add_argument("--output", help="output file, .gz compressed (default: stdout)")
    add_decode_flags(parser)
    return parser.parse_args(argv)


def read_input(path: Optional[str]) -> list[str]:
    """The lines of ``path`` (or stdin), invalid UTF-8 replaced with a warning naming the lines."""
    lines, invalid = read_lines(path, errors="replace")
    if invalid:
        log.warning("%s: %s not valid UTF-8; invalid bytes replaced by U+FFFD (lines %s)",
                    path or "<stdin>", plural(len(invalid), "line is", "lines are"), some(invalid))
    return lines


def format_output(translations: Iterable[Translation], nbest: int) -> str:
    if nbest == 1:
        return "".join(t.text + "\n" for t in translations)
    return "".join(f"{i} ||| {text} ||| {score:.4f}\n" for i, t in enumerate(translations) for text, score in t.nbest)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="nmt translate: %(message)s", stream=sys.stderr)
    try:
        args = parse_args(argv)  # a bad flag is one line (UsageParser), like every other error here
        cfg = decode_config(args)
        check_device(args.device)
        check_engine(args)
        lines = read_input(args.input)
        translator = load_translator(args)
        progress = _progress(len(lines)) if args.input else None
        start = time.perf_counter()
        translations = translator.translate_full(lines, cfg, args.batch_tokens, args.max_source_len,
                                                 progress and progress.advance, scores=args.nbest > 1)
        if progress:
            progress.stop()
            log.warning("%s in %.1f s", plural(len(lines), "line"), time.perf_counter() - start)
        text = format_output(translations, args.nbest)
        if args.output:
            write_text(args.output, text)
        else:
            sys.stdout.write(text)
    except (FlagError, ValueError, OSError) as error:
        print(f"nmt translate: {first_line(error)}", file=sys.stderr)
        return 2
    return 0


def load_translator(args: argparse.Namespace) -> Translator:
    """The Translator of ``--engine``: nmt's own decoder, or CTranslate2 over an ``nmt export ct2`` folder."""
    if args.engine == "ct2":
        from nmt.ct2.translator import CT2Translator

        return CT2Translator.load(args.model, args.device, args.compute_type, threads=torch.get_num_threads())
    return Translator.load(args.model, args.device, args.dtype)


def check_engine(args: argparse.Namespace) -> None:
    """FlagError, before any input is read, for flags the chosen engine does not take: --dtype with --engine ct2
    (which takes --compute-type), --compute-type without it, --dtype int8 off the CPU."""
    if args.engine == "ct2" and args.dtype != "float32":
        raise FlagError(f"--dtype {args.dtype}: nmt's decoder only; with --engine ct2 give --compute-type "
                        "(int8, bfloat16, float32, …)")
    if args.engine != "ct2" and args.compute_type != "default":
        raise FlagError(f"--compute-type {args.compute_type}: only with --engine ct2")
    check_dtype(args.dtype, args.device)


class _progress:
    """A rich progress bar on stderr, counting sentences."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("translating", total=total)
        self.bar.start()

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def stop(self) -> None:
        self.bar.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
