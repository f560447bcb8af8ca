"""Streaming that scales out (issue 29): a corpus in shard files, each DDP rank reading its own shards, and a
streaming run that resumes in place from the state in its checkpoint."""

import io
import itertools
import logging
import os
import socket
from types import SimpleNamespace

import pytest
import torch

import nmt.data.load as load
from nmt.config.train import DataConfig
from nmt.data.datamodule import TranslationData
from nmt.data.encode import clean_and_encode
from nmt.data.load import DataError, load_split
from nmt.data.stream_batches import StreamBatches
from nmt.data.synthetic import SyntheticCorpus, write_corpus

OFFSET = 4  # char ids start past the special ids (pad, unk, bos, eos)
READER = load._zip_shards


class CharTokenizer:
    """One id per character, so a batch decodes back to its exact text; ``encoded`` records every text it encoded."""

    def __init__(self):
        self.encoded = []

    def encode(self, texts):
        self.encoded += texts
        return [[ord(c) + OFFSET for c in text] for text in texts]


def config(path, **kwargs):
    values = dict(path=str(path), cache_dir=str(path / "cache"), splits={"train": "train.*", "valid": "valid",
                  "test": None}, max_len=1000, max_tokens=4000, max_ratio=100.0, streaming=True, stream_buffer=100)
    values.update(kwargs)
    return DataConfig(**values)


def corpus(path, shards, pairs=800):
    write_corpus(path, SyntheticCorpus(pairs=pairs, valid=10, test=10, seed=1, shards=shards))
    return path


def decoded(batch):
    """The (src, tgt) texts of a batch."""
    def text(ids, n):
        return "".join(chr(i - OFFSET) for i in ids[: n - 1].tolist())  # n counts the eos

    return [(text(s, int(n)), text(t, int(m))) for s, n, t, m in
            zip(batch["src"], batch["src_lengths"], batch["tgt_out"], batch["tgt_in"].ne(0).sum(1))]


def counting_reader(monkeypatch, read):
    """Record in ``read`` every pair the file reader yields (what the stream reads from disk)."""
    def reader(shards, resume=None):
        for pair in READER(shards, resume):
            read.append((pair["src"], pair["tgt"]))
            yield pair

    monkeypatch.setattr(load, "_zip_shards", reader)


def test_a_glob_names_the_shards_and_they_pair_up(tmp_path):
    corpus(tmp_path, shards=4)
    stream = load_split(config(tmp_path), "train", streaming=True)
    assert stream.n_shards == 4
    whole = corpus(tmp_path / "whole", shards=1)
    assert [(p["src"], p["tgt"]) for p in stream] == \
        [(p["src"], p["tgt"]) for p in load_split(config(whole, splits={"train": "train", "valid": "valid"}),
                                                    "train", streaming=True)]
    in_memory = load_split(config(tmp_path, streaming=False), "train")
    assert in_memory.num_rows == 800
    (tmp_path / "train.00002.de").unlink()
    with pytest.raises(DataError, match=r"train\.00002\.en: no partner shard in the other language"):
        load_split(config(tmp_path), "train", streaming=True)
    with pytest.raises(DataError, match=r"train\.x\*\.en: no file matches"):
        load_split(config(tmp_path, splits={"train": "train.x*", "valid": "valid"}), "train", streaming=True)


def rank_pass(path, rank, world, monkeypatch):
    """(pairs this rank read, pairs it batched in one pass) from the datamodule's training batches."""
    read = []
    counting_reader(monkeypatch, read)
    cfg = config(path)
    data = TranslationData(cfg, seed=3)
    data.train_set, _ = clean_and_encode(load_split(cfg, "train", streaming=True), CharTokenizer(), cfg, "train",
                                         streaming=True)
    data._rank = lambda: (rank, world)
    batched, read_in_pass = [], 0
    for batch in data.train_batches():
        if int(batch["position"][0]) > 0:
            return read[:read_in_pass], batched
        batched += decoded(batch)
        read_in_pass = len(read)  # up to this pass's last batch: the encoding map reads ahead into the next


def _rank_worker(rank, world, port, path, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            read, batched = rank_pass(path, rank, world, monkeypatch)
        gathered = [None] * world
        dist.all_gather_object(gathered, (read, batched))  # over gloo, as a DDP run's ranks would
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_read_disjoint_shards_and_cover_the_corpus(tmp_path):
    path = corpus(tmp_path / "corpus", shards=4)
    out = tmp_path / "ranks.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_rank_worker, args=(2, free_port(), path, out), nprocs=2, join=True)
    (read0, batched0), (read1, batched1) = torch.load(out, weights_only=False)
    every = {(p["src"], p["tgt"]) for p in load_split(config(path), "train", streaming=True)}
    assert len(read0) + len(read1) == len(every) == 800  # each pair read once, by one rank
    assert not set(read0) & set(read1)
    assert sorted(batched0 + batched1) == sorted(every) and not set(batched0) & set(batched1)


def test_a_shard_count_that_does_not_divide_warns_and_stays_disjoint(tmp_path, monkeypatch, caplog):
    path = corpus(tmp_path, shards=3, pairs=300)
    (_, first), (read, second) = rank_pass(path, 0, 2, monkeypatch), rank_pass(path, 1, 2, monkeypatch)
    assert "3 shards, not a multiple of the 2 ranks" in caplog.text and "N·2 files" in caplog.text
    assert len(read) == 300  # every rank reads everything
    assert len(first) + len(second) == 300 and not set(first) & set(second)


def resumable_batches(path, read, monkeypatch, tokenizer=None):
    counting_reader(monkeypatch, read)
    cfg = config(path)
    stream, _ = clean_and_encode(load_split(cfg, "train", streaming=True), tokenizer or CharTokenizer(), cfg,
                                 "train", streaming=True)
    return StreamBatches(stream, cfg.max_tokens, cfg.stream_buffer, seed=5)


@pytest.mark.parametrize("consumed", [1, 23, 60])
def test_a_stream_resumed_from_datasets_state_continues_in_place(tmp_path, monkeypatch, consumed):
    """The path of streams that cannot seek (StreamBatches given no rebuilt stream): datasets' own state."""
    path = corpus(tmp_path, shards=4, pairs=4000)
    lines = [(p["src"], p["tgt"]) for p in load_split(config(path), "train", streaming=True)]
    read, total = [], 120
    uninterrupted = [decoded(b) for b in itertools.islice(iter(resumable_batches(path, read, monkeypatch)), total)]
    interrupted = resumable_batches(path, read, monkeypatch)
    batches = list(itertools.islice(iter(interrupted), consumed))
    state = interrupted.state_at(*batches[-1]["position"].tolist())
    buffer = io.BytesIO()
    torch.save(state, buffer)  # a checkpoint holds tensors and plain values only
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    read.clear()
    tokenizer = CharTokenizer()
    resumed = resumable_batches(path, read, monkeypatch, tokenizer)
    resumed.load_state(state)
    rest = [decoded(b) for b in itertools.islice(iter(resumed), total - consumed)]
    assert rest == uninterrupted[consumed:]  # (i) exactly the uninterrupted run's batches
    # (ii) The consumed chunk's later batches come from the checkpoint, so no consumed pair is batched again, nor
    # encoded: encoding resumes at the chunk's end (pair `end`). What datasets' own state replays is the file
    # reader's: it restarts the shard that pair is in (here 1,000 lines) and skips the lines before it, unencoded.
    end = int(state["position"][2]) * 100  # chunks of data.stream_buffer=100 pairs, none filtered here
    assert tokenizer.encoded[:2] == list(lines[end])
    assert tokenizer.encoded == [text for pair in lines[end: end + len(tokenizer.encoded) // 2] for text in pair]
    start = lines.index(read[0])
    assert start == end // 1000 * 1000  # the first line of the shard holding pair `end`
    assert read == lines[start: start + len(read)] and len(read) > end - start


def test_a_resumed_stream_can_be_checkpointed_again_before_its_saved_batches_run_out(tmp_path, monkeypatch):
    path = corpus(tmp_path, shards=2, pairs=600)
    uninterrupted = [decoded(b) for b in itertools.islice(iter(resumable_batches(path, [], monkeypatch)), 30)]
    first = resumable_batches(path, [], monkeypatch)
    position = list(itertools.islice(iter(first), 2))[-1]["position"]
    second = resumable_batches(path, [], monkeypatch)
    second.load_state(first.state_at(*position.tolist()))
    position = list(itertools.islice(iter(second), 1))[-1]["position"]  # still among the checkpoint's batches
    third = resumable_batches(path, [], monkeypatch)
    third.load_state(second.state_at(*position.tolist()))
    assert [decoded(b) for b in itertools.islice(iter(third), 27)] == uninterrupted[3:]


@pytest.mark.parametrize("states, expected_start, warning", [
    # Rank 1's batch had left the recent chunks: it replays to its own position, not rank 0's.
    ([{"position": torch.tensor([0, 3]), "state": None}, {"position": torch.tensor([1, 5]), "state": None}],
     (1, 6), "no stream state for rank 1"),
    # Saved by 3 ranks, resumed on 2: every rank replays to the position the checkpoint names.
    ([{"position": torch.tensor([0, 3]), "state": None}] * 3, (0, 8), "stream state is for 3 ranks, not 2"),
])
def test_a_resume_without_an_in_place_state_replays_to_each_ranks_position(tmp_path, caplog, states,
                                                                             expected_start, warning):
    path = corpus(tmp_path, shards=2, pairs=100)
    cfg = config(path)
    data = TranslationData(cfg, seed=3)
    data.train_set, _ = clean_and_encode(load_split(cfg, "train", streaming=True), CharTokenizer(), cfg, "train",
                                         streaming=True)
    data._rank = lambda: (1, 2)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(stream_states=states,
                                                                    data_position=torch.tensor([0, 7])))
    data.train_dataloader()
    assert data.stream_batches.start == expected_start and data.stream_batches.resume is None
    assert warning in caplog.text


# -- through the datamodule (tests/test_streaming_seek.py resumes by seeking with these) ---------------------------

def streaming_data(path, rank=0, world=1, states=None, **overrides):
    """Rank ``rank`` of ``world``'s StreamBatches from the datamodule (CharTokenizer), resumed from ``states`` (a
    checkpoint's per-rank stream states) when given."""
    cfg = config(path, **overrides)
    data = TranslationData(cfg, seed=3, tokenizer=CharTokenizer())
    data.train_set, data.cleaning = clean_and_encode(data._raw_train(), data.tokenizer, cfg, "train", streaming=True)
    data._rank = lambda: (rank, world)
    position = states[rank]["position"] if states is not None else torch.tensor([0, -1])
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(stream_states=states, data_position=position))
    data.train_dataloader()
    return data.stream_batches


def saved(batches, last):
    """The checkpoint's stream state of a rank whose last batch was ``last``, through torch.save and a weights-only
    load, as a checkpoint holds it."""
    buffer = io.BytesIO()
    torch.save({"position": last["position"], "state": batches.state_at(*last["position"].tolist())}, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_a_streaming_pass_logs_what_cleaning_dropped(tmp_path, caplog):
    lines = {"en": ["A dog.", "  ", "x" * 50, "Hi.", "A cat."], "de": ["Ein Hund.", "Leer.", "y", "Hallo.", "Katze."]}
    for lang, text in lines.items():
        (tmp_path / f"train.{lang}").write_text("\n".join(text) + "\n")
    caplog.set_level(logging.INFO, logger="nmt")
    batches = iter(streaming_data(tmp_path, splits={"train": "train", "valid": "valid"}, max_len=40, max_ratio=3.0))
    while int(next(batches)["position"][0]) < 2:
        pass
    passes = [r.getMessage() for r in caplog.records if "streaming pass" in r.getMessage()]
    assert passes == [f"data: streaming pass {n}: train: 5 pairs; dropped 1 empty or whitespace-only, 1 too long, "
                      "0 over the length ratio; kept 3" for n in (0, 1)]
