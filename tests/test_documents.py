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
from tests.conftest import MULTI30K

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
    assert not list((tmp_path / "docs").rglob("*.partial"))


def test_deterministic_bytes_and_ensure_writes_only_what_is_missing(tmp_path):
    source = small_source(tmp_path / "src")
    write_documents(source, tmp_path / "a", DocumentSpec(ks=(4,)))
    write_documents(source, tmp_path / "b", DocumentSpec(ks=(4,)))
    for file in (tmp_path / "a" / "k4").glob("*.gz"):  # gzip without a timestamp: identical bytes
        assert file.read_bytes() == (tmp_path / "b" / "k4" / file.name).read_bytes()
    assert ensure_documents(source, tmp_path / "a", [4, 2]) == [2]
    assert ensure_documents(source, tmp_path / "a", [4, 2]) == []
    (tmp_path / "a" / "k2" / "documents.json").unlink()  # an interrupted run: no manifest, so written again
    assert not documents_ready(tmp_path / "a", 2) and ensure_documents(source, tmp_path / "a", [2]) == [2]
    manifest = json.loads((tmp_path / "a" / "k2" / "documents.json").read_text())
    assert manifest["spec"]["k"] == 2 and manifest["splits"]["train"]["documents"] == 18


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


def test_data_config_keeps_the_longest_documents():
    cfg = to_train_config(compose_config(["data=multi30k_docs", "data.path=data/multi30k_docs/k64"]))
    assert (cfg.data.name, cfg.data.path, cfg.data.file_pattern) == ("multi30k_docs", "data/multi30k_docs/k64",
                                                                      "{split}.{lang}.gz")
    assert (cfg.data.splits.train, cfg.data.splits.valid, cfg.data.splits.test) == ("train", "val", "test_2016_flickr")
    assert cfg.data.max_len >= 1142 + 50 and cfg.data.max_tokens >= cfg.data.max_len + 2  # longest k=64: 1,142


@pytest.mark.parametrize("preset, variant", [("sliding_window_16", "window-16"), ("sliding_window_64", "window-64"),
                                             ("sparse_long", "sparse-16+8"), ("gqa", "gqa-2"), ("mha", "mha")])
def test_long_input_presets_are_the_bench_variants(preset, variant):
    from nmt.bench.long import variant_overrides

    base = ["model=small", "data=multi30k_docs"]
    by_preset = model_config(compose_config([*base, f"attention={preset}"]))
    by_bench = model_config(compose_config([*base, *variant_overrides(variant)]))
    assert by_preset.attention == by_bench.attention
