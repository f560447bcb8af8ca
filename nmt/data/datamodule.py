"""LightningDataModule: corpus → sentencepiece → cleaned, encoded pairs → token-budget batches."""

from __future__ import annotations

import itertools
import logging
from typing import Iterator, Optional

import lightning as L
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from nmt.config.train import DataConfig
from nmt.data.batching import TrainBatches, collate, subword_lengths, token_batches
from nmt.data.encode import clean_and_encode, encode_eval
from nmt.data.load import (
    DataError,
    load_split,
    local_files,
    seek_check,
    seek_refusal,
    shard_stamp,
    split_files,
    stream_from,
)
from nmt.data.stream_batches import StreamBatches
from nmt.data.tokenizer import Tokenizer, TokenizerSettings, load_or_train
from nmt.errors import plural

log = logging.getLogger(__name__)


def spm_sentences(ds, max_sentences: int) -> Iterator[str]:
    """sentencepiece's training input from an Arrow dataset of ``src``/``tgt`` pairs: the non-blank sides of every
    pair, in order, when there are at most ``max_sentences // 2`` pairs; else of a uniform sample of that many pairs
    (seed 0, so the same corpus gives the same model), read a column batch at a time. sentencepiece samples
    ``input_sentence_size`` on its own, but only after Python has handed it every sentence (9M at 4.5M pairs)."""
    pairs = max(1, max_sentences // 2)
    if ds.num_rows > pairs:
        ds = ds.select(np.sort(np.random.default_rng(0).choice(ds.num_rows, pairs, replace=False)))
    for batch in ds.select_columns(["src", "tgt"]).iter(batch_size=10_000):
        for src, tgt in zip(batch["src"], batch["tgt"]):
            if src.strip():
                yield src
            if tgt.strip():
                yield tgt


class TranslationData(L.LightningDataModule):
    """``tokenizer``: the sentencepiece model to use (``nmt train init_from=DIR``: DIR's); None trains one on the
    training split, or reuses the cached one."""

    def __init__(self, cfg: DataConfig, seed: int, tokenizer: Optional[Tokenizer] = None) -> None:
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.given_tokenizer = tokenizer
        self.tokenizer: Optional[Tokenizer] = tokenizer
        self.train_set = None
        self.valid_set = None
        self.cleaning = None
        self.stream_batches: Optional[StreamBatches] = None  # the streamed training batches, for checkpoints

    # -- corpus and tokenizer -------------------------------------------------------------------------------------
    def _raw_train(self):
        ds = load_split(self.cfg, "train", streaming=self.cfg.streaming)
        if not self.cfg.streaming and ds.num_rows == 0:
            raise DataError(f"the training split is empty: {split_files(self.cfg, 'train')} holds no pairs")
        if self.cfg.max_train_examples is not None:
            ds = ds.take(self.cfg.max_train_examples) if self.cfg.streaming else ds.select(
                range(min(self.cfg.max_train_examples, ds.num_rows))
            )
        return ds

    def _fingerprint(self, raw) -> str:
        if self.cfg.streaming:  # no arrow fingerprint: name the source, and for local files their size and mtime
            files = local_files(self.cfg, self.cfg.splits.train) if self.cfg.path is not None else []
            stamps = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
            source = self.cfg.hub_id if self.cfg.path is None else self.cfg.path
            return (f"stream:{source}:{self.cfg.hub_config}:{self.cfg.splits.train}:"
                    f"{self.cfg.max_train_examples}:{stamps}")
        return f"{raw._fingerprint}:{self.cfg.src_lang}-{self.cfg.tgt_lang}"

    def load_tokenizer(self, raw=None) -> Tokenizer:
        if self.given_tokenizer is not None:
            return self.given_tokenizer  # self.tokenizer has been it since __init__
        raw = raw if raw is not None else self._raw_train()
        settings = TokenizerSettings(
            self.cfg.vocab_size, self.cfg.spm_model_type, self.cfg.character_coverage, self.cfg.spm_max_sentences
        )

        def sentences():
            if not self.cfg.streaming:
                yield from spm_sentences(raw, settings.max_sentences)
                return
            for pair in itertools.islice(raw, settings.max_sentences):
                for text in (pair["src"], pair["tgt"]):
                    if text.strip():
                        yield text

        fingerprint = self._fingerprint(raw)
        if not self.cfg.streaming and raw.num_rows > settings.max_sentences // 2:
            fingerprint += ":sampled-v1"  # not the model an older nmt trained on every pair of this corpus
        self.tokenizer = load_or_train(sentences, settings, fingerprint, self.cfg.cache_dir)
        return self.tokenizer

    def prepare_data(self) -> None:
        """Once per node, before the other ranks start: download/cache the corpus and train the tokenizer."""
        raw = self._raw_train()
        tokenizer = self.load_tokenizer(raw)
        if not self.cfg.streaming:
            clean_and_encode(raw, tokenizer, self.cfg, "train")
        self._valid(tokenizer)

    def _valid(self, tokenizer: Tokenizer):
        """The encoded validation pairs; DataError naming the split when it is empty (validation loss, BLEU, early
        stopping and best.ckpt all need at least one pair)."""
        ds = load_split(self.cfg, "valid")
        if ds.num_rows == 0:
            raise DataError(f"the validation split is empty: {split_files(self.cfg, 'valid')} holds no pairs; "
                            "validation needs at least one")
        return encode_eval(ds, tokenizer, self.cfg, "valid")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        raw = self._raw_train()
        tokenizer = self.load_tokenizer(raw)
        self.train_set, self.cleaning = clean_and_encode(raw, tokenizer, self.cfg, "train", self.cfg.streaming)
        if not self.cfg.streaming:  # a stream's counts are logged per pass, as its pairs go by
            log.info("%s", self.cleaning)
            if self.train_set.num_rows == 0:
                raise DataError(f"no training pairs left ({self.cleaning}); check data.max_len and data.max_ratio")
        self.valid_set = self._valid(tokenizer)

    # -- loaders ----------------------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_batches(self):
        rank, world = self._rank()
        if self.cfg.streaming:
            stream = self._rank_stream(self.train_set, rank, world)
            self.stream_batches = StreamBatches(stream, self.cfg.max_tokens, self.cfg.stream_buffer, self.seed, rank,
                                                world, own_rows=world > 1, cleaning=self.cleaning,
                                                counts_all=world > 1 and self.train_set.n_shards % world != 0,
                                                stamp=lambda shard: shard_stamp(self.cfg, shard))
            return self.stream_batches
        return TrainBatches(self.train_set, self.cfg.max_tokens, self.seed, rank, world,
                            self.cleaning.lengths if self.cleaning is not None else None)

    def _rank_stream(self, stream, rank: int, world: int):
        """This rank's rows of the stream (datasets' split_dataset_by_node): whole shards — files — when their count
        divides by the world size, so no pair is read by two ranks; else every rank reads everything and keeps every
        world-th row, which the warning says how to avoid."""
        if world == 1:
            return stream
        shards = stream.n_shards
        if shards % world:
            log.warning("data: the training stream has %s, not a multiple of the %d ranks, so every rank "
                        "reads all of it and keeps one pair in %d; split the corpus into N·%d files "
                        "(data.splits.train='train.*' reads train.00000.en, …) to give each rank its own files",
                        plural(shards, "shard"), world, world, world)
        return split_dataset_by_node(stream, rank=rank, world_size=world)

    def stream_state(self, position: torch.Tensor) -> Optional[dict]:
        """What a checkpoint holds to resume this rank's stream in place right after batch ``position`` ([epoch,
        index]), or None (not streaming, nothing consumed, or that batch's chunk no longer held: then a resume
        replays the stream to ``position``)."""
        batches = self.stream_batches
        if batches is None or int(position[1]) < 0:
            return None
        try:
            return batches.state_at(*(int(v) for v in position.tolist()))
        except KeyError:
            return None

    def _resume_in_place(self, batches: StreamBatches, state: dict, rank: int, world: int) -> Optional[str]:
        """Load this rank's checkpointed stream ``state`` into ``batches``: seeking the shard files to its saved
        ``at`` when the stream can (nmt.data.load.seek_refusal), else through datasets' state. Logs which; returns
        why neither can (a pass read from a rebuilt stream saves no datasets state), None when one did."""
        epoch, index = state["position"][:2].tolist()
        who = f" for rank {rank} of {world}" if world > 1 else ""
        at = state["at"].tolist() if all(key in state for key in ("at", "done", "files")) else None
        refusal = seek_refusal(self.cfg, world) or (
            None if at is not None else "the checkpoint holds no file position (saved by an older nmt)")
        changed = seek_check(self.cfg, at, state["files"].tolist()) if refusal is None else None
        if changed is not None:
            log.warning("data: rank %d cannot resume by seeking the shard files: %s", rank, changed)
            refusal = changed
        if refusal is None:
            rest = stream_from(self.cfg, at, state["done"].tolist())  # every shard, as the saved stream had them
            rest, _ = clean_and_encode(rest, self.tokenizer, self.cfg, "train", streaming=True, stats=self.cleaning)
            batches.load_state(state, self._rank_stream(rest, rank, world))
            shard, line, src_end, tgt_end = at
            log.info("data: resuming the stream in place%s at epoch %d batch %d by seeking: shard %d after line %d "
                     "(byte %d of the source file, %d of the target; %d earlier shards of this pass skipped "
                     "unopened); no consumed line is read again", who, epoch, index, shard, line, src_end, tgt_end,
                     len(state["done"]))
            return None
        if state["stream"] is None:
            return refusal
        batches.load_state(state)
        log.info("data: resuming the stream in place%s at epoch %d batch %d from datasets' state, which re-reads the "
                 "consumed lines of the current shard (no seeking: %s)", who, epoch, index, refusal)
        return None

    def train_dataloader(self) -> DataLoader:
        batches = self.train_batches()
        module = self.trainer.lightning_module if self.trainer is not None else None
        rank, world = self._rank()
        states = getattr(module, "stream_states", None) if module is not None else None
        mine = states[rank] if states is not None and len(states) == world else None
        state = mine["state"] if mine is not None and isinstance(batches, StreamBatches) else None
        refusal = self._resume_in_place(batches, state, rank, world) if state is not None else "none saved"
        if refusal is not None and module is not None and int(module.data_position[1]) >= 0:
            # Each rank replays to its own last batch: with its own shards, its position is not rank 0's.
            position = mine["position"] if mine is not None else module.data_position
            if states is not None and mine is None:
                log.warning("data: the checkpoint's stream state is for %s, not %d: replaying the stream to "
                            "the saved position instead", plural(len(states), "rank"), world)
            elif state is not None:
                log.warning("data: rank %d's stream state cannot resume in place (%s): replaying the stream to the "
                            "saved position instead", rank, refusal)
            elif mine is not None:
                log.warning("data: the checkpoint holds no stream state for rank %d (its last batch's chunk had "
                            "been passed): replaying the stream to the saved position instead", rank)
            batches.resume_after(*position.tolist())
            log.info("data: resuming after epoch %d batch %d", *position.tolist())
        # Its own generator: creating the iterator must not draw from the global RNG that drives dropout.
        return DataLoader(batches, batch_size=None, num_workers=0, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        ds = self.valid_set
        src, tgt = ds["src_ids"], ds["tgt_ids"]
        lens_s, lens_t = subword_lengths(ds, "src_ids"), subword_lengths(ds, "tgt_ids")
        rank, world = self._rank()
        if len(src) < world:
            raise DataError(f"the validation set has {plural(len(src), 'pair')}, fewer than the {world} ranks")
        # Pairs, not batches, are dealt to ranks, so every rank gets at least one batch.
        mine = np.arange(len(src))[rank::world]
        budget = self.cfg.valid_max_tokens or self.cfg.max_tokens
        batches = [mine[b] for b in token_batches(lens_s[mine], lens_t[mine], budget, rng=None)]
        collated = [collate([src[i] for i in b], [tgt[i] for i in b]) for b in batches]
        return DataLoader(collated, batch_size=None, num_workers=0, generator=torch.Generator())
