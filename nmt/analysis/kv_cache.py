"""The KV-cache calculator behind ``nmt attention … --kv``: the bytes of every site's and layer's K/V cache while a
batch is beam-searched, from a ModelConfig alone (no model built, no torch), beside MHA with the same dimensions.

What LLM calculators miss and this one counts:

- cross-attention K/V are projected from the source once and held once per sentence, not once per beam: a sentence's
  beams attend as extra queries of its one source row (nmt.model.seq2seq.DecoderState). Only a cross-attention window
  or global tokens make query positions matter; then every beam row holds its own copy;
- a self-attention window keeps only the last ``window`` positions plus the ``global_tokens`` first ones (KVCache);
- the encoder's self-attention has no cache: the encoder runs once per sentence.

Lengths, as nmt.model.kv_cache_bytes(model, src_ids, hyp_len, beam) measures them:

- ``src``: source positions the encoder sees, eos included (``len(src_ids) + 1``). In a padded batch every sentence's
  cross-attention cache holds the longest source, padding included: give the longest.
- ``tgt``: decoded positions, bos included: what the decoder's self-attention has cached after the step that predicts
  the ``tgt``-th target subword (``hyp_len``).

tests/test_kv_calculator.py checks these numbers against the measured caches of built models, per site and layer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Optional

from nmt.attention.config import AttentionConfig
from nmt.config.model import SITES, ModelConfig

DTYPE_BYTES = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}
KV_DEFAULTS = {"src": 40, "tgt": 40, "beam": 5, "batch": 1, "dtype": "fp32"}
_MEANING = {"src": "source positions, eos included", "tgt": "decoded positions, bos included",
            "beam": "beams per sentence", "batch": "sentences"}


@dataclass(frozen=True)
class KVRequest:
    """What to size: ``batch`` sentences of ``src`` source positions, each decoded with ``beam`` beams to ``tgt``
    positions, K/V stored as ``dtype`` (see the module docstring). Raises ValueError naming a bad value."""

    src: int = 40
    tgt: int = 40
    beam: int = 5
    batch: int = 1
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        for name, meaning in _MEANING.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be an integer >= 1 ({meaning})")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype ({self.dtype!r}) must be one of {', '.join(DTYPE_BYTES)}")

    @property
    def itemsize(self) -> int:
        """Bytes per stored K or V value."""
        return DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class SiteLayerKV:
    """One site of one layer. ``positions``: positions each cache row holds; ``rows``: cache rows per sentence
    (``beam``, or 1 for a cross-attention source row shared by the sentence's beams; 0 where nothing is cached).
    Bytes count K and V: ``2 · rows · positions · n_kv_heads · head_dim · itemsize`` per sentence, × batch per batch."""

    site: str
    layer: int
    variant: str
    n_kv_heads: int
    head_dim: int
    positions: int
    rows: int
    bytes_per_sentence: int
    bytes_per_batch: int
    note: str = ""

    @property
    def cached(self) -> bool:
        return self.rows > 0


@dataclass(frozen=True)
class KVTotals:
    """Decoder cache bytes, summed over layers: self-attention and cross-attention (the encoder caches nothing)."""

    self_attention: int
    cross_attention: int

    @property
    def total(self) -> int:
        return self.self_attention + self.cross_attention

    def as_dict(self) -> dict[str, int]:
        """The dict nmt.model.kv_cache_bytes returns: {"self_attention", "cross_attention", "total"}."""
        return {"self_attention": self.self_attention, "cross_attention": self.cross_attention, "total": self.total}


@dataclass(frozen=True)
class KVPlan:
    """The calculator's answer: one SiteLayerKV per site and layer (``layers``: encoder_self, decoder_self, cross,
    each in layer order) and the same for the MHA baseline (``mha``: every site's n_kv_heads = n_heads, no window, no
    global tokens, the same n_heads and head_dim)."""

    request: KVRequest
    layers: tuple[SiteLayerKV, ...]
    mha: tuple[SiteLayerKV, ...]

    def site(self, site: str, baseline: bool = False) -> list[SiteLayerKV]:
        """The rows of one site, in layer order."""
        return [row for row in (self.mha if baseline else self.layers) if row.site == site]

    def totals(self, per_batch: bool = False, baseline: bool = False) -> KVTotals:
        """Decoder bytes per sentence (or per batch), of this config or (``baseline``) of its MHA baseline."""
        def bytes_of(site: str) -> int:
            return sum(r.bytes_per_batch if per_batch else r.bytes_per_sentence for r in self.site(site, baseline))

        return KVTotals(bytes_of("decoder_self"), bytes_of("cross"))

    def ratio(self, part: str = "total") -> float:
        """This config's bytes over MHA's for ``part`` (self_attention, cross_attention or total); the same per
        sentence and per batch."""
        mine, mha = self.totals().as_dict()[part], self.totals(baseline=True).as_dict()[part]
        return mine / mha


def stored_positions(tgt: int, window: Optional[int], global_tokens: int) -> int:
    """Positions a decoder self-attention KVCache holds after ``tgt`` one-position steps: all of them without a
    window, else the last ``window`` (those the newest query sees) plus the ``global_tokens`` first:
    ``min(tgt, window + global_tokens)``, since nothing is dropped while the window reaches back to the global ones."""
    return tgt if window is None else min(tgt, window + global_tokens)


def mha_baseline(site_cfg: AttentionConfig) -> AttentionConfig:
    """A resolved site config as plain MHA: its n_heads (so its head_dim), K/V heads = n_heads, no window."""
    return replace(site_cfg, n_kv_heads=site_cfg.n_heads, window=None, global_tokens=0)


def _site_rows(cfg: ModelConfig, site: str, site_cfg: AttentionConfig, request: KVRequest) -> list[SiteLayerKV]:
    """One SiteLayerKV per layer of ``site`` configured as ``site_cfg`` (resolved)."""
    head_dim = cfg.d_model // site_cfg.n_heads
    common = {"site": site, "variant": site_cfg.variant, "n_kv_heads": site_cfg.n_kv_heads, "head_dim": head_dim}
    if site == "encoder_self":
        note = "not cached: the encoder runs once per sentence"
        return [SiteLayerKV(layer=i, positions=0, rows=0, bytes_per_sentence=0, bytes_per_batch=0, note=note, **common)
                for i in range(cfg.encoder_layers)]
    if site == "decoder_self":
        positions, rows = stored_positions(request.tgt, site_cfg.window, site_cfg.global_tokens), request.beam
        note = "" if site_cfg.window is None else (
            f"window {site_cfg.window}" + (f" + {site_cfg.global_tokens} global" if site_cfg.global_tokens else "")
            + f": at most {site_cfg.window + site_cfg.global_tokens} positions")
    else:  # cross: the whole source, once per sentence unless query positions matter (DecoderState.share_sources)
        positions = request.src
        rows = 1 if site_cfg.sees_every_key else request.beam
        note = (f"one source row per sentence, shared by its {request.beam} beams" if site_cfg.sees_every_key
                else "one source row per beam: a cross-attention window makes query positions matter")
    per_sentence = 2 * rows * positions * site_cfg.n_kv_heads * head_dim * request.itemsize  # K and V
    return [SiteLayerKV(layer=i, positions=positions, rows=rows, bytes_per_sentence=per_sentence,
                        bytes_per_batch=per_sentence * request.batch, note=note, **common)
            for i in range(cfg.decoder_layers)]


def kv_cache_plan(cfg: ModelConfig, src: int = 40, tgt: int = 40, beam: int = 5, batch: int = 1,
                  dtype: str = "fp32") -> KVPlan:
    """The KV-cache bytes of ``cfg``'s sites and layers for ``batch`` sentences of ``src`` source positions (eos
    included) decoded with ``beam`` beams to ``tgt`` positions, K/V in ``dtype`` (fp32/float32, fp16/float16,
    bf16/bfloat16), beside the MHA baseline. Raises ValueError naming a bad value."""
    request = KVRequest(src=src, tgt=tgt, beam=beam, batch=batch, dtype=dtype)
    layers, mha = [], []
    for site in SITES:
        site_cfg = cfg.site(site)
        layers += _site_rows(cfg, site, site_cfg, request)
        mha += _site_rows(cfg, site, mha_baseline(site_cfg), request)
    return KVPlan(request, tuple(layers), tuple(mha))


def split_kv_args(args: list[str]) -> tuple[list[str], Optional[list[str]]]:
    """``nmt attention``'s words → (Hydra overrides, the words after ``--kv`` or None without ``--kv``)."""
    if "--kv" not in args:
        return args, None
    at = args.index("--kv")
    return args[:at], args[at + 1 :]


def parse_kv_args(args: list[str]) -> dict[str, int | str]:
    """``["src=40", "beam=5", …]`` (the words after ``--kv``) → keyword arguments of kv_cache_plan, checked. Keys
    src, tgt, beam, batch (integers) and dtype, each optional (defaults KV_DEFAULTS); a later one wins. Raises
    ValueError with one line naming a malformed word, an unknown key (did you mean …?) or a bad value."""
    values: dict[str, int | str] = {}
    keys = ", ".join(KV_DEFAULTS)
    for word in args:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"--kv takes KEY=VALUE words, got {word!r} (keys: {keys})")
        if key not in KV_DEFAULTS:
            close = difflib.get_close_matches(key, list(KV_DEFAULTS), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"--kv: unknown key {key!r}{hint} (keys: {keys}; Hydra overrides go before --kv)")
        if key == "dtype":
            values[key] = value
            continue
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"--kv {key}={value!r}: not an integer ({_MEANING[key]})") from None
    try:
        KVRequest(**values)  # the same checks as kv_cache_plan's, before any config is composed
    except ValueError as error:
        raise ValueError(f"--kv {error}") from None
    return values


def human_bytes(n: int) -> str:
    """``1,638,400 B (1.6 MiB)``: exact bytes, then binary units from KiB up."""
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n:,} B" if unit == "B" else f"{n:,} B ({size:.1f} {unit})"


def _layer_span(rows: list[SiteLayerKV]) -> str:
    return str(rows[0].layer) if len(rows) == 1 else f"{rows[0].layer}-{rows[-1].layer}"


def _table_lines(plan: KVPlan) -> list[str]:
    """One line per decoder site and layer; the encoder, which caches nothing, as one line."""
    head = (f"{'site':13s} {'layer':>5s}  {'variant':24s} {'kv_heads':>8s} {'head_dim':>8s} {'positions':>9s} "
            f"{'rows':>4s} {'bytes/sentence':>14s} {'bytes/batch':>14s}  note")
    lines = [head]
    for site in SITES:
        rows = plan.site(site)
        shown = [rows] if site == "encoder_self" else [[row] for row in rows]
        for group in shown:
            r = group[0]
            lines.append(f"{site:13s} {_layer_span(group):>5s}  {r.variant:24s} {r.n_kv_heads:8d} {r.head_dim:8d} "
                         f"{r.positions:9d} {r.rows:4d} {r.bytes_per_sentence:14,d} {r.bytes_per_batch:14,d}  {r.note}")
    return lines


def format_kv_plan(plan: KVPlan) -> str:
    """The table ``nmt attention … --kv`` prints: the request, one line per site and layer, then the decoder's totals
    (self, cross, all) per sentence and per batch, MHA's per sentence, and the ratio to MHA (the same per sentence and
    per batch). Ends with a newline."""
    q = plan.request
    lines = [f"KV cache: src={q.src} source positions (eos included), tgt={q.tgt} decoded positions (bos included), "
             f"beam={q.beam}, batch={q.batch}, dtype={q.dtype} ({q.itemsize} bytes per value)", *_table_lines(plan), ""]
    mine, mine_batch, mha = plan.totals(), plan.totals(per_batch=True), plan.totals(baseline=True)
    lines.append(f"{'decoder total':13s} {'bytes/sentence':>14s} {'bytes/batch':>24s} {'MHA bytes/sentence':>18s}  "
                 "vs MHA")
    for label, part in (("  self", "self_attention"), ("  cross", "cross_attention"), ("  all", "total")):
        ratio = plan.ratio(part)
        smaller = f" ({1 / ratio:.3g}x smaller)" if ratio < 1 else ""
        lines.append(f"{label:13s} {mine.as_dict()[part]:14,d} {human_bytes(mine_batch.as_dict()[part]):>24s} "
                     f"{mha.as_dict()[part]:18,d}  {ratio:.4g}x{smaller}")
    return "\n".join(lines) + "\n"
