"""What every benchmark shares: medians of repeated timings, peak memory of one call, JSON + Markdown output, and the
source batches every system of `nmt bench translate` decodes (its peers import them from here, not from the bench)."""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from nmt.errors import UsageError, UsageParser  # noqa: F401 - the bench commands import them from here
from nmt.files import file_in_the_way


def environment(device: Optional[torch.device] = None) -> dict[str, Any]:
    """What a number depends on: torch version, device, threads (written beside every result). ``device``: where the
    bench ran; a CPU is recorded as ``cpu (<processor>)`` even on a machine that has CUDA. Without it, the CUDA device
    when there is one, else the processor's name."""
    processor = platform.processor() or platform.machine()
    if device is not None:
        name = f"cpu ({processor})" if device.type == "cpu" else torch.cuda.get_device_name(device)
    else:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else processor
    return {"torch": torch.__version__, "device": name, "threads": torch.get_num_threads()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[float, list[float]]:
    """Median time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls, and every time: wall time, or
    what ``clock`` counts (``time.process_time``: this process's CPU seconds, which time spent descheduled on a
    shared machine does not inflate)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
    return statistics.median(times), times


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


_LIBC = None


def _release_free_heap() -> None:
    """Make the resident set follow the live tensors: glibc serves every block above 64 KiB with its own mmap
    (M_MMAP_THRESHOLD fixed, so it stops growing), and malloc_trim returns the free pages still in the heap, so a
    call's peak resident set is what it held, not what earlier calls left behind for reuse."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        _LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
        M_MMAP_THRESHOLD = -3
        _LIBC.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    _LIBC.malloc_trim(0)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory ``fn()`` adds above what was in use when it started.

    CUDA: the caching allocator's peak. CPU: the process's peak resident set (VmHWM), reset through
    /proc/self/clear_refs just before the call, minus the resident set then (see _release_free_heap).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    fn()
    return max(_status_kib("VmHWM") - before, 0) * 1024


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, and ``--out`` checked before the bench runs rather than when it writes: a file at
    the folder's path or above it is a one-line error (UsageError through UsageParser)."""
    args = parser.parse_args(argv)
    problem = file_in_the_way(args.out)
    if problem is not None:
        parser.error(f"--out {args.out}: {problem}")
    return args


def write_results(out_dir: str | Path, name: str, results: dict, markdown: str) -> tuple[Path, Path]:
    """``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; the Markdown is also what the command prints."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown + "\n")
    return json_path, md_path


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) ids + eos, right-padded with PAD_ID
    lengths: torch.Tensor  # (B,) including the eos
    pieces: list[list[str]]  # the same tokens as sentencepiece pieces (CTranslate2 input)


def make_batches(ids: list[list[int]], pieces_of: Optional[Callable[[int], str]], size: int) -> list[Batch]:
    """Sentences sorted by source length (stable), cut into batches of ``size``: the same batches for every system.
    ``pieces_of`` (id → sentencepiece piece) fills each batch's ``pieces``; None leaves them empty (nmt only)."""
    from nmt.data.batching import collate

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), size):
        rows = [ids[i] for i in order[start : start + size]]
        t = collate(rows, [[] for _ in rows])
        pieces = [] if pieces_of is None else \
            [[pieces_of(j) for j in row[: int(n)].tolist()] for row, n in zip(t["src"], t["src_lengths"])]
        batches.append(Batch(t["src"], t["src_lengths"], pieces))
    return batches


class WorkerProcess:
    """A benchmark peer in a process of its own, spoken to over a pipe: started with ``spawn`` (a fresh interpreter,
    no torch threads inherited, so its OpenMP threads do not compete with the bench's between calls). ``target(conn,
    *args)`` sends "ready" or a one-line reason first, kept in ``status``; ``close`` ends the process (a ``None``
    request, then terminate after 30 s)."""

    def __init__(self, target: Callable[..., None], args: tuple) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        self.status = self.conn.recv() if self.conn.poll(600) else "the worker did not start within 600 s"

    def close(self) -> None:
        """End the worker: ask it to stop, wait up to 30 s, then terminate it."""
        if self.process.is_alive():
            if self.status == "ready":
                self.conn.send(None)
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()


def ct2_forced_tokens(translator, batches: list[list[list[str]]], beam: int, length: int) -> int:
    """New tokens a ``ctranslate2.Translator`` generates for ``batches`` (sources as piece lists) when every
    sentence is forced to ``length`` tokens (eos included): the bench's forced-length decoding, for Marian's and
    nmt's CTranslate2 models alike."""
    generated = 0
    for batch in batches:
        results = translator.translate_batch(batch, beam_size=beam, min_decoding_length=length,
                                             max_decoding_length=length, return_end_token=True, max_batch_size=0,
                                             max_input_length=0)
        generated += sum(len(r.hypotheses[0]) for r in results)
    return generated
