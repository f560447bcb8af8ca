"""The peers of ``nmt bench translate``: Hugging Face ``MarianMTModel`` built with nmt's dimensions and special ids, and
CTranslate2 converted from exactly that Marian model and run in a process of its own. Each ``*_system`` returns a
runner that decodes its batches with ``beam`` beams and returns how many new tokens it generated.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Callable

import torch

from nmt.bench.common import Batch, WorkerProcess, ct2_forced_tokens
from nmt.errors import first_line


def marian_config(model_cfg, max_positions: int):
    """A MarianConfig with nmt's dimensions and special ids (pad 0, bos 2 starts the decoder, eos 3)."""
    from transformers import MarianConfig

    from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

    return MarianConfig(
        vocab_size=model_cfg.vocab_size,
        d_model=model_cfg.d_model,
        encoder_layers=model_cfg.encoder_layers,
        decoder_layers=model_cfg.decoder_layers,
        encoder_attention_heads=model_cfg.n_heads,
        decoder_attention_heads=model_cfg.n_heads,
        encoder_ffn_dim=model_cfg.d_ff,
        decoder_ffn_dim=model_cfg.d_ff,
        activation_function=model_cfg.activation,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=max_positions,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,  # Marian's default (0) would force the pad id as the last token
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )


class _Vocab:
    """What CTranslate2's converter reads from a tokenizer: our sentencepiece pieces, in id order."""

    bos_token, eos_token, unk_token = "<s>", "</s>", "<unk>"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def get_vocab(self) -> dict[str, int]:
        return {piece: i for i, piece in enumerate(self.pieces)}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.pieces[i]


def _ctranslate2_worker(conn, marian_dir: str, pieces: list[str], threads: int) -> None:
    """The CTranslate2 system in a process of its own: converts the saved Marian model, then decodes on request.

    In the bench's process its OpenMP threads (a second runtime beside torch's) kept competing for the cores after each
    of its runs and slowed whichever torch system ran next, nmt more than Marian.
    """
    try:
        import ctranslate2
    except ImportError:
        conn.send("not installed")
        return
    vocab = _Vocab(pieces)

    class Converter(ctranslate2.converters.TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return vocab

    out_dir = str(Path(marian_dir).parent / "ct2")
    try:
        Converter(marian_dir).convert(out_dir, force=True)
        translator = ctranslate2.Translator(out_dir, device="cpu", intra_threads=threads, inter_threads=1)
    except Exception as error:  # reported in the table's CTranslate2 column, as a missing package is
        conn.send(f"conversion failed: {first_line(error)}")
        return
    conn.send("ready")
    batch_sets: dict[int, list] = {}  # each: batches of token-piece lists
    while (request := conn.recv()) is not None:
        if request[0] == "batches":
            batch_sets[request[1]] = request[2]
            continue
        _, key, beam, length = request
        conn.send(ct2_forced_tokens(translator, batch_sets[key], beam, length))


class CTranslate2Process(WorkerProcess):
    """Handle on the worker process; ``close`` ends it."""

    def __init__(self, marian, pieces: list[str], workdir: Path) -> None:
        # The converter drops the last vocabulary row as Marian's "<pad>" (it starts the decoder from a zero embedding
        # instead), so save a copy with one extra row named "<pad>": the converted model then has exactly our V rows.
        # Our own pad piece is renamed so that the vocabulary stays unique; it never appears in a source.
        extended = copy.deepcopy(marian)
        extended.resize_token_embeddings(len(pieces) + 1, mean_resizing=False)
        extended.save_pretrained(workdir / "marian")
        vocab = ["<nmt_pad>"] + pieces[1:] + ["<pad>"]
        super().__init__(_ctranslate2_worker, (str(workdir / "marian"), vocab, torch.get_num_threads()))
        self.n_batch_sets = 0  # batch lists sent to the worker, which keeps them by number


def ctranslate2_translator(marian, pieces: list[str], workdir: Path):
    """A CTranslate2 worker process holding exactly ``marian``'s weights, or None and the reason there is none."""
    if importlib.util.find_spec("ctranslate2") is None:
        return None, "not installed"
    worker = CTranslate2Process(marian, pieces, workdir)
    if worker.status != "ready":
        worker.close()
        return None, worker.status
    return worker, None


def marian_system(marian, batches: list[Batch], length: int) -> Callable[[int], int]:
    from nmt.data.tokenizer import EOS_ID

    inputs = [(b.src, (torch.arange(b.src.size(1))[None, :] < b.lengths[:, None]).long()) for b in batches]

    def run(beam: int) -> int:
        generated = 0
        with torch.inference_mode():
            for src, mask in inputs:
                out = marian.generate(
                    input_ids=src, attention_mask=mask, num_beams=beam, do_sample=False,
                    min_new_tokens=length, max_new_tokens=length,
                )[:, 1:]  # (B, new tokens): without the decoder start token
                # A row that ended early would be padded after its eos: count up to and including the first eos.
                is_eos = out == EOS_ID
                first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, out.size(1))
                generated += int(first.sum())
        return generated

    return run


def ctranslate2_system(worker: CTranslate2Process, batches: list[Batch], length: int) -> Callable[[int], int]:
    key, worker.n_batch_sets = worker.n_batch_sets, worker.n_batch_sets + 1
    worker.conn.send(("batches", key, [b.pieces for b in batches]))

    def run(beam: int) -> int:
        worker.conn.send(("run", key, beam, length))
        return worker.conn.recv()

    return run
