"""nmt.data.documents and scripts/pseudo_documents.py: k consecutive Multi30k pairs joined per document — aligned,
floor(n/k) documents, deterministic bytes, atomic — and data=multi30k_docs with the long-input attention presets."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.config.compose import compose_config, model_config, to_train_config
from nmt.data.documents import DocumentSpec, documents_ready, ensure_documents, join_consecutive, write_documents
from nmt.data.textio import read_text
from nmt.files import write_aligned
from tests.conftest import MULTI30K, multi30k_sample

SCRIPT = Path(__file__).parents[1] / "scripts" / "pseudo_documents.py"


def small_source(folder: Path, n: int = 37) -> Path:
    """The first ``n`` pairs of every split of the shipped Multi30k (en, de), in the same layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test_2016_flickr", "test_2017_flickr"):
        for lang in ("en", "de"):
            lines = read_text(MULTI30K / f"{split}.{lang}.gz")[:n]
            with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
    return folder


def test_join_consecutive_keeps_floor_n_over_k_documents_in_order():
    lines = [f"s{i} " for i in range(10)]
    assert join_consecutive(lines, 4) == ["s0 s1 s2 s3", "s4 s5 s6 s7"]  # the last 10 mod 4 = 2 dropped
    assert join_consecutive(lines, 1) == [f"s{i}" for i in range(10)]
    assert join_consecutive(lines, 11) == []


def test_documents_are_aligned_joins_of_consecutive_pairs(tmp_path):
    source = small_source(tmp_path / "src")
    manifests = write_documents(source, tmp_path / "docs", DocumentSpec(ks=(4, 8)),
                                count_subwords=lambda texts: [1] * len(texts))
    for k in (4, 8):
        for split in ("train", "val", "test_2016_flickr", "test_2017_flickr"):
            en = read_text(tmp_path / "docs" / f"k{k}" / f"{split}.en.gz")
            de = read_text(tmp_path / "docs" / f"k{k}" / f"{split}.de.gz")
            src_en, src_de = read_text(source / f"{split}.en.gz"), read_text(source / f"{split}.de.gz")
            assert len(en) == len(de) == 37 // k
            for i in range(37 // k):  # document i is pairs i·k … i·k+k-1 on both sides
                assert en[i] == " ".join(src_en[i * k : (i + 1) * k])
                assert de[i] == " ".join(src_de[i * k : (i + 1) * k])
            entry = manifests[k]["splits"][split]
            assert (entry["documents"], entry["dropped_pairs"]) == (37 // k, 37 % k)
            assert entry["words"]["en"]["mean"] == pytest.approx(sum(len(d.split()) for d in en) / len(en))
            assert entry["subwords"]["de"]["max"] == 1.0
        assert documents_ready(tmp_path / "docs", k, DocumentSpec())
    assert not [p.name for p in (tmp_path / "docs").rglob(".*")]  # no temporary file left behind


def test_deterministic_bytes_and_ensure_writes_only_what_is_missing(tmp_path):
    source = small_source(tmp_path / "src")
    write_documents(source, tmp_path / "a", DocumentSpec(ks=(4,)))
    write_documents(source, tmp_path / "b", DocumentSpec(ks=(4,)))
    for file in (tmp_path / "a" / "k4").glob("*.gz"):  # gzip without a timestamp: identical bytes
        data = file.read_bytes()
        assert data == (tmp_path / "b" / "k4" / file.name).read_bytes()
        assert data[4:8] == b"\0\0\0\0"  # MTIME: 0
        assert data[3] & 0x08 and data[10:].split(b"\0")[0] == file.name.removesuffix(".gz").encode()  # final name
    assert list(ensure_documents(source, tmp_path / "a", [4, 2])) == [2]
    assert ensure_documents(source, tmp_path / "a", [4, 2]) == {}
    (tmp_path / "a" / "k2" / "documents.json").unlink()  # an interrupted run: no manifest, so written again
    assert not documents_ready(tmp_path / "a", 2) and list(ensure_documents(source, tmp_path / "a", [2])) == [2]
    manifest = json.loads((tmp_path / "a" / "k2" / "documents.json").read_text())
    assert manifest["spec"]["k"] == 2 and manifest["splits"]["train"]["documents"] == 18


def test_a_folder_made_from_another_source_is_not_ready(tmp_path):
    one, other = small_source(tmp_path / "one", n=20), small_source(tmp_path / "other", n=30)
    write_documents(one, tmp_path / "docs", DocumentSpec(ks=(4,)))
    assert documents_ready(tmp_path / "docs", 4, source_dir=one)
    assert not documents_ready(tmp_path / "docs", 4, source_dir=other)
    assert list(ensure_documents(other, tmp_path / "docs", [4])) == [4]  # --source changed: written again
    assert len(read_text(tmp_path / "docs" / "k4" / "train.en.gz")) == 30 // 4
    assert ensure_documents(other, tmp_path / "docs", [4]) == {}


def test_writers_of_the_same_files_at_once_both_finish_with_whole_files(tmp_path):
    """Two writers of the same files (two long_bleu.sh copies): each has its own temporary files, so neither
    truncates nor renames away the other's (with one shared ``<name>.partial`` the outer rename found no file)."""
    paths = {lang: tmp_path / f"train.{lang}.gz" for lang in ("en", "de")}
    rows = [(f"en {i}", f"de {i}") for i in range(50)]

    def outer_rows():
        for i, row in enumerate(rows):
            if i == 25:  # the other writer starts, runs and finishes in the middle of this one
                assert write_aligned(paths, iter(rows), compress=True) == 50
            yield row

    assert write_aligned(paths, outer_rows(), compress=True) == 50
    assert read_text(paths["de"]) == [de for _, de in rows]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.de.gz", "train.en.gz"]


def test_a_misaligned_or_missing_file_names_it(tmp_path):
    source = small_source(tmp_path / "src")
    with gzip.open(source / "val.de.gz", "wt") as f:
        f.write("one line\n")
    with pytest.raises(ValueError, match=r"split 'val' is not aligned: \{'en': 37, 'de': 1\}"):
        write_documents(source, tmp_path / "out", DocumentSpec(ks=(2,)))
    with pytest.raises(ValueError, match=r"train\.fr\.gz: no such file"):
        write_documents(source, tmp_path / "out", DocumentSpec(ks=(2,), langs=("en", "fr")))


@pytest.mark.parametrize("argv, message", [
    (["--k", "0"], "pseudo_documents.py: --k (0) must be one or more counts >= 1\n"),
    (["--k", "8", "8"], "pseudo_documents.py: --k (8 8) repeats a count\n"),
    (["--langs", "en"], "pseudo_documents.py: --langs (en) must be two or more different languages\n"),
    (["--vocab-size", "-1"], "pseudo_documents.py: --vocab-size (-1) must be >= 0\n"),
    (["--k", "x"], "pseudo_documents.py: argument --k: invalid int value: 'x'\n"),
])
def test_script_bad_arguments_are_one_line_naming_the_flag(argv, message, tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *argv], capture_output=True,
                            text=True)
    assert result.returncode == 2 and result.stderr == message


def test_script_writes_and_prints_the_statistics(tmp_path):
    source = small_source(tmp_path / "src")
    result = subprocess.run([sys.executable, str(SCRIPT), "--source", str(source), "--out", str(tmp_path / "docs"),
                             "--k", "4", "--vocab-size", "0"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "k=4   train                  9 documents (1 of 37 pairs dropped); en words mean" in result.stdout
    assert (tmp_path / "docs" / "k4" / "test_2017_flickr.de.gz").is_file()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A 400-piece sentencepiece model of Multi30k sentences (a few seconds): ~20 pieces per caption."""
    from nmt.data.tokenizer import TokenizerSettings, load_or_train

    return load_or_train(lambda: multi30k_sample(1000), TokenizerSettings(400), "d", tmp_path_factory.mktemp("spm"))


def long_pair(tokenizer, low: int = 1100, high: int = 1280) -> tuple[str, str]:
    """Consecutive Multi30k training pairs joined until the source has ``low`` or more subwords, both sides at most
    ``high`` (data=multi30k_docs' max_len): a k=64-like document."""
    en, de = read_text(MULTI30K / "train.en.gz")[:200], read_text(MULTI30K / "train.de.gz")[:200]
    for n in range(1, 200):
        src, tgt = " ".join(en[:n]), " ".join(de[:n])
        if len(tokenizer.encode([src])[0]) >= low:
            assert len(tokenizer.encode([src])[0]) <= high and len(tokenizer.encode([tgt])[0]) <= high
            return src, tgt
    raise AssertionError("Multi30k's first 200 pairs are too short")


def test_data_config_keeps_the_longest_documents(tokenizer):
    """A ~1,150-subword pair (the longest k=64 document is 1,142) survives data=multi30k_docs' cleaning and is not
    truncated for validation; data=multi30k (max_len 250) drops it."""
    import datasets

    from nmt.data.encode import clean_and_encode, encode_eval

    cfg = to_train_config(compose_config(["data=multi30k_docs", "data.path=data/multi30k_docs/k64"]))
    assert (cfg.data.name, cfg.data.path, cfg.data.file_pattern) == ("multi30k_docs", "data/multi30k_docs/k64",
                                                                      "{split}.{lang}.gz")
    assert (cfg.data.splits.train, cfg.data.splits.valid, cfg.data.splits.test) == ("train", "val", "test_2016_flickr")
    src, tgt = long_pair(tokenizer)
    n_src, n_tgt = (len(tokenizer.encode([text])[0]) for text in (src, tgt))
    ds = datasets.Dataset.from_dict({"src": [src, "A dog."], "tgt": [tgt, "Ein Hund."]})
    kept, stats = clean_and_encode(ds, tokenizer, cfg.data, "train")
    assert kept.num_rows == 2 and stats.too_long == 0 and (kept[0]["src_len"], kept[0]["tgt_len"]) == (n_src, n_tgt)
    valid = encode_eval(ds, tokenizer, cfg.data, "valid")
    assert valid[0]["src_len"] == n_src and not valid[0]["truncated"]
    sentences = to_train_config(compose_config(["data=multi30k"]))
    assert clean_and_encode(ds, tokenizer, sentences.data, "train")[1].too_long == 1


def test_data_path_null_is_one_error_not_sentence_level_multi30k():
    cfg = compose_config(["data=multi30k_docs", "data.path=null"])
    assert cfg.data.hub_id is None and cfg.data.max_len == 1280 and cfg.data.max_tokens == 4096  # from multi30k
    with pytest.raises(ValueError, match=r"^data: set data\.path \(local files\) or data\.hub_id"):
        to_train_config(cfg)


class _Trainer:
    """What TranslationModule.setup and _validation_bleu read of a Lightning Trainer: one rank, a datamodule."""

    global_rank, world_size = 0, 1

    def __init__(self, datamodule) -> None:
        self.datamodule = datamodule


def test_validation_bleu_translates_sources_up_to_data_max_len_whole(tokenizer, monkeypatch):
    """Issue 31: validation BLEU truncated sources at nmt evaluate's 1,024 subwords whatever data.max_len; a
    1,100-subword validation document under data.max_len 1280 reaches the model whole."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from nmt.config import ModelConfig
    from nmt.config.train import OptimConfig
    from nmt.decoding import translate
    from nmt.training.lit_module import TranslationModule

    src, tgt = long_pair(tokenizer)
    n_src = len(tokenizer.encode([src])[0])
    assert 1024 < n_src <= 1280
    model = ModelConfig(vocab_size=400, d_model=16, n_heads=2, d_ff=32, encoder_layers=1, decoder_layers=1)
    module = TranslationModule(model.to_dict(), asdict(OptimConfig()), {"max_len_a": 0.0, "max_len_b": 2}, 1)
    data = SimpleNamespace(cfg=SimpleNamespace(max_tokens=4096, max_len=1280), tokenizer=tokenizer,
                           valid_set={"src": [src], "tgt": [tgt]})
    module.trainer = _Trainer(data)
    module.setup("fit")
    seen = []
    decode_ids = translate.Translator.decode_ids
    monkeypatch.setattr(translate.Translator, "decode_ids",
                        lambda self, ids, *a, **k: seen.extend(map(len, ids)) or decode_ids(self, ids, *a, **k))
    assert module._validation_bleu() >= 0
    assert seen == [n_src]  # not 1,024
    data.cfg.max_len = 250  # sentence-level data: never below nmt evaluate's 1,024
    module.setup("fit")
    seen.clear()
    module._validation_bleu()
    assert seen == [1024]


LONG_PRESETS = {"mha": "mha", "gqa": "gqa-2", "sliding_window_16": "window-16", "sliding_window_64": "window-64",
                "sparse_long": "sparse-16+8"}  # preset → the variant name of nmt bench long and scripts/long_bleu.sh


@pytest.mark.parametrize("preset, variant", LONG_PRESETS.items())
def test_long_input_presets_are_the_bench_variants(preset, variant):
    from nmt.bench.long import variant_overrides

    base = ["model=small", "data=multi30k_docs"]
    by_preset = model_config(compose_config([*base, f"attention={preset}"]))
    by_bench = model_config(compose_config([*base, *variant_overrides(variant)]))
    assert by_preset.attention == by_bench.attention


def test_long_bleu_names_its_variants_as_the_bench_does():
    """scripts/long_bleu.sh once said window16 where nmt bench long (and the docs' tables) say window-16."""
    import re

    from nmt.bench.long import VARIANTS

    script = (SCRIPT.parent / "long_bleu.sh").read_text()
    assert re.search(r"^ALL=\((.*)\)$", script, re.M)[1].split() == list(VARIANTS)
    cases = dict(re.findall(r"^    (\S+)\) echo (\w+) ;;$", script, re.M))
    assert cases == {variant: preset for preset, variant in LONG_PRESETS.items()}
    refused = subprocess.run(["bash", str(SCRIPT.parent / "long_bleu.sh"), "window16"], capture_output=True, text=True,
                             timeout=60)  # names are checked before any work
    assert refused.returncode == 2 and refused.stderr == (
        "long_bleu.sh: unknown variant 'window16' (mha gqa-2 window-16 window-64 sparse-16+8, or report alone)\n")
