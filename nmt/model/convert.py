"""``nmt convert MODEL --out DIR SITE=N …``: a trained model converted to fewer K/V heads per attention site.

Each new K/V head is the mean of the old heads of its group — the K and V projection rows (and biases) of the heads
whose query heads it now serves are averaged (Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer
Models from Multi-Head Checkpoints", §2.1) — and every other weight is copied unchanged. The converted model runs as
is and recovers most of the original quality after a short uptraining (`nmt train init_from=DIR`: Ainslie et al.
uptrain for 5% of the original steps).

Sites: ``encoder_self``, ``decoder_self``, ``cross``, and the shorthands ``decoder`` (decoder_self and cross: the
sites whose K/V are cached while decoding) and ``all``; a later argument overrides an earlier one for the same site
(``all=1 cross=2``). N must divide the site's current n_kv_heads (so it divides n_heads): going to more K/V heads, or
to a count that does not divide, is a one-line error, exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from nmt.attention import Attention
from nmt.config import SITES, ModelConfig
from nmt.decoding.export import export_model
from nmt.decoding.loading import ModelLoadError, load_model_info
from nmt.errors import UsageParser, first_line
from nmt.files import check_output_folder
from nmt.model import Seq2Seq, build_model

SHORTHANDS = {"decoder": ("decoder_self", "cross"), "all": SITES}
METHOD = "K/V projection heads mean-pooled per group (Ainslie et al. 2023)"


class ConvertError(ValueError):
    """A conversion that cannot be done; the message names the site and the values."""


def parse_targets(specs: list[str]) -> dict[str, int]:
    """``["decoder=2", "cross=1"]`` → ``{"decoder_self": 2, "cross": 1}``: the new n_kv_heads per site."""
    targets: dict[str, int] = {}
    for spec in specs:
        site, _, value = spec.partition("=")
        sites = SHORTHANDS.get(site, (site,))
        if not value or any(s not in SITES for s in sites):
            known = ", ".join([*SITES, *SHORTHANDS])
            raise ConvertError(f"{spec!r}: expected SITE=N_KV_HEADS with SITE one of {known}")
        try:
            n_kv_heads = int(value)
        except ValueError:
            raise ConvertError(f"{spec!r}: n_kv_heads must be a whole number (got {value!r})") from None
        if n_kv_heads < 1:
            raise ConvertError(f"{spec!r}: n_kv_heads must be at least 1 (1 is MQA)")
        targets.update(dict.fromkeys(sites, n_kv_heads))
    if not targets:
        raise ConvertError("no SITE=N_KV_HEADS given (e.g. decoder_self=2 cross=2, or all=1)")
    return targets


def converted_config(cfg: ModelConfig, targets: dict[str, int]) -> ModelConfig:
    """``cfg`` with the new n_kv_heads per site; ConvertError where the old heads cannot be pooled into them."""
    values = cfg.to_dict()
    for site, new in targets.items():
        resolved = cfg.site(site)
        old, n_heads = resolved.n_kv_heads, resolved.n_heads
        if new < 1 or new > old:
            raise ConvertError(f"{site}={new}: mean-pooling can only reduce K/V heads (this model has {old}, "
                               f"n_heads {n_heads}); give 1 … {old}")
        if n_heads % new or old % new:
            raise ConvertError(f"{site}={new}: {new} does not divide n_heads ({n_heads}) and the current n_kv_heads "
                               f"({old}), so its heads cannot be grouped")
        values["attention"][site]["n_kv_heads"] = new
    return ModelConfig.from_dict(values)


def pool_heads(rows: Tensor, n_to: int, head_dim: int) -> Tensor:
    """Projection rows of ``n_from`` heads, (n_from · head_dim, …), → (n_to · head_dim, …): new head j is the mean of
    old heads j·r … (j+1)·r − 1, r = n_from / n_to — the heads whose query heads new head j serves (query head i
    reads K/V head i // group, so a group's heads are consecutive). Averaged in float64: heads that are already equal
    give exactly themselves back."""
    n_from = rows.size(0) // head_dim
    grouped = rows.double().view(n_to, n_from // n_to, head_dim, *rows.shape[1:])  # (n_to, r, head_dim, …)
    return grouped.mean(dim=1).reshape(n_to * head_dim, *rows.shape[1:]).to(rows.dtype)  # (n_to · head_dim, …)


def _pooled_projection(layer: Attention, tensor: Tensor, n_to: int) -> Tensor:
    """One K/V projection parameter (weight or bias) of ``layer`` with its K and V heads pooled to ``n_to``."""
    kv_dim = layer.n_kv_heads * layer.head_dim
    if layer.cross:  # kv_proj: k rows, then v rows
        q, (k, v) = None, tensor.split([kv_dim, kv_dim])
    else:  # qkv_proj: q rows, then k rows, then v rows
        q, k, v = tensor.split([layer.n_heads * layer.head_dim, kv_dim, kv_dim])
    pooled = [pool_heads(k, n_to, layer.head_dim), pool_heads(v, n_to, layer.head_dim)]
    return torch.cat(pooled if q is None else [q, *pooled])


def convert_model(model: Seq2Seq, targets: dict[str, int]) -> Seq2Seq:
    """A new model with ``targets[site]`` K/V heads at the named sites: pooled K/V projections, all else copied."""
    cfg = converted_config(model.cfg, targets)
    state = model.state_dict()
    for name, layer in model.named_modules():
        if isinstance(layer, Attention) and targets.get(layer.site, layer.n_kv_heads) != layer.n_kv_heads:
            projection = "kv_proj" if layer.cross else "qkv_proj"
            for kind in ("weight", "bias"):
                key = f"{name}.{projection}.{kind}"
                if key in state:  # no bias with ModelConfig.bias false
                    state[key] = _pooled_projection(layer, state[key], targets[layer.site])
    converted = build_model(cfg).to(next(model.parameters()).dtype)
    converted.load_state_dict(state)  # strict: every weight of the new model comes from the old one
    return converted.eval()


def convert(source: str | Path, out: str | Path, targets: dict[str, int], force: bool = False) -> Path:
    """Convert the model directory or checkpoint ``source`` and write the model directory ``out`` (atomically),
    with what the source recorded beside its weights (``bleu_tokenize``, ``checkpoint``, earlier conversions) and a
    record of this conversion appended to ``conversions`` in its config.json.

    Raises ValueError when ``out`` is a file, is or holds the source, or exists and ``force`` is false (an existing
    ``out`` is replaced only on request, as ``nmt export ct2`` does: nmt.files.check_output_folder); ModelLoadError
    when ``source`` does not load."""
    source, out = Path(source), Path(out)
    check_output_folder(out, force, f"--out {out}", reads=[source])
    model, tokenizer, extras = load_model_info(source)
    converted = convert_model(model, targets)
    record = {"from": str(source), "method": METHOD,
              "n_kv_heads": {site: {"from": model.cfg.site(site).n_kv_heads, "to": new}
                             for site, new in targets.items()}}
    extras["conversions"] = [*extras.get("conversions", []), record]
    return export_model(converted, tokenizer, out, extra=extras)


def main(argv: list[str]) -> int:
    """``nmt convert``'s command line: 0 when the model is written, 2 with one line on stderr otherwise."""
    parser = UsageParser(prog="nmt convert", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("model", help="an exported model directory or a training checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="the model directory to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("targets", nargs="+", metavar="SITE=N",
                        help=f"new n_kv_heads per site: {', '.join(SITES)}, decoder (decoder_self and cross), all")
    args = parser.parse_args(argv)
    try:
        out = convert(args.model, args.out, parse_targets(args.targets), force=args.force)
    except (ValueError, ModelLoadError, OSError) as error:  # ConvertError and JSONDecodeError are ValueErrors
        print(f"nmt convert: {first_line(error)}", file=sys.stderr)
        return 2
    print(f"nmt convert: wrote {out}")
    return 0
