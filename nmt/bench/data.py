"""``nmt bench data``: what a large corpus costs before the first training step, stage by stage.

For each size (default 0.5M, 1.5M and 4.5M pairs) it writes a synthetic corpus from Multi30k's sentences
(nmt.data.synthetic) if the work folder lacks one, then runs ``nmt train data=local`` on it twice, each time in a
fresh process stopped after one training step: **cold** (an empty data cache: read, clean, sentencepiece, encode,
batch) and **cached** (the restart a resumed or repeated run pays). Per stage it reports wall seconds and the peak
memory while the stage ran: the proportional set size (PSS) summed over the process and its workers (datasets'
``num_proc``), sampled every 0.2 s from /proc (Linux), so pages the workers share are not counted twice.

``--baseline DIR`` runs another checkout of nmt (e.g. ``git worktree add /tmp/before main``) the same way, right
before each of this checkout's runs, and prints the ratios: the peer the numbers are read against, measured on the
same machine in the same call. The stages are found by wrapping functions (nmt/bench/data_probe.py), so a checkout
without a stage's function counts that time in its caller's stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from nmt.bench.common import UsageError, UsageParser, markdown_table, parse_bench_args, write_results
from nmt.errors import first_line

PROBE = Path(__file__).with_name("data_probe.py")
STAGES = ["read", "clean", "sentencepiece", "encode", "validation set", "batching"]
SAMPLE_SECONDS = 0.2
RUN_TIMEOUT = 4 * 3600  # seconds: one run past this is stopped and reported (the slowest measured here: ~25 min)


def _tree(pid: int) -> list[int]:
    """``pid`` and every live descendant, from /proc/PID/task/*/children."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def _pss_bytes(pid: int) -> int:
    total = 0
    for member in _tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0) * 1024
    return total


class MemorySampler(threading.Thread):
    """(time, PSS bytes of the process tree) every SAMPLE_SECONDS until the process ends."""

    def __init__(self, process: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.process, self.samples = process, []

    def run(self) -> None:
        while self.process.poll() is None:
            self.samples.append((time.time(), _pss_bytes(self.process.pid)))
            time.sleep(SAMPLE_SECONDS)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((pss for at, pss in self.samples if start - SAMPLE_SECONDS <= at <= end + SAMPLE_SECONDS),
                   default=0)


def train_overrides(corpus: Path, cache: Path, run_dir: Path, model: str) -> list[str]:
    """The ``nmt train`` command line of one measured run: one step, no validation, no progress bar."""
    return ["data=local", f"data.path={corpus}", f"data.cache_dir={cache}", f"model={model}", "trainer.max_steps=1",
            "trainer.val_every_n_steps=1000000", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]


def run_once(source: Optional[Path], corpus: Path, cache: Path, run_dir: Path, model: str) -> dict:
    """One ``nmt train`` process through the probe: {stage: seconds}, {stage: peak bytes}, seconds from launch to the
    end of the first training step's forward pass and loss (the probe exits there), peak bytes overall. RuntimeError
    with the log's last lines if the run fails, takes longer than RUN_TIMEOUT or never reaches a training step."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stages_file = run_dir / "stages.jsonl"
    env = dict(os.environ)
    if source is not None:  # the other checkout's nmt first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, str(PROBE), str(stages_file), "train", *train_overrides(corpus, cache, run_dir, model)]
    launched = time.time()
    with open(run_dir / "probe.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=source or Path.cwd())
        sampler = MemorySampler(process)
        sampler.start()
        try:
            code = process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = f"still running after {RUN_TIMEOUT} s"
        finally:  # never leave a run behind: a timeout, Ctrl-C or an error here ends it
            process.kill()
            process.wait()
            sampler.join()
    ended = time.time()
    if code != 0:
        tail = (run_dir / "probe.log").read_text(errors="replace").splitlines()[-5:]
        last_lines = f": {' | '.join(tail)}" if tail else " and logged nothing"
        raise RuntimeError(f"nmt train exited {code} ({run_dir / 'probe.log'}){last_lines}")
    records = [json.loads(line) for line in stages_file.read_text().splitlines()]
    seconds, peaks = {}, {}
    for r in records:
        if r["stage"] in STAGES:
            seconds[r["stage"]] = seconds.get(r["stage"], 0.0) + r["end"] - r["start"] - r["nested"]
            peaks[r["stage"]] = max(peaks.get(r["stage"], 0), sampler.peak(r["start"], r["end"]))
    first = next((r["end"] for r in records if r["stage"] == "first step"), None)
    if first is None:
        raise RuntimeError(f"nmt train ended without a training step ({run_dir / 'probe.log'})")
    return {"seconds": seconds, "peak_bytes": peaks, "to_first_step": first - launched,
            "total": ended - launched, "peak_total_bytes": sampler.peak()}


def ensure_corpus(work: Path, pairs: int) -> Path:
    """``work/corpus_PAIRS``, written (seed 0) unless all its files are there (each is written under a temporary
    name and renamed, so an interrupted write leaves some missing, never one half written). OSError if it cannot be
    written."""
    from nmt.data.synthetic import SyntheticCorpus, write_corpus

    corpus = work / f"corpus_{pairs}"
    if not all((corpus / f"{split}.{lang}").is_file() for split in ("train", "valid", "test") for lang in ("en", "de")):
        print(f"writing a synthetic corpus of {pairs:,} pairs to {corpus}", flush=True)
        write_corpus(corpus, SyntheticCorpus(pairs))
    return corpus


def _row(pairs: int, name: str, run: dict) -> list[str]:
    cells = [f"{pairs:,}", name]
    for stage in STAGES:
        seconds = run["seconds"].get(stage)
        cells.append("–" if seconds is None else f"{seconds:.1f} s / {run['peak_bytes'][stage] / 2**30:.2f} GiB")
    cells += [f"{run['to_first_step']:.1f} s", f"{run['peak_total_bytes'] / 2**30:.2f} GiB"]
    return cells


def _ratio_row(pairs: int, name: str, ours: dict, base: dict) -> list[str]:
    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return "–" if not a or not b else f"{b / a:.2f}×"
    cells = [f"{pairs:,}", f"{name}: baseline ÷ this"]
    cells += [ratio(ours["seconds"].get(s), base["seconds"].get(s)) for s in STAGES]
    cells += [ratio(ours["to_first_step"], base["to_first_step"]),
              ratio(ours["peak_total_bytes"], base["peak_total_bytes"])]
    return cells


def parse(argv: list[str]) -> argparse.Namespace:
    """The options; UsageError (one line) for a bad one, before any corpus is written or any run starts."""
    parser = UsageParser(prog="nmt bench data", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--pairs", type=int, nargs="+", default=[500_000, 1_500_000, 4_500_000],
                        help="corpus sizes in training pairs (default 500000 1500000 4500000)")
    parser.add_argument("--work", default="outputs/bench_data",
                        help="corpora, data caches and run folders (default outputs/bench_data)")
    parser.add_argument("--baseline", help="another nmt checkout to run the same way and compare against")
    parser.add_argument("--model", default="small", help="model preset of the measured runs (default small)")
    parser.add_argument("--out", default="outputs/bench", help="where data.json and data.md go (default outputs/bench)")
    args = parse_bench_args(parser, argv)
    if args.baseline is not None and not (Path(args.baseline) / "nmt" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline}: not an nmt checkout (no nmt/cli.py in it)")
    if min(args.pairs) < 1:
        parser.error(f"--pairs ({min(args.pairs)}) must be >= 1")
    for flag in ("work", "out"):
        if Path(getattr(args, flag)).exists() and not Path(getattr(args, flag)).is_dir():
            parser.error(f"--{flag} {getattr(args, flag)}: a file, not a folder")
    presets = Path(__file__).resolve().parents[1] / "conf" / "model"
    if not (presets / f"{args.model}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in presets.glob("*.yaml")))
        parser.error(f"--model {args.model}: no such preset ({known})")
    return args


def measure(args: argparse.Namespace) -> tuple[dict, list[list[str]]]:
    """Every run of every size and system: (results for the JSON, rows of the table). RuntimeError when a run
    fails, OSError when the work folder cannot be written."""
    work = Path(args.work).resolve()
    here = Path(__file__).resolve().parents[2]
    systems = ([("baseline", Path(args.baseline).resolve())] if args.baseline else []) + [("this", here)]
    results, rows = {"threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(), "runs": []}, []
    for pairs in args.pairs:
        corpus, measured = ensure_corpus(work, pairs), {}
        for system, source in systems:
            cache = work / f"cache_{pairs}_{system}"
            shutil.rmtree(cache, ignore_errors=True)
            for name in ("cold", "cached"):
                print(f"{pairs:,} pairs, {system}, {name} …", flush=True)
                run = run_once(source, corpus, cache, work / f"run_{pairs}_{system}_{name}", args.model)
                measured[system, name] = run
                results["runs"].append({"pairs": pairs, "system": system, "run": name, **run})
                rows.append(_row(pairs, f"{system}, {name}" if args.baseline else name, run))
        if args.baseline:
            rows += [_ratio_row(pairs, name, measured["this", name], measured["baseline", name])
                     for name in ("cold", "cached")]
    return results, rows


def main(argv: list[str]) -> int:
    try:
        args = parse(argv)
    except UsageError as error:
        print(f"nmt bench data: {error}", file=sys.stderr)
        return 2
    try:
        results, rows = measure(args)
        header = ["pairs", "run", *[f"{s} (time / peak)" for s in STAGES], "to first step", "peak memory"]
        markdown = markdown_table(header, rows)
        written = write_results(args.out, "data", results, markdown)
    except (RuntimeError, OSError) as error:
        print(f"nmt bench data: {first_line(error)}", file=sys.stderr)
        return 1
    print(markdown)
    print(f"wrote {written[0]} and {written[1]}; corpora, caches and run logs are under {Path(args.work).resolve()}")
    return 0
