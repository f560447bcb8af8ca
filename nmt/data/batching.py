"""Token-budget batches: bucketed by length, shuffled deterministically per (seed, epoch), one share per rank.

Training batches come from an endless iterable that tags each batch with its (epoch, index) position, so a
checkpoint records exactly which batch was consumed last and a resumed run continues with the next one.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.errors import plural


class EmptyEpochError(ValueError):
    """An epoch without a single batch: training could never take a step."""


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, rng: Optional[np.random.Generator]
) -> list[np.ndarray]:
    """Index arrays whose padded size (count × longest side, specials included) stays within ``max_tokens``.

    Sorting by length buckets similar lengths together; with ``rng`` ties are broken randomly and the batch order
    is shuffled, without it the order is by length (validation).
    """
    n = len(src_lens)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    longest = np.maximum(src_lens, tgt_lens)[order] + 1  # + eos / bos
    order = order[np.argsort(longest, kind="stable")]
    longest = np.sort(longest, kind="stable")
    batches, start = [], 0
    while start < n:
        # Sorted ascending, so a batch's longest member is its last: grow until count × last > budget.
        end = start + 1
        while end < n and (end + 1 - start) * longest[end] <= max_tokens:
            end += 1
        batches.append(order[start:end])
        start = end
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def shard(batches: list, rank: int, world_size: int) -> list:
    """This rank's disjoint share; every rank gets the same count (the remainder is dropped) so DDP stays in step."""
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def collate(src: list[list[int]], tgt: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-padded tensors: src + eos; decoder input bos + tgt; decoder output tgt + eos."""
    B = len(src)
    src_lengths = torch.tensor([len(s) + 1 for s in src])
    tgt_lengths = torch.tensor([len(t) + 1 for t in tgt])
    src_tokens = torch.full((B, int(src_lengths.max())), PAD_ID)
    tgt_in = torch.full((B, int(tgt_lengths.max())), PAD_ID)
    tgt_out = torch.full((B, int(tgt_lengths.max())), PAD_ID)
    for i, (s, t) in enumerate(zip(src, tgt)):
        src_tokens[i, : len(s) + 1] = torch.tensor(s + [EOS_ID])
        tgt_in[i, : len(t) + 1] = torch.tensor([BOS_ID] + t)
        tgt_out[i, : len(t) + 1] = torch.tensor(t + [EOS_ID])
    return {"src": src_tokens, "src_lengths": src_lengths, "tgt_in": tgt_in, "tgt_out": tgt_out}


def subword_lengths(ds, column: str) -> np.ndarray:
    """Lengths (rows,) of the subword list column ``column`` (``src_ids``, ``tgt_ids``) of an Arrow-backed dataset:
    its length column (``src_len``, ``tgt_len``), which encoding writes beside it, else Arrow's list lengths — never
    Python lists (turning 4.5M rows into lists only to count them took minutes and gigabytes). Through an index
    mapping (what ``select`` and ``filter`` leave) even the length column takes seconds per 500k rows to read, so
    batching takes the kept pairs' lengths from cleaning instead (nmt.data.encode.CleaningStats.lengths)."""
    length_column = column.removesuffix("_ids") + "_len"
    if length_column in ds.column_names:
        return ds.with_format("arrow")[length_column].to_numpy()
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")[column]).to_numpy()


class TrainBatches(IterableDataset):
    """Endless training batches from an in-memory (arrow) dataset with ``src_ids``/``tgt_ids`` columns; ``lengths``
    (src, tgt) are their subword counts if the caller has them (nmt.data.encode.CleaningStats.lengths)."""

    def __init__(self, ds, max_tokens: int, seed: int, rank: int = 0, world_size: int = 1,
                 lengths: Optional[tuple[np.ndarray, np.ndarray]] = None) -> None:
        self.ds = ds
        if lengths is None:
            lengths = subword_lengths(ds, "src_ids"), subword_lengths(ds, "tgt_ids")
        self.src_lens, self.tgt_lens = lengths
        self.max_tokens, self.seed, self.rank, self.world_size = max_tokens, seed, rank, world_size
        self.start = (0, 0)  # (epoch, index) of the first batch to yield

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        return shard(token_batches(self.src_lens, self.tgt_lens, self.max_tokens, rng), self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict]:
        epoch, index = self.start
        while True:
            batches = self.epoch_batches(epoch)
            if not batches:  # would otherwise loop forever without yielding
                raise EmptyEpochError(
                    f"no training batches for rank {self.rank} of {self.world_size}: "
                    f"{plural(len(self.src_lens), 'pair makes', 'pairs make')} "
                    "fewer batches than ranks; use more data, a smaller data.max_tokens or fewer devices"
                )
            for i in range(index, len(batches)):
                rows = self.ds[batches[i].tolist()]
                batch = collate(rows["src_ids"], rows["tgt_ids"])
                batch["position"] = torch.tensor([epoch, i])
                yield batch
            epoch, index = epoch + 1, 0

    def resume_after(self, epoch: int, index: int) -> None:
        self.start = (epoch, index + 1)
