"""Token-budget batching: budget, coverage, determinism, rank shards, exact resumption."""

import itertools

import datasets
import numpy as np
import pytest

from nmt.data.batching import TrainBatches, collate, shard, token_batches
from nmt.data.stream_batches import StreamBatches
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def lengths(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 60, n), rng.integers(1, 60, n)


def test_batches_respect_the_budget_and_cover_every_pair_once():
    src, tgt = lengths()
    batches = token_batches(src, tgt, 400, np.random.default_rng(0))
    for batch in batches:
        assert len(batch) * (max(src[batch].max(), tgt[batch].max()) + 1) <= 400
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(src)))


def test_deterministic_for_a_seed_and_reshuffled_per_epoch():
    src, tgt = lengths()
    run = lambda seed: [b.tolist() for b in token_batches(src, tgt, 400, np.random.default_rng(seed))]  # noqa: E731
    assert run([1, 0]) == run([1, 0])
    assert run([1, 0]) != run([1, 1])
    assert run([1, 0]) != run([2, 0])


def test_rank_shards_are_disjoint_and_equal_in_count():
    batches = [np.array([i]) for i in range(11)]
    shards = [shard(batches, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    seen = [int(b[0]) for s in shards for b in s]
    assert len(set(seen)) == len(seen) == 9


def test_collate_adds_specials_and_pads():
    batch = collate([[5, 6], [7]], [[8], [9, 10, 11]])
    assert batch["src"].tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch["src_lengths"].tolist() == [3, 2]
    assert batch["tgt_in"].tolist() == [[BOS_ID, 8, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert batch["tgt_out"].tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [9, 10, 11, EOS_ID]]


def _pairs(n=300):
    rng = np.random.default_rng(3)
    return [
        {"src_ids": rng.integers(4, 50, rng.integers(1, 30)).tolist(),
         "tgt_ids": rng.integers(4, 50, rng.integers(1, 30)).tolist()}
        for _ in range(n)
    ]


def _key(batch):
    return (tuple(batch["position"].tolist()), tuple(batch["src"].flatten().tolist()))


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_resuming_after_a_position_continues_exactly(kind):
    pairs = _pairs()
    make = {
        "memory": lambda: TrainBatches(datasets.Dataset.from_list(pairs), 200, seed=7),
        "stream": lambda: StreamBatches(datasets.Dataset.from_list(pairs).to_iterable_dataset(), 200, 64, seed=7),
    }[kind]
    uninterrupted = [_key(b) for b in itertools.islice(iter(make()), 40)]  # spans more than one epoch
    positions = [key[0] for key in uninterrupted]
    assert positions[0] == (0, 0) and any(p[0] == 1 for p in positions)
    for stop in (5, 30):
        resumed = make()
        resumed.resume_after(*positions[stop])
        assert [_key(b) for b in itertools.islice(iter(resumed), 40 - stop - 1)] == uninterrupted[stop + 1 :]


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_ranks_see_disjoint_batches(kind):
    pairs = [{"src_ids": [i + 4] * (1 + i % 7), "tgt_ids": [5] * (1 + i % 5)} for i in range(200)]

    def rank_batches(rank):
        if kind == "memory":
            batches = TrainBatches(datasets.Dataset.from_list(pairs), 60, seed=1, rank=rank, world_size=2)
        else:
            stream = datasets.Dataset.from_list(pairs).to_iterable_dataset()
            batches = StreamBatches(stream, 60, 100, seed=1, rank=rank, world_size=2)
        epoch = [b for b in itertools.takewhile(lambda b: int(b["position"][0]) == 0, iter(batches))]
        return {int(t) for b in epoch for t in b["src"][:, 0].tolist()}

    first, second = rank_batches(0), rank_batches(1)
    assert first and second and not first & second


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_an_epoch_without_batches_is_an_error_not_a_hang(kind):
    from nmt.data.batching import EmptyEpochError

    pairs = _pairs(3)
    if kind == "memory":
        batches = TrainBatches(datasets.Dataset.from_list(pairs), 200, seed=0, rank=5, world_size=8)
    else:
        batches = StreamBatches(datasets.Dataset.from_list(pairs).to_iterable_dataset(), 200, 64, seed=0,
                                rank=5, world_size=8)
    with pytest.raises(EmptyEpochError, match="no training batches for rank 5 of 8"):
        next(iter(batches))
