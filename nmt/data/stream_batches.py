"""Endless training batches from a streamed corpus, a buffer (chunk) of pairs at a time, that resume in place.

Each chunk of ``buffer`` pairs is bucketed and shuffled by (seed, epoch, chunk). Under DDP either every rank reads
the whole stream and keeps every world_size-th batch of each chunk (``own_rows=False``: the ranks stay in step), or
the stream already holds only this rank's rows (``datasets.distributed.split_dataset_by_node``, ``own_rows=True``)
and every batch is kept: the ranks then make different numbers of batches per pass, which is harmless because the
iteration is endless — a rank that finishes its pass first starts its next pass, so no rank runs out of batches and
every rank takes the same number of optimizer steps (training ends at trainer.max_steps); the ranks' epoch numbers
may differ by one.

Resuming (``load_state``) yields the chunk's not-yet-consumed batches saved in the checkpoint, then loads the
stream's own state (``datasets.IterableDataset.load_state_dict``) as it was after that chunk, so no consumed pair
is batched or encoded again (the encoding map is per pair: datasets resumes a batched map at the start of its batch).
What datasets still re-reads is its file generator's: it restarts the current *shard* and skips (reads, without
encoding) the lines before the position; more, smaller shards bound it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset

from nmt.data.batching import EmptyEpochError, collate, shard, token_batches

Pair = tuple[list[int], list[int]]


class StreamBatches(IterableDataset):
    """Batches of ``stream`` (an iterable of ``{"src_ids", "tgt_ids"}``), each tagged ``position`` = [epoch, index];
    ``max_tokens`` is the padded-token budget of a batch, ``buffer`` the pairs bucketed together."""

    def __init__(self, stream, max_tokens: int, buffer: int, seed: int, rank: int = 0, world_size: int = 1,
                 own_rows: bool = False) -> None:
        self.stream, self.max_tokens, self.buffer, self.seed = stream, max_tokens, buffer, seed
        self.rank, self.world_size, self.own_rows = rank, world_size, own_rows
        self.start = (0, 0)  # (epoch, index) of the first batch to yield, when replaying
        self.resume: Optional[dict[str, Any]] = None  # a state from `state_at`, to continue from
        # The last chunks made: (epoch, first index, stream state after the chunk or None, batches). Lightning
        # fetches a batch ahead, so the consumed batch may lie in the chunk before the newest.
        self._recent: deque = deque(maxlen=3)

    def _mine(self, batches: list) -> list:
        return batches if self.own_rows else shard(batches, self.rank, self.world_size)

    def _chunks(self) -> Iterator[tuple[list[Pair], Optional[dict]]]:
        """(pairs, the stream's state just after the chunk's last pair) for each chunk of the stream."""
        saves = hasattr(self.stream, "state_dict")
        pairs = []
        for pair in self.stream:
            pairs.append((pair["src_ids"], pair["tgt_ids"]))
            if len(pairs) == self.buffer:
                yield pairs, self.stream.state_dict() if saves else None
                pairs = []
        if pairs:
            yield pairs, self.stream.state_dict() if saves else None

    def _epoch(self, epoch: int, chunk: int = 0, index: int = 0) -> Iterator[dict]:
        """The batches of one pass from chunk number ``chunk`` (the stream already positioned there) on."""
        for chunk, (pairs, state) in enumerate(self._chunks(), start=chunk):
            lens = np.array([[len(s), len(t)] for s, t in pairs])
            rng = np.random.default_rng([self.seed, epoch, chunk])
            batches = [[pairs[j] for j in rows] for rows in
                       self._mine(token_batches(lens[:, 0], lens[:, 1], self.max_tokens, rng))]
            self._recent.append((epoch, index, chunk + 1, state, batches))
            for rows in batches:
                yield _tagged(rows, epoch, index)
                index += 1

    def _resumed(self, resume: dict[str, Any]) -> Iterator[dict]:
        """The saved chunk's pending batches, then the rest of that pass from the saved stream state."""
        epoch, index, chunk = (int(v) for v in resume["position"].tolist())
        pending = _unpack(resume["pending"])
        self._recent.append((epoch, index, chunk, resume["stream"], pending))  # a checkpoint may come before its end
        for rows in pending:
            yield _tagged(rows, epoch, index)
            index += 1
        if resume["stream"] is not None:
            self._set_epoch(epoch)
            self.stream.load_state_dict(resume["stream"])  # applies to this pass (epoch) only
            yield from self._epoch(epoch, chunk, index)

    def _set_epoch(self, epoch: int) -> None:
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        epoch, skip = self.start
        resume, self.resume = self.resume, None  # once: a second iterator starts afresh
        if resume is not None:
            yield from self._resumed(resume)
            epoch, skip = int(resume["position"][0]) + 1, 0
        while True:
            self._set_epoch(epoch)
            produced = 0
            for batch in self._epoch(epoch):
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
        batch's chunk: nested dicts of ints and strings) and ``pending`` (the chunk's later batches' token ids, as
        int32 tensors; at most ``buffer`` pairs). KeyError when that batch is no longer among the recent chunks."""
        for chunk_epoch, first, next_chunk, state, batches in reversed(self._recent):
            if chunk_epoch == epoch and first <= index < first + len(batches):
                pending = batches[index - first + 1:]
                return {"position": torch.tensor([epoch, index + 1, next_chunk]), "stream": state,
                        "pending": _pack(pending)}
        raise KeyError(f"batch {index} of epoch {epoch} is not in the last {len(self._recent)} chunks")

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a `state_at` state (as saved in a checkpoint)."""
        self.resume = state


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
