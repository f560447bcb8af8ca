"""The nmt→CTranslate2 systems of ``nmt bench translate``: nmt's own model exported with ``nmt export ct2`` (float32
and int8), decoded by CTranslate2 in a process of its own, as the Marian conversion is (nmt/bench/peers.py).

Two uses: forced lengths on the random model (raw ``translate_batch`` with min = max = ``--length`` tokens, as for
Marian's CTranslate2), and natural lengths on trained models (``--trained``), where the exported models decode with
``nmt translate --engine ct2``'s search (nmt/ct2/search.py) and their outputs are compared with nmt's.
KV-cache bytes: nmt's measured from its cache tensors (nmt.model.kv_cache_bytes), CTranslate2's computed from its cache
layout (nmt.ct2.spec.kv_cache_bytes), for one sentence of 20 source and 20 target subwords.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Optional

import torch

from nmt.bench.common import WorkerProcess, ct2_forced_tokens
from nmt.errors import first_line

FORMATS = {"nmt→CT2 float32": "float32", "nmt→CT2 int8": "int8"}
REFERENCE = {"source_subwords": 20, "target_subwords": 20}  # as nmt report's reference sentence


def _worker(conn, folders: dict[str, str], threads: int) -> None:
    """Load each exported folder, then decode batches on request: ("batches", key, id lists) stores a set;
    ("forced", name, key, beam, length) answers the new-token count; ("natural", name, key, beam) answers the
    count and the 1-best token ids."""
    from nmt.config import DecodeConfig
    from nmt.ct2.translator import CT2Translator

    try:
        translators = {name: CT2Translator.load(folder, threads=threads) for name, folder in folders.items()}
    except Exception as error:  # reported in the table's columns, as a missing package is
        conn.send(f"loading failed: {first_line(error)}")
        return
    conn.send("ready")
    sets: dict[int, list] = {}
    while (request := conn.recv()) is not None:
        if request[0] == "batches":
            sets[request[1]] = request[2]
            continue
        kind, name, key, beam, length = request
        translator = translators[name]
        if kind == "forced":
            pieces = translator.search.pieces
            batches = [[[pieces[i] for i in s] for s in batch] for batch in sets[key]]
            conn.send(ct2_forced_tokens(translator.search.translator, batches, beam, length))
        else:
            tokens = [h[0].tokens for batch in sets[key] for h in translator.decode_ids(batch, DecodeConfig(beam=beam),
                                                                                          scores=False)]
            conn.send((sum(len(t) + 1 for t in tokens), tokens))


class ExportedWorker(WorkerProcess):
    """The worker process holding the exported folders; ``close`` ends it."""

    def __init__(self, folders: dict[str, Path]) -> None:
        super().__init__(_worker, ({k: str(v) for k, v in folders.items()}, torch.get_num_threads()))
        self.n_sets = 0

    def send_batches(self, batches: list[list[list[int]]]) -> int:
        """Send source id batches (sentences of ids, no eos) to keep in the worker; returns the key naming them."""
        key, self.n_sets = self.n_sets, self.n_sets + 1
        self.conn.send(("batches", key, batches))
        return key


def start_exported(model, tokenizer, workdir: Path) -> tuple[Optional[ExportedWorker], Optional[str]]:
    """Export ``model`` as float32 and int8 CTranslate2 folders under ``workdir`` and start their worker; or None
    and the reason for the table (not installed, or the one-line refusal of a model CTranslate2 cannot express)."""
    if importlib.util.find_spec("ctranslate2") is None:
        return None, "not installed"
    from nmt.ct2.export import export_ct2
    from nmt.ct2.spec import ExportError

    folders = {}
    try:
        for name, quantization in FORMATS.items():
            folders[name] = export_ct2(model, tokenizer, workdir / quantization, quantization)
    except ExportError as error:
        return None, "not exportable: " + ", ".join(error.fields)
    worker = ExportedWorker(folders)
    if worker.status != "ready":
        worker.close()
        return None, worker.status
    return worker, None


def forced_system(worker: ExportedWorker, name: str, ids: list[list[int]], length: int) -> Callable[[int], int]:
    """A runner decoding one batch of source ids (without eos) to exactly ``length`` new tokens."""
    key = worker.send_batches([ids])

    def run(beam: int) -> int:
        worker.conn.send(("forced", name, key, beam, length))
        return worker.conn.recv()

    return run


def natural_system(worker: ExportedWorker, name: str, ids: list[list[int]], outputs: dict, index: int):
    """A runner decoding one batch with nmt's search settings; keeps its 1-best ids in ``outputs[index]``."""
    key = worker.send_batches([ids])

    def run(beam: int) -> int:
        worker.conn.send(("natural", name, key, beam, 0))
        generated, outputs[index] = worker.conn.recv()
        return generated

    return run


def nmt_natural_system(model, batch, outputs: dict, index: int) -> Callable[[int], int]:
    """nmt's own decoder on one batch (nmt.bench.common.Batch) with its default search settings."""
    from nmt.config import DecodeConfig
    from nmt.decoding.search import decode

    def run(beam: int) -> int:
        with torch.inference_mode():
            hyps = decode(model, batch.src, batch.lengths, DecodeConfig(beam=beam), scores=False)
        outputs[index] = [h[0].tokens for h in hyps]
        return sum(len(t) + 1 for t in outputs[index])

    return run


def kv_bytes(model, beam: int) -> tuple[int, int]:
    """(nmt's measured, CTranslate2's) KV-cache bytes of the reference sentence at ``beam`` beams."""
    from nmt.ct2.spec import kv_cache_bytes as ct2_bytes
    from nmt.model import kv_cache_bytes

    src = [4] * (REFERENCE["source_subwords"] - 1)
    ours = kv_cache_bytes(model, src, REFERENCE["target_subwords"], beam)["total"]
    return ours, ct2_bytes(model.cfg, REFERENCE["source_subwords"], REFERENCE["target_subwords"], beam)["total"]
