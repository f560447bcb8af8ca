"""``nmt translate`` and the Python API: load an exported model, translate lines. Imports neither Lightning nor
Hydra, so it starts fast.

``--engine ct2`` runs the same Translator, input policy and warnings on a CTranslate2 folder written by
``nmt export ct2`` (nmt/ct2/translator.py), whose decoding gives nmt's tokens (nmt/ct2/search.py).

Input policy: exactly one output line per input line, in order. Blank or whitespace-only lines give blank lines.
Bytes that are not UTF-8 are replaced (U+FFFD) with a warning naming the lines. Sources longer than
``max_source_len`` subwords are truncated with a warning naming the lines, never dropped.
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

from nmt.batching import collate, token_batches
from nmt.config import DecodeConfig
from nmt.search import Hypothesis, decode

log = logging.getLogger("nmt.translate")


@dataclass
class Translation:
    text: str
    nbest: list[tuple[str, float]]


class Translator:
    def __init__(self, model, tokenizer, device: str | torch.device = "cpu") -> None:
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Translator":
        from nmt.loading import load_model

        model, tokenizer = load_model(path, device)
        return cls(model, tokenizer, device)

    def translate(
        self,
        texts: list[str],
        beam: int = 5,
        nbest: int = 1,
        max_tokens: int = 4096,
        max_source_len: int = 1024,
        **decode_options,
    ) -> list[str]:
        """Translations of ``texts`` in order (blank in, blank out)."""
        cfg = DecodeConfig(beam=beam, nbest=nbest, **decode_options)
        return [t.text for t in self.translate_full(texts, cfg, max_tokens, max_source_len, scores=False)]

    def translate_full(
        self,
        texts: list[str],
        cfg: DecodeConfig,
        max_tokens: int = 4096,
        max_source_len: int = 1024,
        progress: Optional[callable] = None,
        scores: bool = True,
    ) -> list[Translation]:
        """Translations with their n-best lists and scores; sorted by length internally, returned in input order.
        ``scores=False``: greedy and sampled scores are NaN, for callers that keep only the text (faster)."""
        results = [Translation("", []) for _ in texts]
        todo = [i for i, text in enumerate(texts) if text.strip()]
        if progress is not None:
            progress(len(texts) - len(todo))  # blank lines are done already
        ids = self.tokenizer.encode([texts[i] for i in todo])
        truncated = [todo[j] + 1 for j, s in enumerate(ids) if len(s) > max_source_len]
        if truncated:
            log.warning(
                "%d source lines longer than %d subwords were truncated (lines %s)",
                len(truncated), max_source_len, _some(truncated),
            )
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
        """One batch of sources (subword ids, without eos) → each one's n-best list (nmt.search.decode)."""
        tensors = collate(ids, [[] for _ in ids])
        src, src_lengths = tensors["src"].to(self.device), tensors["src_lengths"].to(self.device)
        return decode(self.model, src, src_lengths, cfg, scores)

    def _translation(self, hyps: list[Hypothesis]) -> Translation:
        # A decoded subword string may contain line breaks (byte fallback); keep one line per sentence.
        texts = [" ".join(t.split()) for t in self.tokenizer.decode([h.tokens for h in hyps])]
        return Translation(texts[0], [(t, h.score) for t, h in zip(texts, hyps)])


def _some(lines: list[int], limit: int = 10) -> str:
    return ", ".join(map(str, lines[:limit])) + (" …" if len(lines) > limit else "")


def read_lines(data: bytes, source: str) -> list[str]:
    """Lines of ``data`` (a final newline ends the last line; CRLF accepted); invalid UTF-8 replaced, with a warning."""
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines, bad = [], []
    for number, line in enumerate(raw, start=1):
        line = line[:-1] if line.endswith(b"\r") else line
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("utf-8", errors="replace"))
            bad.append(number)
    if bad:
        log.warning("%s: %d lines are not valid UTF-8; invalid bytes replaced by U+FFFD (lines %s)",
                    source, len(bad), _some(bad))
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt translate", description="Translate lines with an exported model.")
    parser.add_argument("--model", required=True, help="exported model directory (or a Lightning .ckpt); with "
                        "--engine ct2, a folder written by nmt export ct2")
    parser.add_argument("--engine", choices=("nmt", "ct2"), default="nmt",
                        help="decode with nmt (default) or with CTranslate2 (the same search, token for token)")
    parser.add_argument("--compute-type", default="default",
                        help="--engine ct2: CTranslate2's compute type (default: the exported weights' type)")
    parser.add_argument("--input", help="input file (default: stdin)")
    parser.add_argument("--output", help="output file (default: stdout)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--nbest", type=int, default=1, help="N > 1 writes Moses n-best lines: index ||| text ||| score")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--max-source-len", type=int, default=1024, help="longer sources are truncated (warned)")
    parser.add_argument("--length-penalty", type=float, default=0.6)
    parser.add_argument("--max-len-a", type=float, default=1.2)
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--min-len", type=int, default=0)
    parser.add_argument("--sampling", action="store_true")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(
        beam=args.beam, nbest=args.nbest, length_penalty=args.length_penalty, max_len_a=args.max_len_a,
        max_len_b=args.max_len_b, min_len=args.min_len, sampling=args.sampling, top_k=args.top_k, top_p=args.top_p,
        temperature=args.temperature, seed=args.seed,
    )


def format_output(translations: Iterable[Translation], nbest: int) -> str:
    if nbest == 1:
        return "".join(t.text + "\n" for t in translations)
    return "".join(f"{i} ||| {text} ||| {score:.4f}\n" for i, t in enumerate(translations) for text, score in t.nbest)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="nmt translate: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        cfg = decode_config(args)
        translator = load_translator(args)
        if args.input:
            source = args.input
            data = Path(args.input).read_bytes()
        else:
            source, data = "<stdin>", sys.stdin.buffer.read()
        lines = read_lines(data, source)
        progress = _progress(len(lines)) if args.input else None
        start = time.perf_counter()
        translations = translator.translate_full(lines, cfg, args.batch_tokens, args.max_source_len,
                                                 progress and progress.advance, scores=args.nbest > 1)
        if progress:
            progress.stop()
            log.warning("%d lines in %.1f s", len(lines), time.perf_counter() - start)
        text = format_output(translations, args.nbest)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    except (ValueError, OSError) as error:
        print(f"nmt translate: {error}", file=sys.stderr)
        return 2
    return 0


def load_translator(args: argparse.Namespace) -> Translator:
    """The Translator of ``--engine``: nmt's own decoder, or CTranslate2 over an ``nmt export ct2`` folder."""
    if args.engine == "ct2":
        from nmt.ct2.translator import CT2Translator

        return CT2Translator.load(args.model, args.device, args.compute_type, threads=torch.get_num_threads())
    if args.compute_type != "default":
        raise ValueError(f"--compute-type {args.compute_type}: only with --engine ct2")
    return Translator.load(args.model, args.device)


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


def load(path: str | Path, device: str | torch.device = "cpu") -> Translator:
    return Translator.load(path, device)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
