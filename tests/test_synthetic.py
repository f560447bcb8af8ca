"""nmt.data.synthetic: the offline WMT-size corpus — aligned lines of 1–3 Multi30k pairs, deterministic, mostly
distinct, valid/test drawn from Multi30k's own held-out pairs, and read by data=local."""

import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest

from nmt.config.train import DataConfig
from nmt.data.corpora import corpus_dir
from nmt.data.load import DataError, load_split
from nmt.data.synthetic import SyntheticCorpus, distinct_share, draw_lines, write_corpus
from nmt.data.textio import read_text


def pool(split, lang):
    return [s.strip() for s in read_text(corpus_dir("multi30k") / f"{split}.{lang}.gz")]


def test_lines_join_aligned_multi30k_pairs_and_splits_keep_to_their_pools(tmp_path):
    hashes = array("q")
    written = write_corpus(tmp_path, SyntheticCorpus(pairs=3000, valid=50, test=40, seed=3), hashes)
    assert sorted(written) == ["test.de", "test.en", "train.de", "train.en", "valid.de", "valid.en"]
    rng = np.random.default_rng(3)  # the same draws, replayed: each line is exactly its pairs, in order
    for split, source, n in (("train", "train", 3000), ("valid", "val", 50), ("test", "test_2016_flickr", 40)):
        en, de = read_text(tmp_path / f"{split}.en"), read_text(tmp_path / f"{split}.de")
        assert len(en) == len(de) == n
        src_pool, tgt_pool = pool(source, "en"), pool(source, "de")
        picks = np.concatenate(list(draw_lines(n, len(src_pool), rng)))
        counts = (picks >= 0).sum(1)
        assert set(counts.tolist()) == {1, 2, 3}
        for line, (e, d) in enumerate(zip(en, de)):
            chosen = [i for i in picks[line] if i >= 0]
            assert e == " ".join(src_pool[i] for i in chosen) and d == " ".join(tgt_pool[i] for i in chosen)
    train = read_text(tmp_path / "train.en")
    assert len(set(train)) / len(train) > 0.7  # single-pair lines repeat; joined ones almost never
    assert distinct_share(hashes) == len(set(zip(train, read_text(tmp_path / "train.de")))) / 3000
    words = sorted(len(line.split()) for line in train)
    assert 18 <= np.mean(words) <= 30 and words[len(words) // 10] <= 12 and words[-1] >= 45  # WMT-like spread


def test_deterministic_for_a_seed_and_read_by_data_local(tmp_path):
    a = write_corpus(tmp_path / "a", SyntheticCorpus(pairs=500, valid=10, test=10, compress=True))
    b = write_corpus(tmp_path / "b", SyntheticCorpus(pairs=500, valid=10, test=10, compress=True))
    assert all(read_text(a[name]) == read_text(b[name]) for name in a)
    assert not list((tmp_path / "a").glob("*.partial"))
    cfg = DataConfig(path=str(tmp_path / "a"), file_pattern="{split}.{lang}.gz", cache_dir=str(tmp_path / "cache"))
    train = load_split(cfg, "train")
    assert train.num_rows == 500 and train[0]["src"] == read_text(a["train.en"])[0]
    # Read with the plain pattern, the .gz files are named, with the override that reads them, quoted for a shell.
    plain = DataConfig(path=str(tmp_path / "a"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"train\.en: no such file \(.*\); train\.en\.gz is there: add "
                                        r"\"data\.file_pattern='\{split\}\.\{lang\}\.gz'\""):
        load_split(plain, "train")


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"pairs \(0\) must be >= 1"):
        SyntheticCorpus(pairs=0)
    with pytest.raises(ValueError, match="Multi30k has no language 'xx'"):
        SyntheticCorpus(pairs=1, tgt_lang="xx")
    script = Path(__file__).parents[1] / "scripts" / "synthetic_corpus.py"
    result = subprocess.run([sys.executable, str(script), "--pairs", "-5", "--out",
                             str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr == "synthetic_corpus.py: pairs (-5) must be >= 1\n"
    result = subprocess.run([sys.executable, str(script), "--pairs", "300", "--valid", "5", "--test", "5", "--out",
                             str(tmp_path / "y")], capture_output=True, text=True)
    assert result.returncode == 0 and "% of the 300 training lines are distinct\n" in result.stdout, result.stderr
