"""Models trained for a few seconds on Multi30k, for tests that need real decisions from a decoder: far from good,
but their translations end, differ and branch (a random model repeats one token until the max length)."""

from __future__ import annotations

import gzip

import torch
import torch.nn.functional as F

from nmt.config import ModelConfig
from nmt.data.batching import collate
from nmt.model import build_model
from tests.conftest import MULTI30K


def multi30k_lines(name: str, n: int) -> list[str]:
    with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def train_briefly(cfg: ModelConfig, tokenizer, steps: int = 100, batch: int = 32, lr: float = 3e-3, warmup: int = 25):
    """``cfg``'s model after ``steps`` Adam steps on batches of ``batch`` length-sorted Multi30k pairs (seed 0), in
    eval mode."""
    src = tokenizer.encode(multi30k_lines("train.en.gz", 8000))
    tgt = tokenizer.encode(multi30k_lines("train.de.gz", 8000))
    order = sorted(range(len(src)), key=lambda i: len(src[i]))
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread is faster on a shared 2-core machine
    try:
        torch.manual_seed(0)
        model = build_model(cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        pick = torch.Generator().manual_seed(0)
        for step in range(steps):
            rows = batches[int(torch.randint(len(batches), (1,), generator=pick))]
            t = collate([src[i] for i in rows], [tgt[i] for i in rows])
            logits = model(t["src"], t["src_lengths"], t["tgt_in"])
            loss = F.cross_entropy(logits.flatten(0, 1), t["tgt_out"].flatten(), ignore_index=0)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
