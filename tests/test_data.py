"""Corpus loading, cleaning and the sentencepiece cache, on small files written by the tests."""

import gzip
import json
import logging
import os
import time

import datasets
import pytest

from nmt.config.train import DataConfig
from nmt.data.batching import subword_lengths
from nmt.data.datamodule import TranslationData, spm_sentences
from nmt.data.encode import clean_and_encode, encode_processes
from nmt.data.load import DataError, load_split
from nmt.data.tokenizer import TokenizerError, TokenizerSettings, load_or_train
from tests.conftest import multi30k_sample

EN = ["A dog runs.", "Two men talk.", "A red car.", "   ", "", "Kids play in the park."]
DE = ["Ein Hund rennt.", "Zwei Männer reden.", "Ein rotes Auto.", "Etwas.", "Nichts.", "Kinder spielen im Park."]


def write_lines(path, lines, gz=False):
    data = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")


def config(tmp_path, **kwargs):
    values = dict(
        path=str(tmp_path), file_pattern="{split}.{lang}", cache_dir=str(tmp_path / "cache"), vocab_size=60,
        splits={"train": "train", "valid": "valid", "test": None}, max_tokens=300, max_len=50,
    )
    values.update(kwargs)
    return DataConfig(**values)


@pytest.fixture
def text_corpus(tmp_path):
    write_lines(tmp_path / "train.en.gz", EN, gz=True)
    write_lines(tmp_path / "train.de.gz", DE, gz=True)
    return config(tmp_path, file_pattern="{split}.{lang}.gz")


def test_aligned_gzipped_text_pairs(text_corpus):
    ds = load_split(text_corpus, "train")
    assert ds.column_names == ["src", "tgt"]
    assert ds[0] == {"src": "A dog runs.", "tgt": "Ein Hund rennt."}
    assert ds.num_rows == len(EN)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_tsv_jsonl_parquet(tmp_path, fmt):
    import pandas as pd

    rows = [{"en": e, "de": d} for e, d in zip(EN, DE)] + [{"en": "NA", "de": "null"}]
    file = tmp_path / f"train.{fmt}"
    if fmt == "tsv":
        file.write_text("en\tde\n" + "".join(f"{r['en']}\t{r['de']}\n" for r in rows), encoding="utf-8")
    elif fmt == "jsonl":
        file.write_text("".join(json.dumps({"translation": r}) + "\n" for r in rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(file)
    ds = load_split(config(tmp_path, format=fmt, file_pattern="{split}." + fmt), "train")
    assert ds.num_rows == len(rows)
    assert ds[0] == {"src": "A dog runs.", "tgt": "Ein Hund rennt."}
    assert ds[len(rows) - 1] == {"src": "NA", "tgt": "null"}  # not turned into missing values


@pytest.mark.parametrize("row,fields", [("no tab here", "1 tab-separated field "),
                                        ("x\ty\tz", "3 tab-separated fields ")])
def test_tsv_row_with_wrong_field_count_names_file_and_line(tmp_path, row, fields):
    """pandas would read a row without its tab as a pair with an empty target: a wrong reference, not a repair."""
    (tmp_path / "train.tsv").write_text(f"en\tde\na\tb\n\n{row}\nc\td\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"train.tsv:4: {fields}but the header has 2"):
        load_split(config(tmp_path, format="tsv", file_pattern="{split}.tsv"), "train")


def test_missing_language_column_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"en": "a", "fr": "b"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl: no column 'de' \(columns: en, fr\)"):
        load_split(config(tmp_path, format="jsonl", file_pattern="{split}.jsonl"), "train")


def test_different_line_counts_name_both_files(tmp_path):
    write_lines(tmp_path / "train.en", EN)
    write_lines(tmp_path / "train.de", DE[:-2])
    with pytest.raises(DataError, match=r"train.en has 6 lines but .*train.de has 4"):
        load_split(config(tmp_path), "train")


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_lines_break_at_newline_only(tmp_path, streaming):
    """A lone CR, vertical tab or U+2028 inside a sentence stays in it (str.splitlines would split there, and one
    such character per side would shift every later pair); CRLF endings and a missing final newline are fine; the
    cache follows the file's content."""
    (tmp_path / "train.en").write_bytes("a b\rc d\r\ne\x0bf\u2028g\r\nlast".encode())
    write_lines(tmp_path / "train.de", ["eins\x0czwei", "drei", "vier"])
    pairs = list(load_split(config(tmp_path), "train", streaming=streaming))
    assert [(p["src"], p["tgt"]) for p in pairs] == [("a b\rc d", "eins\x0czwei"), ("e\x0bf\u2028g", "drei"),
                                                     ("last", "vier")]
    if streaming:  # where each pair ends, in bytes: what a resume seeks to (CRLF and U+2028's 3 bytes counted)
        assert [p["at"] for p in pairs] == [[0, 1, 9, 10], [0, 2, 18, 15], [0, 3, 22, 20]]
    write_lines(tmp_path / "train.en", ["x", "y", "z"])
    assert [p["src"] for p in load_split(config(tmp_path), "train", streaming=streaming)] == ["x", "y", "z"]


def test_missing_file_is_named(tmp_path):
    write_lines(tmp_path / "train.en", EN)
    with pytest.raises(DataError, match=r"train.de: no such file"):
        load_split(config(tmp_path), "train")


def test_invalid_utf8_names_file_and_line(tmp_path):
    write_lines(tmp_path / "train.en", EN)
    (tmp_path / "train.de").write_bytes("\n".join(DE[:3]).encode() + b"\nGr\xfc\xdfe\n"
                                        + b"\n".join(x.encode() for x in DE[4:]) + b"\n")
    with pytest.raises(DataError, match=r"train.de:4: invalid UTF-8 \(invalid start byte at byte 2\)"):
        load_split(config(tmp_path), "train")


def test_cleaning_counts_empty_long_and_unbalanced_pairs(tmp_path, text_corpus):
    ds = load_split(text_corpus, "train")
    long = " ".join(["word"] * 10_000)  # a 10,000-token sentence: filtered, not a crash
    ds = ds.add_item({"src": long, "tgt": "Kurz."}).add_item({"src": "Ok.", "tgt": long})
    ds = ds.add_item({"src": "a", "tgt": "ein sehr langer satz mit vielen vielen woertern"})
    tokenizer = load_or_train(multi30k_sample, TokenizerSettings(400), "fp", tmp_path / "cache")
    encoded, stats = clean_and_encode(ds, tokenizer, text_corpus, "train")
    assert (stats.total, stats.empty, stats.too_long, stats.bad_ratio) == (9, 2, 2, 1)
    assert encoded.num_rows == stats.kept == 4
    assert "dropped 2 empty or whitespace-only, 2 too long, 1 over the length ratio; kept 4" in str(stats)
    # The kept rows carry int32 ids and their lengths; the lengths cleaning hands to batching are theirs, row by row.
    assert encoded.features["src_ids"].feature.dtype == "int32"
    for side in ("src", "tgt"):
        counted = [len(ids) for ids in encoded[f"{side}_ids"]]
        assert list(encoded[f"{side}_len"]) == counted
        assert stats.lengths[("src", "tgt").index(side)].tolist() == counted
        assert subword_lengths(encoded, f"{side}_ids").tolist() == counted
        assert subword_lengths(encoded.remove_columns(f"{side}_len"), f"{side}_ids").tolist() == counted


def test_a_split_of_only_blank_pairs_is_the_no_pairs_left_error(tmp_path):
    write_lines(tmp_path / "train.en", ["", "  ", "x"])
    write_lines(tmp_path / "train.de", ["a", "", "\t"])
    write_lines(tmp_path / "valid.en", EN[:2])
    write_lines(tmp_path / "valid.de", DE[:2])
    cfg = config(tmp_path)
    tokenizer = load_or_train(multi30k_sample, TokenizerSettings(400), "fp", tmp_path / "cache")
    encoded, stats = clean_and_encode(load_split(cfg, "train"), tokenizer, cfg, "train")
    assert encoded.num_rows == 0 and (stats.empty, stats.kept) == (3, 0)
    assert [len(side) for side in stats.lengths] == [0, 0]
    data = TranslationData(cfg, seed=1, tokenizer=tokenizer)
    with pytest.raises(DataError, match=r"no training pairs left \(train: 3 pairs; dropped 3 empty"):
        data.setup()


def test_cleaning_is_logged_once_though_prepare_data_and_setup_both_encode(tmp_path, caplog):
    for split, n in (("train", 6), ("valid", 2)):
        write_lines(tmp_path / f"{split}.en", EN[:n - 1] + [""])
        write_lines(tmp_path / f"{split}.de", DE[:n])
    cfg = config(tmp_path)
    data = TranslationData(cfg, seed=1, tokenizer=load_or_train(multi30k_sample, TokenizerSettings(400), "fp",
                                                                tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="nmt.data"):
        data.prepare_data()  # Lightning calls both, prepare_data once per node and setup once per rank
        data.setup()
    logged = [record.getMessage() for record in caplog.records if "pairs; dropped" in record.getMessage()]
    assert logged == [str(data.cleaning)] and data.cleaning.total == 6 and data.cleaning.empty >= 1


def test_sentencepiece_input_is_every_pair_in_order_or_a_uniform_sample(tmp_path):
    src = [f"s{i}" if i % 7 else "  " for i in range(1000)]
    ds = datasets.Dataset.from_dict({"src": src, "tgt": [f"t{i}" for i in range(1000)]})
    # At most max_sentences // 2 pairs: every non-blank side, pair by pair, as sentencepiece always got them.
    expected = [text for pair in zip(src, ds["tgt"]) for text in pair if text.strip()]
    assert list(spm_sentences(ds, 2000)) == expected
    # More pairs: a sample of 100 distinct pairs, in corpus order, the same every time, both sides of each.
    sample = list(spm_sentences(ds, 200))
    pairs = sorted({int(text[1:]) for text in sample})
    assert len(pairs) == 100 and sample == list(spm_sentences(ds, 200))
    assert sample == [text for i in pairs for text in (src[i], f"t{i}") if text.strip()]


def test_encoding_processes(tmp_path):
    cores = min(len(os.sched_getaffinity(0)), 8)
    assert encode_processes(config(tmp_path), 99_999) is None  # small: one process, no workers to start
    assert encode_processes(config(tmp_path), 100_000) == (cores if cores > 1 else None)
    assert encode_processes(config(tmp_path, num_proc=3), 50) == 3
    assert encode_processes(config(tmp_path, num_proc=3), 2) is None  # never more processes than rows
    assert encode_processes(config(tmp_path, num_proc=1), 10**6) is None
    with pytest.raises(ValueError, match=r"data.num_proc \(0\) must be >= 1 or null"):
        config(tmp_path, num_proc=0)


def test_two_encoding_processes_give_the_one_process_rows(tmp_path, text_corpus):
    ds = load_split(text_corpus, "train")
    tokenizer = load_or_train(multi30k_sample, TokenizerSettings(400), "fp", tmp_path / "cache")
    one, _ = clean_and_encode(ds, tokenizer, text_corpus, "train")
    two, stats = clean_and_encode(ds, tokenizer, config(tmp_path, file_pattern="{split}.{lang}.gz", num_proc=2),
                                  "train")
    assert two.to_list() == one.to_list() and stats.kept == one.num_rows


def test_a_tokenizer_pickles_and_hashes_as_its_model_bytes(tmp_path):
    """The same sentencepiece model from a file or from a checkpoint's bytes: one `datasets` map cache, and a pickled
    copy (what worker processes get) that encodes alike."""
    import pickle

    from datasets.fingerprint import Hasher

    from nmt.data.tokenizer import Tokenizer

    from_file = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "fp", tmp_path)
    from_bytes = Tokenizer.from_serialized(from_file.serialized)
    assert Hasher.hash(from_file) == Hasher.hash(from_bytes)
    other = load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(500), "fp", tmp_path)
    assert Hasher.hash(other) != Hasher.hash(from_file)
    copy = pickle.loads(pickle.dumps(from_file))
    assert copy.encode(["A dog runs."]) == from_file.encode(["A dog runs."]) and copy.serialized == from_file.serialized


def test_sentencepiece_reused_when_unchanged_and_retrained_when_vocab_changes(tmp_path):
    calls = []

    def sentences():
        calls.append(1)
        return multi30k_sample(1000)

    first = load_or_train(sentences, TokenizerSettings(400), "corpus-a", tmp_path)
    mtime = first.model_file.stat().st_mtime_ns
    again = load_or_train(sentences, TokenizerSettings(400), "corpus-a", tmp_path)
    assert again.model_file == first.model_file and again.model_file.stat().st_mtime_ns == mtime
    assert len(calls) == 1
    bigger = load_or_train(sentences, TokenizerSettings(500), "corpus-a", tmp_path)
    other_corpus = load_or_train(sentences, TokenizerSettings(400), "corpus-b", tmp_path)
    assert len(calls) == 3
    assert len({first.model_file, bigger.model_file, other_corpus.model_file}) == 3
    assert (first.vocab_size, bigger.vocab_size) == (400, 500)
    # Byte fallback: a character never seen in training becomes bytes, not <unk>.
    ids = first.encode(["Ж 😀"])[0]
    assert first.unk_id not in ids and first.decode([ids]) == ["Ж 😀"]


def test_impossible_vocabulary_is_one_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match=r"data.vocab_size=60.*Vocabulary size is smaller than required_chars"):
        load_or_train(lambda: EN + DE, TokenizerSettings(60), "x", tmp_path)


def test_unreachable_hub_fails_fast_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("nmt.data.load.HUB_HOST", ("huggingface.co.invalid", 443))  # unreachable on any machine
    cfg = DataConfig(path=None, hub_id="wmt14", hub_config="de-en", cache_dir=str(tmp_path))
    start = time.monotonic()
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face Hub to load 'wmt14': train from local files"):
        load_split(cfg, "train")
    assert time.monotonic() - start < 10


def test_bad_data_configs_name_the_key():
    with pytest.raises(ValueError, match=r"data.format \('xml'\) must be one of"):
        DataConfig(path=".", format="xml")
    with pytest.raises(ValueError, match="set data.path .* or data.hub_id"):
        DataConfig(path=None)
    with pytest.raises(ValueError, match=r"data.max_tokens \(100\) must hold one sentence of data.max_len \(250\)"):
        DataConfig(path=".", max_tokens=100)


def test_streamed_pairs_and_their_misalignment(tmp_path):
    write_lines(tmp_path / "train.en", EN)
    write_lines(tmp_path / "train.de", DE)
    pairs = list(load_split(config(tmp_path), "train", streaming=True))
    assert pairs[0] == {"src": "A dog runs.", "tgt": "Ein Hund rennt.",
                        "at": [0, 1, len("A dog runs.\n"), len("Ein Hund rennt.\n")]}
    assert len(pairs) == len(EN)
    write_lines(tmp_path / "train.de", DE[:4])
    with pytest.raises(DataError, match=r"train.de ends after 4 lines but .*train.en goes on"):
        list(load_split(config(tmp_path), "train", streaming=True))


def test_missing_values_bom_and_fake_gzip(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"en": "A dog.", "de": None}) + "\n" + json.dumps({"en": 7, "de": "Sieben."}) + "\n")
    ds = load_split(config(tmp_path, format="jsonl", file_pattern="{split}.jsonl"), "train")
    assert ds[0] == {"src": "A dog.", "tgt": ""} and ds[1] == {"src": "7", "tgt": "Sieben."}
    (tmp_path / "train.en").write_bytes("\ufeffA dog.\nA cat.\n".encode())
    write_lines(tmp_path / "train.de", ["Ein Hund.", "Eine Katze."])
    assert load_split(config(tmp_path), "train")[0]["src"] == "A dog."
    (tmp_path / "valid.en.gz").write_bytes(b"plain text, not gzip\n")
    write_lines(tmp_path / "valid.de.gz", ["x"], gz=True)
    with pytest.raises(DataError, match=r"valid.en.gz: unreadable"):
        load_split(config(tmp_path, file_pattern="{split}.{lang}.gz"), "valid")


def test_more_bad_configs_name_the_key():
    from nmt.config.train import OptimConfig, TrainerConfig

    for make, message in [
        (lambda: TrainerConfig(devices=0), r"trainer.devices \(0\)"),
        (lambda: TrainerConfig(accelerator="tpu"), r"trainer.accelerator \('tpu'\)"),
        (lambda: TrainerConfig(gradient_clip_val=-1), r"trainer.gradient_clip_val \(-1\) must be >= 0"),
        (lambda: TrainerConfig(patience=-2), r"trainer.patience \(-2\)"),
        (lambda: OptimConfig(min_lr=1.0, lr=0.1), r"optim.min_lr \(1.0\)"),
        (lambda: DataConfig(path=".", max_train_examples=0), r"data.max_train_examples \(0\)"),
        (lambda: DataConfig(path=".", format="jsonl", file_pattern="{split}.{lang}.jsonl"), "use {split} only"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


def test_validation_pairs_are_all_kept_and_long_ones_truncated(tmp_path, caplog):
    import datasets

    from nmt.data.encode import encode_eval

    tokenizer = load_or_train(multi30k_sample, TokenizerSettings(400), "fp", tmp_path / "cache")
    ds = datasets.Dataset.from_list([{"src": "A dog.", "tgt": "Ein Hund."}, {"src": "", "tgt": "Leer."},
                                     {"src": " ".join(["word"] * 500), "tgt": "Lang."}])
    with caplog.at_level("WARNING", logger="nmt.data.encode"):
        encoded = encode_eval(ds, tokenizer, config(tmp_path, max_len=50), "valid")
    assert encoded.num_rows == 3 and max(len(x) for x in encoded["src_ids"]) == 50
    assert "valid: 1 pair longer than data.max_len=50 subwords was truncated" in caplog.text


# Inside fields: a lone CR, U+2028 (line separator), U+0085 (next line), a vertical tab and a form feed; one of
# them on a side of a pair must not end the record (issue 24, fault 3: TSV split `A cat<CR>sits.` into two pairs).
INSIDE = [("A dog.", "Ein Hund."), ("A cat\rsits.", "Eine Katze sitzt."), ("Line\u2028sep", "Zeile\u0085weiter"),
          ("Tab\x0bbed\x0c.", "Letzte."), ("Last.", "Ende.")]


def _write_format(tmp_path, fmt: str, rows, crlf: bool = False, bom: bool = False) -> DataConfig:
    import pandas as pd

    end = "\r\n" if crlf else "\n"
    file = tmp_path / f"train.{fmt}"
    if fmt == "tsv":
        text = "en\tde" + end + "".join(f"{en}\t{de}{end}" for en, de in rows)
    elif fmt == "jsonl":  # ensure_ascii=False: U+2028 and U+0085 stay raw characters, as many writers leave them
        text = "".join(json.dumps({"en": en, "de": de}, ensure_ascii=False) + end for en, de in rows)
    if fmt == "parquet":
        pd.DataFrame([{"en": en, "de": de} for en, de in rows]).to_parquet(file)
    else:
        file.write_bytes((("\ufeff" if bom else "") + text).encode())
    return config(tmp_path, format=fmt, file_pattern="{split}." + fmt)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
@pytest.mark.parametrize("fmt, crlf, bom", [("tsv", False, False), ("tsv", True, True), ("jsonl", False, False),
                                            ("jsonl", True, True), ("parquet", False, False)])
def test_every_format_ends_a_record_at_newline_only(tmp_path, fmt, crlf, bom, streaming):
    cfg = _write_format(tmp_path, fmt, INSIDE, crlf, bom)
    pairs = [(p["src"], p["tgt"]) for p in load_split(cfg, "train", streaming=streaming)]
    assert pairs == INSIDE


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_tsv_field_count_is_checked_per_record(tmp_path, streaming):
    """The field-count check counted tabs per "\\n" line while pandas split at "\\r" too: now one reader does both."""
    (tmp_path / "train.tsv").write_bytes(b"en\tde\nA cat\rsits.\tEine Katze.\nno tab\n")
    cfg = config(tmp_path, format="tsv", file_pattern="{split}.tsv")
    with pytest.raises(DataError, match=r"train.tsv:3: 1 tab-separated field but the header has 2"):
        list(load_split(cfg, "train", streaming=streaming))


def test_a_bad_jsonl_record_names_file_and_line(tmp_path):
    """pyarrow's message counts rows from 0 ("in row 1") and names no file; a raw control character is not JSON."""
    (tmp_path / "train.jsonl").write_bytes(b'{"en": "a", "de": "b"}\n\n{"en": "A cat\rsits.", "de": "c"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:3: not valid JSON \(Invalid control character at column 14\)"):
        load_split(config(tmp_path, format="jsonl", file_pattern="{split}.jsonl"), "train")


@pytest.mark.parametrize("fmt", ["text", "tsv"])
def test_empty_files_are_empty_splits(tmp_path, fmt):
    """An empty split loads as zero pairs (datasets refused to build it: 'corresponds to no data'), for the caller to
    name it."""
    if fmt == "text":
        (tmp_path / "valid.en").write_bytes(b"")
        (tmp_path / "valid.de").write_bytes(b"\xef\xbb\xbf")  # only a byte-order mark: no line either
        cfg = config(tmp_path)
    else:
        (tmp_path / "valid.tsv").write_bytes(b"en\tde\r\n")
        cfg = config(tmp_path, format="tsv", file_pattern="{split}.tsv")
    ds = load_split(cfg, "valid")
    assert ds.num_rows == 0 and ds.column_names == ["src", "tgt"]


@pytest.mark.parametrize("split", ["valid", "train"])
def test_training_on_an_empty_split_names_it(tmp_path, split):
    """Issue 24, fault 2: every command given zero lines answers in one line; training names the split."""
    from nmt.data.datamodule import TranslationData

    sample = multi30k_sample(500)
    write_lines(tmp_path / "train.en", sample[:500])
    write_lines(tmp_path / "train.de", sample[500:])
    write_lines(tmp_path / "valid.en", sample[:3])
    write_lines(tmp_path / "valid.de", sample[500:503])
    for lang in ("en", "de"):
        (tmp_path / f"{split}.{lang}").write_bytes(b"")
    data = TranslationData(config(tmp_path, vocab_size=400), seed=1)
    files = f"{tmp_path / f'{split}.en'}, {tmp_path / f'{split}.de'}"
    name = "validation" if split == "valid" else "training"
    with pytest.raises(DataError, match=rf"^the {name} split is empty: data.splits.{split}='{split}' \({files}\) "
                                        "holds no pairs"):
        data.prepare_data()
    with pytest.raises(DataError, match=f"the {name} split is empty"):
        data.setup("fit")
