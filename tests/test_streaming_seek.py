"""A streaming resume that seeks the shard files (issue 29): the saved pair's byte offsets, in the pass's shard
order, and the refusals that resume from datasets' state instead."""

import itertools
import logging
import os
from pathlib import Path

import pytest
import torch

import nmt.data.load as load
import nmt.data.textio as textio
from nmt.data.load import load_split, stream_from
from nmt.data.synthetic import SyntheticCorpus, write_corpus
from tests.test_streaming_shards import config, corpus, counting_reader, decoded, saved, streaming_data


def recording_reader(monkeypatch, opened):
    """Record in ``opened`` the (file name, byte offset, line) at which the stream opens each file."""
    def reader(path, offset=0, line=0):
        opened.append((Path(path).name, offset, line))
        yield from textio.iter_lines_at(path, offset, line)

    monkeypatch.setattr(load, "iter_lines_at", reader)


def stream_lines(path, **overrides):
    return [(p["src"], p["tgt"]) for p in load_split(config(path, **overrides), "train", streaming=True)]


@pytest.mark.parametrize("consumed", [1, 23, 60, "shard end"])
def test_a_seeking_resume_reads_no_consumed_line(tmp_path, monkeypatch, caplog, consumed):
    path = corpus(tmp_path, shards=4, pairs=4000)
    lines, total = stream_lines(path), 150
    uninterrupted = [decoded(b) for b in itertools.islice(iter(streaming_data(path)), total)]
    interrupted = streaming_data(path)
    batches = iter(interrupted)
    if consumed == "shard end":  # a batch of the 10th 100-pair chunk: it ends at the last line of shard 0
        last = next(batch for batch in batches if interrupted._recent[-1][2] == 10)
        consumed = int(last["position"][1]) + 1
        state = saved(interrupted, last)
        assert state["state"]["at"].tolist()[:2] == [0, 1000]
    else:
        state = saved(interrupted, list(itertools.islice(batches, consumed))[-1])

    read, opened = [], []
    counting_reader(monkeypatch, read)
    recording_reader(monkeypatch, opened)
    caplog.set_level(logging.INFO, logger="nmt")
    resumed = streaming_data(path, states=[state])
    rest = [decoded(b) for b in itertools.islice(iter(resumed), total - consumed)]
    assert rest == uninterrupted[consumed:]  # the batches the uninterrupted run made after that point
    shard, line, src_end, tgt_end = state["state"]["at"].tolist()
    end = int(state["state"]["position"][2]) * 100  # the first pair after the saved chunk (no pair is dropped)
    assert shard * 1000 + line == end
    # The stream opened the saved shard's files at the saved offsets, no earlier shard at all, and read from the
    # first pair after the chunk on: not one consumed line.
    assert opened[:2] == [(f"train.{shard:05d}.en", src_end, line), (f"train.{shard:05d}.de", tgt_end, line)]
    assert read and read == lines[end: end + len(read)]
    if end == 1000:  # shard 0 was read to its end: opened there (its alignment is checked), then shard 1 from 0
        assert (line, src_end) == (1000, os.path.getsize(path / "train.00000.en"))
        assert opened[2:4] == [("train.00001.en", 0, 0), ("train.00001.de", 0, 0)]
    assert "by seeking: shard %d after line %d" % (shard, line) in caplog.text


def test_each_rank_seeks_its_own_shard(tmp_path, monkeypatch):
    """2 ranks of 4 shards (rank 0: shards 0 and 2, rank 1: 1 and 3, as split_dataset_by_node deals them): each
    resumes at its own saved position, reading only its own files, with the batches it would have made."""
    path = corpus(tmp_path, shards=4, pairs=2400)
    states, expected = [], []
    for rank in (0, 1):
        straight = [decoded(b) for b in itertools.islice(iter(streaming_data(path, rank, 2)), 100)]
        interrupted = streaming_data(path, rank, 2)
        batches = iter(interrupted)
        if rank == 0:  # in its second shard (shard 2): its first chunk there
            last = next(batch for batch in batches if interrupted._recent[-1][4][0] == 2)
        else:  # inside its first shard (shard 1)
            last = list(itertools.islice(batches, 12))[-1]
        states.append(saved(interrupted, last))
        expected.append(straight[int(last["position"][1]) + 1:])
    assert [int(s["state"]["at"][0]) for s in states] == [2, 1]
    for rank in (0, 1):
        opened = []
        recording_reader(monkeypatch, opened)
        resumed = streaming_data(path, rank, 2, states=states)
        assert [decoded(b) for b in itertools.islice(iter(resumed), len(expected[rank]))] == expected[rank]
        shard, line, src_end, _ = states[rank]["state"]["at"].tolist()
        assert opened[0] == (f"train.{shard:05d}.en", src_end, line)
        assert {int(name.split(".")[1]) for name, _, _ in opened} <= {rank, rank + 2}  # its own shards only


def test_an_invalid_line_after_a_seek_names_its_file_and_line(tmp_path):
    good = ["A dog runs.", "Two men talk.", "A red car.", "Kids play."]
    (tmp_path / "train.en").write_bytes("\n".join(good).encode() + b"\nBad \xff line.\nEnd.\n")
    (tmp_path / "train.de").write_text("\n".join(["Ein Satz."] * 6) + "\n")
    cfg = config(tmp_path, splits={"train": "train", "valid": "valid"})
    pairs = stream_from(cfg, [0, 0, 0, 0])
    third = list(itertools.islice(pairs, 3))[-1]["at"]  # the position after line 3, as a chunk would record it
    assert third == [0, 3, len("\n".join(good[:3])) + 1, len("Ein Satz.\n") * 3]
    rest = stream_from(cfg, third)
    with pytest.raises(textio.TextError, match=r"train\.en:5: invalid UTF-8"):
        list(rest)


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("case", ["gz", "before positions", "at only", "stored before positions"])
def test_a_resume_that_cannot_seek_uses_datasets_state(tmp_path, caplog, case):
    """.gz shards cannot seek, and a checkpoint saved before positions were recorded has none (or, from the first
    nmt that saved them, an ``at`` without the pass's shards read and the files' stamps): all resume from datasets'
    own state as before, to the same batches. "stored before positions": a rank's state in a checkpoint an nmt
    before positions wrote (tests/fixtures, after batch 39 of pass 0 of this corpus)."""
    stored = case == "stored before positions"
    write_corpus(tmp_path, SyntheticCorpus(pairs=1200 if stored else 2000, valid=10, test=10, seed=1,
                                           shards=4 if stored else 2, compress=case == "gz"))
    overrides = {"file_pattern": "{split}.{lang}.gz"} if case == "gz" else {}
    straight = [decoded(b) for b in itertools.islice(iter(streaming_data(tmp_path, **overrides)), 100)]
    if stored:
        state = torch.load(FIXTURES / "stream_state_before_positions.pt", weights_only=True)
        assert "at" not in state["state"] and state["position"].tolist() == [0, 39]
    else:
        interrupted = streaming_data(tmp_path, **overrides)
        state = saved(interrupted, list(itertools.islice(iter(interrupted), 40))[-1])
    for key in {"before positions": ("at", "done", "files"), "at only": ("done", "files")}.get(case, ()):
        del state["state"][key]
    caplog.set_level(logging.INFO, logger="nmt")
    resumed = streaming_data(tmp_path, states=[state], **overrides)
    assert [decoded(b) for b in itertools.islice(iter(resumed), 60)] == straight[40:]
    reason = ".gz shards cannot seek" if case == "gz" else "holds no file position"
    assert "from datasets' state" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("case", ["3 shards, 2 ranks", "max_train_examples"])
def test_a_refused_seek_resumes_from_datasets_state(tmp_path, caplog, case):
    """A shard count the ranks do not divide (each rank reads everything and keeps every world-th pair, counted from
    the start) and data.max_train_examples (a `take` counted from the start) cannot seek: datasets' state, from a
    later pass too, to the uninterrupted run's batches."""
    world = 2 if case == "3 shards, 2 ranks" else 1
    path = corpus(tmp_path, shards=3 if world == 2 else 2, pairs=600)
    overrides = {"max_train_examples": 500} if world == 1 else {}
    caplog.set_level(logging.INFO, logger="nmt")
    for rank in range(world):
        straight = [decoded(b) for b in itertools.islice(iter(streaming_data(path, rank, world, **overrides)), 70)]
        for consumed in (7, 40):
            interrupted = streaming_data(path, rank, world, **overrides)
            state = saved(interrupted, list(itertools.islice(iter(interrupted), consumed))[-1])
            assert "at" in state["state"]  # saved, but not used
            resumed = streaming_data(path, rank, world, states=[state] * world, **overrides)
            assert [decoded(b) for b in itertools.islice(iter(resumed), 70 - consumed)] == straight[consumed:]
    reason = "3 shards do not divide among 2 ranks" if world == 2 else "data.max_train_examples counts pairs"
    assert "from datasets' state" in caplog.text and reason in caplog.text and "by seeking" not in caplog.text
    if world == 2:  # every rank counts the cleaning of the whole stream, and says so
        assert "(rank 1 of 2, counting the whole stream: every rank reads it all): train: 600 pairs" in caplog.text


def _rewrite(file, change: str, end: int) -> str:
    """Change ``file`` and return what the refusal to seek says: "longer" lengthens its first line; "same size" also
    drops the first character after byte ``end`` (the next pair's) and puts the old mtime back, so only the byte
    before ``end`` tells that the lines moved."""
    data, stat = bytearray(file.read_bytes()), file.stat()
    data[:0] = b"x"
    if change == "longer":
        file.write_bytes(bytes(data))
        return f"{file} changed since the checkpoint ({stat.st_size} bytes then, {stat.st_size + 1} now)"
    del data[end + 1]  # the old byte `end`
    file.write_bytes(bytes(data))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return f"{file}: the saved offset {end} (after line"


def first_pass(batches):
    """The decoded batches of pass 0 (the rest of it, for a resumed stream)."""
    return [decoded(b) for b in itertools.takewhile(lambda b: int(b["position"][0]) == 0, iter(batches))]


@pytest.mark.parametrize("change", ["longer", "same size"])
def test_a_shard_changed_since_the_checkpoint_is_not_seeked(tmp_path, caplog, change):
    """A shard file rewritten between the checkpoint and the resume (same names): its saved offsets would land
    mid-line, so the resume warns naming the file and goes on from datasets' state (by line count), to the batches
    the uninterrupted run made in the rest of that pass (its pairs, when the next pair lost its first character;
    else its batches: the changed line was consumed)."""
    path = corpus(tmp_path, shards=2, pairs=600)
    straight = first_pass(streaming_data(path))
    interrupted = streaming_data(path)
    state = saved(interrupted, list(itertools.islice(iter(interrupted), 10))[-1])
    shard, line, src_end, _ = state["state"]["at"].tolist()
    assert 0 < line < 300
    after = shard_lines(path, shard)[line]
    message = _rewrite(path / f"train.{shard:05d}.en", change, src_end)
    caplog.set_level(logging.INFO, logger="nmt")
    rest = first_pass(streaming_data(path, states=[state]))
    if change == "longer":
        assert rest == straight[10:]
    else:  # the pair after the saved one lost its first character: the same pairs (bucketed anew), that one shorter
        src, tgt = after
        expected = [(s[1:], t) if (s, t) == after else (s, t) for batch in straight[10:] for s, t in batch]
        assert sorted(p for batch in rest for p in batch) == sorted(expected) and (src[1:], tgt) in expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(message in w and "cannot resume by seeking" in w for w in warnings), warnings
    assert "from datasets' state" in caplog.text and "by seeking:" not in caplog.text


@pytest.mark.parametrize("case", ["added", "renamed", "modified", "past the end", "same"])
def test_seek_check_compares_the_shards_with_the_checkpoint(tmp_path, case):
    path = corpus(tmp_path, shards=2, pairs=20)
    cfg = config(path)
    file = path / "train.00001.en"
    ends = (sum(len(line) + 1 for line in f.read_bytes().split(b"\n")[:4]) for f in (file, path / "train.00001.de"))
    at = [1, 4, *ends]
    stamp = load.shard_stamp(cfg, 1)
    if case == "added":
        for lang in ("en", "de"):
            (path / f"train.00002.{lang}").write_text("A.\n")
    elif case == "renamed":
        for lang in ("en", "de"):
            (path / f"train.00001.{lang}").rename(path / f"train.00009.{lang}")
    elif case == "modified":
        os.utime(file, ns=(0, 0))
    elif case == "past the end":
        at[2] = file.stat().st_size + 1
    expected = {"added": "the training split has 3 shards, 2 when the checkpoint was saved",
                "renamed": "the training shard files were renamed since the checkpoint",
                "modified": f"{file} was modified since the checkpoint (its mtime differs)",
                "past the end": f"{file}: the saved offset {at[2]} (after line 4) is not in the file", "same": None}
    found = load.seek_check(cfg, at, stamp)
    assert found == expected[case] if found is None or expected[case] is None else expected[case] in found


def shard_lines(path, shard):
    """The (source, target) lines of training shard ``shard``."""
    return list(zip(*(textio.iter_lines(path / f"train.{shard:05d}.{lang}") for lang in ("en", "de"))))


def later_pass_points(path, rank, world, epoch):
    """(batches consumed since the start, the checkpoint state, the shards the pass read before the saved one) of rank
    ``rank`` after the second batch of each chunk of pass ``epoch`` (mid-chunk: a resume starts with pending
    batches)."""
    interrupted = streaming_data(path, rank, world)
    points, order, chunks = [], [], set()
    for consumed, batch in enumerate(interrupted, start=1):
        at_epoch, index = (int(v) for v in batch["position"])
        if at_epoch > epoch:
            return points
        first, chunk, at = (interrupted._recent[-1][i] for i in (1, 2, 4))  # the batch's chunk
        if at_epoch == epoch and at[0] not in order:
            order.append(at[0])
        if at_epoch == epoch and index == first + 1 and chunk not in chunks:
            chunks.add(chunk)
            points.append((consumed, saved(interrupted, batch), order[:-1]))
    raise AssertionError("the stream ended")


@pytest.mark.parametrize("world", [1, 2])
def test_a_seeking_resume_in_a_later_pass_follows_that_pass_shard_order(tmp_path, monkeypatch, world):
    """datasets reorders the shards every pass after the first (set_epoch), and under DDP deals them out after
    that: a resume in pass 2 or 3 seeks in the saved shard, skips the shards this rank read before it in that pass
    without opening them, reads the others in the pass's order and gives the uninterrupted run's batches, into the
    next pass (a whole one)."""
    path = corpus(tmp_path, shards=4, pairs=800)  # 200 lines a shard, 2 chunks of 100 pairs
    for rank in range(world):
        run = iter(streaming_data(path, rank, world))
        straight = [decoded(b) for b in itertools.takewhile(lambda b: int(b["position"][0]) < 5, run)]
        for epoch in (2, 3):
            for consumed, state, done in later_pass_points(path, rank, world, epoch):
                read, opened = [], []
                counting_reader(monkeypatch, read)
                recording_reader(monkeypatch, opened)
                resumed = streaming_data(path, rank, world, states=[state] * world)
                rest = [decoded(b) for b in itertools.islice(iter(resumed), len(straight) - consumed)]
                where = f"rank {rank} of {world}, pass {epoch}, after batch {consumed - 1}"
                assert rest == straight[consumed:], where
                shard, line, src_end, _ = state["state"]["at"].tolist()
                assert opened and opened[0] == (f"train.{shard:05d}.en", src_end, line), (where, opened)
                lines = shard_lines(path, shard)
                assert line == len(lines) or read[0] == lines[line], where  # the pair after the saved one
                mine = 4 // world
                rest_of_pass = {int(name.split(".")[1]) for name, _, _ in opened[: 2 * (mine - len(done))]}
                assert shard in rest_of_pass and not rest_of_pass & set(done), where  # done ones: not opened
