"""Decoding over the per-layer KV caches: greedy search, batched, stopping as soon as every sentence has ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from nmt.model import Seq2Seq
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class DecodeConfig:
    """How to decode: max length = max_len_a · source length + max_len_b (subwords)."""

    beam: int = 1
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_sentences: Optional[int] = None

    def __post_init__(self) -> None:
        if self.beam != 1:
            raise ValueError(f"decode.beam ({self.beam}): only greedy decoding (beam 1) exists in this version")
        if self.max_len_a < 0 or self.max_len_b < 1:
            raise ValueError(f"decode.max_len_a ({self.max_len_a}) must be >= 0 and max_len_b ({self.max_len_b}) >= 1")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ValueError(f"decode.max_sentences ({self.max_sentences}) must be >= 1 or null")


@torch.no_grad()
def greedy(model: Seq2Seq, src: Tensor, src_lengths: Tensor, cfg: DecodeConfig) -> list[list[int]]:
    """Token ids (without bos/eos) of the greedy translation of each source row."""
    B = src.size(0)
    memory = model.encode(src, src_lengths)
    state = model.init_state(memory, src_lengths)
    max_lens = (cfg.max_len_a * (src_lengths - 1).float() + cfg.max_len_b).long().tolist()
    outputs: list[list[int]] = [[] for _ in range(B)]
    rows = list(range(B))  # original sentence of each still-active row
    tokens = torch.full((B, 1), BOS_ID, device=src.device)
    for step in range(max(max_lens)):
        logits = model.decode_step(tokens, state)[:, -1]  # (active, vocab)
        logits[:, [PAD_ID, BOS_ID]] = float("-inf")
        best = logits.argmax(-1)
        keep = []
        for i, (row, token) in enumerate(zip(rows, best.tolist())):
            if token == EOS_ID or step + 1 >= max_lens[row]:
                if token != EOS_ID:
                    outputs[row].append(token)
                continue
            outputs[row].append(token)
            keep.append(i)
        if not keep:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=src.device)
            state.reorder(index)  # finished rows leave the batch
            best = best[index]
            rows = [rows[i] for i in keep]
        tokens = best[:, None]
    return outputs
