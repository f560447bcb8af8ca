"""What `nmt bench long` measures for one k: the pseudo-documents' batches, training target tokens/s and peak memory,
forced-length decoding and KV-cache bytes of every attention variant, and which backend ``auto`` ran at each site."""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from nmt.bench.common import Batch, make_batches, peak_bytes
from nmt.bench.train import Trainee, tokens_per_second
from nmt.config import ModelConfig
from nmt.model import build_model, kv_cache_bytes

CPU = torch.device("cpu")


class BackendRecorder:
    """Counts which kernel each attention call ran on, per system, stage and site: {(system, stage): {site:
    Counter(backend)}}. ``auto`` is resolved by `nmt.attention.dispatch.choose_backend`, which `attend` looks up
    in its module at every call, so wrapping that name sees every choice without changing the dispatcher."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], dict[str, Counter]] = {}

    @contextlib.contextmanager
    def recording(self, system: str, stage: str) -> Iterator[None]:
        from nmt.attention import dispatch

        chosen = dispatch.choose_backend
        sites = self.counts.setdefault((system, stage), {})

        def choose(site, *args, **kwargs):
            backend = chosen(site, *args, **kwargs)
            sites.setdefault(site, Counter())[backend] += 1
            return backend

        dispatch.choose_backend = choose
        try:
            yield
        finally:
            dispatch.choose_backend = chosen

    def summary(self, system: str, stage: str) -> dict[str, dict[str, float]]:
        """{site: {backend: share of that site's calls}}; sites whose backend is explicit (not auto) are absent."""
        order = {site: i for i, site in enumerate(("encoder_self", "decoder_self", "cross"))}
        sites = sorted(self.counts.get((system, stage), {}).items(), key=lambda item: order.get(item[0], 3))
        return {site: {name: n / sum(counter.values()) for name, n in counter.most_common()} for site, counter in sites}


@dataclass
class KData:
    """One k's inputs: training batches (dicts of nmt's collate: src (B, S), src_lengths (B,), tgt_in / tgt_out
    (B, T)), decoding batches of validation documents, and their lengths in subwords."""

    k: int
    train: list[dict]
    decode: list[Batch]
    forced_length: int  # new tokens every decoded document gets: its mean reference length + eos
    kv_source: list[int]  # the validation document of median source length, subword ids without eos
    lengths: dict[str, float] = field(default_factory=dict)
    cleaning: str = ""


def load_k(k: int, cfg, steps: int, decode_docs: int, decode_batch: int) -> KData:
    """The first ``steps`` training batches of the k-document corpus ``cfg.data`` (the order `nmt train` reads them
    in), and its first ``decode_docs`` validation documents sorted by length in batches of ``decode_batch``."""
    from nmt.data.datamodule import TranslationData

    data = TranslationData(cfg.data, cfg.seed)
    data.setup()
    train = list(itertools.islice(iter(data.train_batches()), steps))
    valid = data.valid_set.select(range(min(decode_docs, data.valid_set.num_rows)))
    sources, targets = list(valid["src_ids"]), list(valid["tgt_ids"])
    decode = make_batches(sources, None, decode_batch)
    median = sorted(sources, key=len)[len(sources) // 2]  # the same (stable) order as the batches
    train_src = [int(n) for b in train for n in b["src_lengths"]]
    train_tgt = [int((row != 0).sum()) for b in train for row in b["tgt_out"]]
    lengths = {"train_source_mean": statistics.fmean(train_src), "train_target_mean": statistics.fmean(train_tgt),
               "train_source_max": max(train_src), "decode_source_mean": statistics.fmean(len(s) + 1 for s in sources),
               "decode_target_mean": statistics.fmean(len(t) + 1 for t in targets)}
    return KData(k, train, decode, round(lengths["decode_target_mean"]), median, lengths,
                 str(data.cleaning))


def train_speeds(configs: dict[str, ModelConfig], data: KData, warmup: int, repeats: int,
                 recorder: BackendRecorder) -> dict[str, list[float]]:
    """Per variant, target tokens/s of its training steps over ``data.train`` in each repeat (fresh models from one
    seed each repeat; the variants alternate step by step, `tokens_per_second`)."""
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        models = {}
        for name, cfg in configs.items():
            torch.manual_seed(0)
            models[name] = build_model(cfg)
        torch.manual_seed(0)
        speeds = tokens_per_second(models, data.train, warmup, lambda name: recorder.recording(name, "train"))
        for name, speed in speeds.items():
            runs[name].append(speed)
    return runs


def decode_speeds(configs: dict[str, ModelConfig], data: KData, beam: int, repeats: int,
                  recorder: BackendRecorder) -> dict[str, dict]:
    """Per variant, the median seconds to decode ``data.decode`` with every document forced to
    ``data.forced_length`` new tokens (random weights never end sensibly), the variants alternating batch by batch
    (`nmt.bench.translate.time_systems`), and the tokens generated."""
    from nmt.bench.translate import nmt_system, time_systems

    def recorded(name: str, run: Callable[[int], int]) -> Callable[[int], int]:
        def call(b: int) -> int:
            with recorder.recording(name, "decode"):
                return run(b)
        return call

    systems, warm = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        systems[name] = [recorded(name, nmt_system(model, [b], data.forced_length)) for b in data.decode]
        warm[name] = nmt_system(model, data.decode[:1], data.forced_length)
    return time_systems(systems, beam, repeats, warm)


def kv_bytes(configs: dict[str, ModelConfig], data: KData, beam: int) -> dict[str, dict[str, int]]:
    """Per variant, the decoder's KV-cache bytes for one document (the median-length validation source) decoded to
    ``data.forced_length`` positions with ``beam`` beams: {"self_attention", "cross_attention", "total"}, read from
    the allocated cache tensors (`nmt.model.kv_cache_bytes`)."""
    result = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        result[name] = kv_cache_bytes(model, data.kv_source, data.forced_length, beam)
    return result


def train_peak_bytes(configs: dict[str, ModelConfig], data: KData) -> dict[str, int]:
    """Per variant, the peak memory one CPU training step adds on top of what is already resident — the weights,
    gradients and AdamW state, which exist after one untimed step first — on the largest of the k's sampled training
    batches (most padded tokens): activations and temporaries, so a variant with fewer weights (GQA) shows no saving
    from them here. `nmt.bench.common.peak_bytes` reads the resident set. Run after every timing: it makes large
    allocations fresh mmaps, which slows them."""
    largest = max(data.train, key=lambda b: b["src"].numel() + b["tgt_in"].numel())
    result = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        trainee = Trainee(build_model(cfg))
        trainee.step(largest)
        result[name] = peak_bytes(lambda step=trainee.step: step(largest), CPU)
    return result
