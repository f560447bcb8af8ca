"""Typed configuration of a training run (data, optimisation, trainer); registered as Hydra schemas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from nmt.config import DecodeConfig, ModelConfig
from nmt.precision import PRECISIONS

FORMATS = ("text", "tsv", "jsonl", "parquet")
SPM_TYPES = ("bpe", "unigram")
SCHEDULERS = ("inverse_sqrt", "cosine")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} ({value!r}) must be one of {', '.join(allowed)}")


@dataclass
class SplitNames:
    """The names of the splits in the corpus (file prefixes for local files, split names on the Hub)."""

    train: str = "train"
    valid: str = "validation"
    test: Optional[str] = "test"


@dataclass
class DataConfig:
    """A parallel corpus, its sentencepiece model, cleaning and batching.

    Local files (``path`` set): ``format`` text is one file per language, ``file_pattern`` with ``{split}`` and
    ``{lang}`` (``.gz`` is read transparently); tsv (a header row naming the languages), jsonl and parquet hold one
    file per split with a column per language or a ``translation: {lang: text}`` column. Hub datasets (``path`` null,
    ``hub_id`` set) follow the ``translation: {lang: text}`` convention of wmt14 / iwslt2017 / opus.
    ``bleu_tokenize`` is sacreBLEU's tokenizer for validation BLEU: null for its default (13a, detokenized text),
    ``none`` for references that are already tokenized (multi30k_tok).
    ``spm_max_sentences`` caps sentencepiece's training sample (``input_sentence_size``): a larger corpus gives it a
    uniform sample of ``spm_max_sentences // 2`` pairs. ``num_proc`` is the processes that encode the training split
    (datasets' ``map(num_proc=)``); null: one per CPU core, at most 8, from 100,000 pairs up, else 1.
    """

    name: str = "corpus"
    src_lang: str = "en"
    tgt_lang: str = "de"
    path: Optional[str] = None
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    format: str = "text"
    file_pattern: str = "{split}.{lang}"
    splits: SplitNames = field(default_factory=SplitNames)
    streaming: bool = False
    max_train_examples: Optional[int] = None
    max_len: int = 250
    max_ratio: float = 3.0
    vocab_size: int = 8000
    spm_model_type: str = "bpe"
    character_coverage: float = 1.0
    spm_max_sentences: int = 2_000_000
    num_proc: Optional[int] = None
    max_tokens: int = 4096
    valid_max_tokens: Optional[int] = None
    stream_buffer: int = 100_000
    cache_dir: str = "data"
    bleu_tokenize: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.splits, dict):
            self.splits = SplitNames(**self.splits)
        if self.src_lang == self.tgt_lang:
            raise ValueError(f"data.src_lang and data.tgt_lang are both {self.src_lang!r}")
        if self.path is None and self.hub_id is None:
            raise ValueError("set data.path (local files) or data.hub_id (a Hugging Face Hub dataset)")
        _check_choice("data.format", self.format, FORMATS)
        _check_choice("data.spm_model_type", self.spm_model_type, SPM_TYPES)
        if self.format == "text" and "{lang}" not in self.file_pattern:
            raise ValueError(f"data.file_pattern ({self.file_pattern!r}) needs {{lang}} for format text")
        if self.format != "text" and "{lang}" in self.file_pattern:
            raise ValueError(
                f"data.file_pattern ({self.file_pattern!r}): format {self.format} keeps both languages in one file "
                "per split; use {split} only, e.g. '{split}." + self.format + "'"
            )
        if self.num_proc is not None and self.num_proc < 1:
            raise ValueError(f"data.num_proc ({self.num_proc}) must be >= 1 or null")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ValueError(f"data.max_train_examples ({self.max_train_examples}) must be >= 1 or null")
        if self.valid_max_tokens is not None and self.valid_max_tokens < self.max_len + 2:
            raise ValueError(
                f"data.valid_max_tokens ({self.valid_max_tokens}) must hold one sentence of data.max_len "
                f"({self.max_len}) + 2"
            )
        for name in ("max_len", "vocab_size", "max_tokens", "stream_buffer", "spm_max_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} ({getattr(self, name)}) must be >= 1")
        if self.max_ratio < 1:
            raise ValueError(f"data.max_ratio ({self.max_ratio}) must be >= 1")
        if self.max_tokens < self.max_len + 2:
            raise ValueError(
                f"data.max_tokens ({self.max_tokens}) must hold one sentence of data.max_len ({self.max_len}) + 2"
            )
        if not 0 < self.character_coverage <= 1:
            raise ValueError(f"data.character_coverage ({self.character_coverage}) must be in (0, 1]")


@dataclass
class OptimConfig:
    """AdamW with inverse-sqrt warmup (or cosine), label-smoothed cross-entropy."""

    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.0
    scheduler: str = "inverse_sqrt"
    warmup_steps: int = 4000
    min_lr: float = 0.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        _check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        if self.lr <= 0:
            raise ValueError(f"optim.lr ({self.lr}) must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps ({self.warmup_steps}) must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"optim.label_smoothing ({self.label_smoothing}) must be in [0, 1)")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr ({self.min_lr}) must be in [0, optim.lr ({self.lr})]")


@dataclass
class TrainerConfig:
    """The Lightning Trainer settings we expose (see lightning.Trainer for each)."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # auto: bf16-mixed where the CPU or GPU has bf16 matrix units (nmt.precision)
    max_steps: int = 100_000
    val_every_n_steps: int = 1000
    val_max_sentences: Optional[int] = None  # validation BLEU on the first N validation sentences (null: all)
    checkpoint_every_n_steps: Optional[int] = None
    keep_checkpoints: int = 1  # periodic checkpoints kept (step-NNNNNNN.ckpt), the newest ones: `nmt average` input
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    patience: int = 10
    fast_dev_run: int = 0
    enable_progress_bar: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "val_every_n_steps", "accumulate_grad_batches", "num_nodes", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} ({getattr(self, name)}) must be >= 1")
        if self.val_max_sentences is not None and self.val_max_sentences < 1:
            raise ValueError(f"trainer.val_max_sentences ({self.val_max_sentences}) must be >= 1 or null")
        if self.checkpoint_every_n_steps is not None and self.checkpoint_every_n_steps < 1:
            raise ValueError(f"trainer.checkpoint_every_n_steps ({self.checkpoint_every_n_steps}) must be >= 1")
        if self.keep_checkpoints < 1:
            raise ValueError(f"trainer.keep_checkpoints ({self.keep_checkpoints}) must be >= 1")
        if self.keep_checkpoints > 1 and self.checkpoint_every_n_steps is None:
            raise ValueError(f"trainer.keep_checkpoints ({self.keep_checkpoints}) needs "
                             "trainer.checkpoint_every_n_steps")
        for name in ("gradient_clip_val", "patience", "fast_dev_run"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} ({getattr(self, name)}) must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision ({self.precision!r}) must be one of {', '.join(PRECISIONS)}")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"trainer.accelerator ({self.accelerator!r}) must be one of {', '.join(ACCELERATORS)}")
        devices_ok = ((isinstance(self.devices, int) and (self.devices >= 1 or self.devices == -1))
                      or self.devices == "auto")
        if not devices_ok and not (isinstance(self.devices, (list, tuple)) and self.devices):
            raise ValueError(f"trainer.devices ({self.devices!r}) must be a count >= 1, -1 (all), 'auto' "
                             "or a list of ids")


@dataclass
class TrainConfig:
    """The root config of ``nmt train``.

    ``init_from``: an exported model directory whose weights and sentencepiece model a fresh run starts from (new
    optimizer and schedule, step 0); the run's model config must match the directory's (`nmt.training.init_from`). With
    ``resume`` the run's own checkpoints/last.ckpt wins once it exists.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(path="."))
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 1234
    run_dir: Optional[str] = None
    resume: bool = False
    trace_batches: bool = False
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        # The directory itself is checked with the command line (nmt.training.init_from.check_init_from), as data
        # files are.
        if self.init_from is not None and not str(self.init_from).strip():
            raise ValueError(f"init_from ({self.init_from!r}) must name a model directory, or be null")
