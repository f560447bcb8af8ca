import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny models: their steps are a few small matmuls, and handing them to a
    thread pool made them ~10x slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this machine has none (run `pytest -m gpu` on a CUDA machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


from nmt.data.corpora import corpus_dir  # noqa: E402

MULTI30K = corpus_dir("multi30k")  # the copy inside the repository (data/multi30k), or the installed wheel's


def multi30k_sample(n: int = 3000) -> list[str]:
    """The first n English and German training sentences of Multi30k (a realistic corpus for tokenizer tests)."""
    import gzip

    lines = []
    for lang in ("en", "de"):
        with gzip.open(MULTI30K / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            lines += [next(f).rstrip("\n") for _ in range(n)]
    return lines
