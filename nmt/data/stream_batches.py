"""Endless training batches from a streamed corpus, a buffer (chunk) of pairs at a time, that resume in place.

Each chunk of ``buffer`` pairs is bucketed and shuffled by (seed, epoch, chunk). Under DDP either every rank reads
the whole stream and keeps every world_size-th batch of each chunk (``own_rows=False``: the ranks stay in step), or
the stream already holds only this rank's rows (``datasets.distributed.split_dataset_by_node``, ``own_rows=True``)
and every batch is kept: the ranks then make different numbers of batches per pass, which is harmless because the
iteration is endless — a rank that finishes its pass first starts its next pass, so no rank runs out of batches and
every rank takes the same number of optimizer steps (training ends at trainer.max_steps); the ranks' epoch numbers
may differ by one.

The pairs within a shard are never shuffled, but datasets reorders the shards of a local stream every pass after
the first (``set_epoch(epoch)`` seeds it; under DDP before dealing them to the ranks), so a pass is read in that
pass's shard order, and a resume restores it by setting the same epoch.

Resuming (``load_state``) yields the chunk's not-yet-consumed batches saved in the checkpoint, then reads the rest of
that pass in one of two ways, so no consumed pair is batched or encoded again:

- **seeking** (local uncompressed text shards, `nmt.data.load.seek_refusal` None, files unchanged since the
  checkpoint: `nmt.data.load.seek_check`): each chunk records where its last pair ends (its ``at`` column: shard,
  line, byte offsets just after it in both files; pairs cleaning dropped before it were read too) and the shards
  the pass read before that one. The rest of the pass comes from a stream built like the saved one and set to its
  pass (`nmt.data.load.stream_from`): the shards read before are skipped unopened, the saved one is opened at those
  offsets (``seek``), the others follow in the pass's order. No consumed line is read again, except the lines of a
  shard cleaning dropped entirely before the saved pair (no pair of it reached the batches to record it), read
  again and dropped again.
- **datasets' state** (everything else: Hub streams, jsonl/parquet/tsv, ``.gz`` shards that cannot seek without
  decompressing, data.max_train_examples, a shard count the ranks do not divide, a shard file changed since the
  checkpoint, and checkpoints written before positions were saved): the stream's own state
  (``datasets.IterableDataset.load_state_dict``) as it was after the chunk. Its file generator restarts the
  current *shard* and skips (reads, without encoding) the lines before the position; more, smaller shards bound
  that. The encoding map is per pair, so nothing consumed is encoded again (datasets resumes a batched map at the
  start of its batch).

Either way the resumed stream serves the rest of that pass only; the next pass is a whole one, read from the saved
stream as usual. At the end of each pass the cleaning counts (``cleaning``) of that pass are logged.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset

from nmt.data.batching import EmptyEpochError, collate, shard, token_batches
from nmt.data.load import AT

Pair = tuple[list[int], list[int]]
# (pairs, stream state or None, ``at`` of the last pair or None, shards read before its shard or None)
Chunk = tuple[list[Pair], Optional[dict], Optional[list[int]], Optional[list[int]]]

log = logging.getLogger(__name__)


class StreamBatches(IterableDataset):
    """Batches of ``stream`` (an iterable of ``{"src_ids", "tgt_ids"}``, and ``at`` when it has it), each tagged
    ``position`` = [epoch, index]; ``max_tokens`` is the padded-token budget of a batch, ``buffer`` the pairs
    bucketed together; ``cleaning`` (a CleaningStats the stream's filters count into) is logged once per pass;
    ``stamp(shard)``: what a checkpoint saves to check a shard's files against before seeking them (none saved
    when None)."""

    def __init__(self, stream, max_tokens: int, buffer: int, seed: int, rank: int = 0, world_size: int = 1,
                 own_rows: bool = False, cleaning=None, counts_all: bool = False,
                 stamp: Optional[Callable[[int], list[int]]] = None) -> None:
        self.stream, self.max_tokens, self.buffer, self.seed = stream, max_tokens, buffer, seed
        self.rank, self.world_size, self.own_rows, self.cleaning = rank, world_size, own_rows, cleaning
        # Whether ``cleaning`` counts the whole stream, not this rank's rows: each rank reads all of it and keeps its
        # share after cleaning (own_rows False; or split_dataset_by_node keeping every world-th row, ``counts_all``).
        self.counts_all = world_size > 1 and (counts_all or not own_rows)
        self.stamp = stamp  # shard index -> what a seeking resume checks its files against (nmt.data.load.shard_stamp)
        self.start = (0, 0)  # (epoch, index) of the first batch to yield, when replaying
        self.resume: Optional[dict[str, Any]] = None  # a state from `state_at`, to continue from
        self.rest: Optional[Iterable] = None  # the resumed pass's stream, rebuilt at the saved ``at`` (seeking)
        # The last chunks made: (epoch, first index, next chunk, stream state after the chunk or None, ``at`` of its
        # last pair or None, batches, the shards the pass read before that pair's or None). Lightning fetches a
        # batch ahead, so the consumed batch may lie in the chunk before the newest.
        self._recent: deque = deque(maxlen=3)

    def _mine(self, batches: list) -> list:
        return batches if self.own_rows else shard(batches, self.rank, self.world_size)

    def _chunks(self, stream, seen: Optional[list[int]]) -> Iterator[Chunk]:
        """(pairs, the stream's state just after the chunk's last pair, that pair's ``at``, the shards the pass read
        before that pair's) for each chunk of ``stream``. ``seen``: the shards this pass has read so far, in order
        (grown here; None when unknown: then no ``at`` is kept, as a seeking resume would read those shards again).
        Only ``self.stream``'s state is kept: a rebuilt stream's would not load into it."""
        saves = stream is self.stream and hasattr(stream, "state_dict")
        pairs, last = [], {}

        def where() -> tuple[Optional[list[int]], Optional[list[int]]]:
            at = _at(last) if seen is not None else None
            return (at, seen[:-1]) if at is not None else (None, None)

        for last in stream:
            pairs.append((last["src_ids"], last["tgt_ids"]))
            if seen is not None and AT in last and (not seen or seen[-1] != last[AT][0]):
                seen.append(int(last[AT][0]))  # a shard is read in one go: its first pair
            if len(pairs) == self.buffer:
                yield pairs, stream.state_dict() if saves else None, *where()
                pairs = []
        if pairs:
            yield pairs, stream.state_dict() if saves else None, *where()

    def _epoch(self, epoch: int, chunk: int = 0, index: int = 0, stream=None,
               seen: Optional[list[int]] = None) -> Iterator[dict]:
        """The batches of one pass from chunk number ``chunk`` on, read from ``stream`` (default ``self.stream``)
        already positioned there, after the shards ``seen`` (in the order read; None when unknown); then the pass's
        cleaning counts are logged."""
        resumed = stream is not None or chunk > 0
        seen = list(seen) if seen is not None else None
        chunks = self._chunks(self.stream if stream is None else stream, seen)
        for chunk, (pairs, state, at, done) in enumerate(chunks, start=chunk):
            lens = np.array([[len(s), len(t)] for s, t in pairs])
            rng = np.random.default_rng([self.seed, epoch, chunk])
            batches = [[pairs[j] for j in rows] for rows in
                       self._mine(token_batches(lens[:, 0], lens[:, 1], self.max_tokens, rng))]
            self._recent.append((epoch, index, chunk + 1, state, at, batches, done))
            for rows in batches:
                yield _tagged(rows, epoch, index)
                index += 1
        self._log_cleaning(epoch, resumed)

    def _log_cleaning(self, epoch: int, resumed: bool) -> None:
        """Log what cleaning dropped in pass ``epoch`` (since the resume when ``resumed``), and start counting
        again."""
        if self.cleaning is None:
            return
        who = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
        if self.counts_all:
            who = f" (rank {self.rank} of {self.world_size}, counting the whole stream: every rank reads it all)"
        since = ", counted from the resume" if resumed else ""
        log.info("data: streaming pass %d%s%s: %s", epoch, who, since, self.cleaning)
        self.cleaning.reset()

    def _resumed(self, resume: dict[str, Any], rest: Optional[Iterable]) -> Iterator[dict]:
        """The saved chunk's pending batches, then the rest of that pass: from ``rest`` (the stream rebuilt at the
        saved ``at``) when given, else from the saved stream state."""
        epoch, index, chunk = (int(v) for v in resume["position"].tolist())
        pending, at, done = _unpack(resume["pending"]), resume.get("at"), resume.get("done")
        at, done = (at.tolist(), done.tolist()) if at is not None and done is not None else (None, None)
        # A checkpoint may come before the saved batches run out: keep them among the recent chunks.
        self._recent.append((epoch, index, chunk, resume["stream"], at, pending, done))
        for rows in pending:
            yield _tagged(rows, epoch, index)
            index += 1
        seen = [*done, at[0]] if at is not None else None
        if rest is not None:
            if hasattr(rest, "set_epoch"):
                rest.set_epoch(epoch)  # datasets' order of the shards in this pass, as the saved stream had it
            yield from self._epoch(epoch, chunk, index, rest, seen)
        elif resume["stream"] is not None:
            self._set_epoch(epoch)
            self.stream.load_state_dict(resume["stream"])  # applies to this pass (epoch) only
            yield from self._epoch(epoch, chunk, index, seen=seen)

    def _set_epoch(self, epoch: int) -> None:
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        epoch, skip = self.start
        resume, rest = self.resume, self.rest
        self.resume = self.rest = None  # once: a second iterator starts afresh
        if resume is not None:
            yield from self._resumed(resume, rest)
            epoch, skip = int(resume["position"][0]) + 1, 0
        while True:
            self._set_epoch(epoch)
            produced = 0
            for batch in self._epoch(epoch, seen=[]):
                produced += 1
                if int(batch["position"][1]) >= skip:
                    yield batch
            if not produced:  # would otherwise loop forever without yielding
                raise EmptyEpochError(
                    f"no training batches for rank {self.rank} of {self.world_size} in a whole pass over the stream "
                    "(every pair filtered, or fewer batches than ranks)"
                )
            epoch, skip = epoch + 1, 0

    def resume_after(self, epoch: int, index: int) -> None:
        """Resume by replaying: re-read the stream from the start of ``epoch`` and skip through batch ``index``
        (checkpoints without a stream state)."""
        self.start = (epoch, index + 1)

    def state_at(self, epoch: int, index: int) -> dict[str, Any]:
        """What a checkpoint holds to continue after batch (``epoch``, ``index``) without re-batching a consumed
        pair: ``position`` (epoch, next index, next chunk) as a tensor, ``stream`` (the datasets state after that
        batch's chunk: nested dicts of ints and strings; None in a pass read from a rebuilt stream), ``pending``
        (the chunk's later batches' token ids, as int32 tensors; at most ``buffer`` pairs) and, when the stream
        has positions and ``stamp`` is set, int64 tensors ``at``: where the chunk's last pair ends (shard, line,
        byte offsets), ``done``: the shards the pass read before that one, and ``files``: ``stamp(shard)``.
        KeyError when that batch is no longer among the recent chunks."""
        for chunk_epoch, first, next_chunk, state, at, batches, done in reversed(self._recent):
            if chunk_epoch == epoch and first <= index < first + len(batches):
                pending = batches[index - first + 1:]
                saved = {"position": torch.tensor([epoch, index + 1, next_chunk]), "stream": state,
                         "pending": _pack(pending)}
                if at is not None and self.stamp is not None:
                    saved["at"] = torch.tensor(at, dtype=torch.int64)
                    saved["done"] = torch.tensor(done, dtype=torch.int64)
                    saved["files"] = torch.tensor(self.stamp(at[0]), dtype=torch.int64)
                return saved
        raise KeyError(f"batch {index} of epoch {epoch} is not in the last {len(self._recent)} chunks")

    def load_state(self, state: dict[str, Any], rest: Optional[Iterable] = None) -> None:
        """Continue from a `state_at` state (as saved in a checkpoint); ``rest``: the rest of its pass, rebuilt at
        ``state["at"]`` (nmt.data.load.stream_from), or None to load ``state["stream"]`` into the stream."""
        self.resume, self.rest = state, rest


def _at(pair: dict) -> Optional[list[int]]:
    """Where a streamed pair ends in its files (nmt.data.load.AT), or None when its stream does not say (Hub, jsonl,
    parquet, tsv)."""
    return [int(v) for v in pair[AT]] if AT in pair else None


def _tagged(rows: list[Pair], epoch: int, index: int) -> dict:
    batch = collate([s for s, _ in rows], [t for _, t in rows])
    batch["position"] = torch.tensor([epoch, index])
    return batch


def _pack(batches: list[list[Pair]]) -> dict[str, torch.Tensor]:
    """Batches of pairs as flat int32 tensors: ids of every source / target and their lengths, and batch sizes."""
    pairs = [pair for rows in batches for pair in rows]

    def flat(side: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [token for pair in pairs for token in pair[side]]
        return torch.tensor(ids, dtype=torch.int32), torch.tensor([len(p[side]) for p in pairs], dtype=torch.int32)

    (src, src_lens), (tgt, tgt_lens) = flat(0), flat(1)
    sizes = torch.tensor([len(rows) for rows in batches], dtype=torch.int32)
    return {"src": src, "src_lens": src_lens, "tgt": tgt, "tgt_lens": tgt_lens, "sizes": sizes}


def _unpack(packed: dict[str, torch.Tensor]) -> list[list[Pair]]:
    """The batches `_pack` packed."""
    def split(ids: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
        return [part.tolist() for part in torch.split(ids.long(), lens.tolist())] if len(lens) else []

    src, tgt = split(packed["src"], packed["src_lens"]), split(packed["tgt"], packed["tgt_lens"])
    pairs, batches, start = list(zip(src, tgt)), [], 0
    for size in packed["sizes"].tolist():
        batches.append([(list(s), list(t)) for s, t in pairs[start:start + size]])
        start += size
    return batches
