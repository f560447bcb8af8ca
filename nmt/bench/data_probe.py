"""The child process of ``nmt bench data``: ``nmt train`` with its data stages timed.

    python data_probe.py STAGES_FILE train OVERRIDES…

Runs ``nmt.cli.main(["train", OVERRIDES…])`` after wrapping the functions that make up each data stage (``STAGES``):
every call appends one JSON line ``{"stage", "start", "end", "nested"}`` (seconds since the epoch; ``nested``: the
time spent in stages it called) to STAGES_FILE. The end of the first ``training_step`` call (forward pass and loss) is
the stage ``first step``, after which the process exits at once. Wrapping names instead of editing the pipeline lets
the same probe time another checkout of nmt put first on PYTHONPATH (``nmt bench data --baseline DIR``): a name that
checkout lacks is skipped, and its time falls to the stage that calls it. This file imports nothing from nmt at module
level for that reason.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time

# (module, name, stage): functions, or "Class.method". The data module imports load_split & co. by name, so they are
# wrapped where it looks them up.
STAGES = [
    ("nmt.data.datamodule", "load_split", "read"),
    ("nmt.data.datamodule", "load_or_train", "sentencepiece"),
    ("nmt.data.encode", "drop_empty", "clean"),
    ("nmt.data.datamodule", "clean_and_encode", "encode"),
    ("nmt.data.datamodule", "encode_eval", "validation set"),
    ("nmt.data.batching", "TrainBatches.__init__", "batching"),
    ("nmt.data.batching", "TrainBatches.epoch_batches", "batching"),
]
FIRST_STEP = ("nmt.training.lit_module", "TranslationModule.training_step")


class Recorder:
    """Appends stage records to a JSON-lines file; nested stages' time is subtracted from their caller's."""

    def __init__(self, path: str) -> None:
        self.path, self.stack = path, []

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    def wrap(self, function, stage: str):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self.stack.append(0.0)  # time spent in nested stages
            start = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                end = time.time()
                nested = self.stack.pop()
                if self.stack:
                    self.stack[-1] += end - start
                self.write({"stage": stage, "start": start, "end": end, "nested": nested})
        return timed

    def first_step(self, function):
        done = []

        @functools.wraps(function)
        def step(*args, **kwargs):
            result = function(*args, **kwargs)
            if not done:
                done.append(True)
                self.write({"stage": "first step", "start": time.time(), "end": time.time(), "nested": 0.0})
                os._exit(0)  # what comes after the first step (export, teardown) is not measured: skip it
            return result
        return step


def _owner(module_name: str, name: str):
    """(object holding the attribute, attribute name), or None where this checkout lacks it."""
    try:
        owner = importlib.import_module(module_name)
    except ImportError:
        return None
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part, None)
    return (owner, attribute) if owner is not None and hasattr(owner, attribute) else None


def install(recorder: Recorder) -> None:
    for module_name, name, stage in STAGES:
        found = _owner(module_name, name)
        if found is not None:
            setattr(found[0], found[1], recorder.wrap(getattr(*found), stage))
    found = _owner(*FIRST_STEP)
    if found is not None:
        setattr(found[0], found[1], recorder.first_step(getattr(*found)))


def main(argv: list[str]) -> int:
    recorder = Recorder(argv[0])
    recorder.write({"stage": "python started", "start": time.time(), "end": time.time(), "nested": 0.0})
    install(recorder)
    from nmt.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
