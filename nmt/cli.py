"""The ``nmt`` command: dispatches subcommands to their modules, importing only what the subcommand needs."""

from __future__ import annotations

import sys

USAGE = """usage: nmt <command> [args…]

commands:
  train      train a model from Hydra overrides (nmt train attention=gqa model=tiny …)
  translate  translate text with an exported model directory
  evaluate   score a model with sacreBLEU and write a report
  report     compare run directories in one table with plots
  average    average a run's last N checkpoints into a model directory
  convert    convert a model to fewer K/V heads per site (GQA/MQA by mean-pooling; nmt convert M --out D all=1)
  export     export a model for deployment (nmt export ct2 MODEL OUT: a CTranslate2 model folder)
  bench      benchmark attention kernels, training and decoding
  attention  print the attention config each site gets from Hydra overrides (nmt attention attention=gqa …);
             --kv [src=40 tgt=40 beam=5 batch=1 dtype=fp32] after them adds KV-cache bytes per site and layer
  analyze    look inside a model: attention viewer (nmt analyze attention), head analysis (nmt analyze heads)
"""

ATTENTION_USAGE = """usage: nmt attention [OVERRIDE …] [--kv [src=N] [tgt=N] [beam=N] [batch=N] [dtype=fp32|fp16|bf16]]

Print the attention config each site (encoder_self, decoder_self, cross) gets from Hydra overrides, as nmt train
would compose them, e.g. nmt attention 'attention=[sliding_window,gqa]' model.attention.cross.n_kv_heads=1

--kv  after the overrides: the KV cache's bytes per site and layer while beam search decodes, per sentence and per
      batch, and the ratio to MHA. src: source positions with eos (default 40); tgt: decoded positions with bos (40);
      beam (5); batch (1); dtype (fp32). See docs/attention.md.
"""


def show_attention(args: list[str]) -> int:
    """Print the resolved per-site attention configs, so users see what a combination of presets gives; with
    ``--kv [KEY=VALUE …]`` after the overrides, then the KV-cache table of nmt.analysis.kv_cache."""
    from nmt.analysis.kv_cache import format_kv_plan, kv_cache_plan, parse_kv_args, split_kv_args
    from nmt.config.compose import compose_config, config_error_line, model_config
    from nmt.config.overrides import check_overrides

    overrides, kv_args = split_kv_args(args)
    if any(word in ("-h", "--help") for word in overrides):
        print(ATTENTION_USAGE, end="")
        return 0
    options = [word for word in overrides if word.startswith("-")]
    if options:
        print(f"nmt attention: unknown option {options[0]!r}: the options are --kv and --help; overrides are "
              "KEY=VALUE words", file=sys.stderr)
        return 2
    try:
        kv = parse_kv_args(kv_args) if kv_args is not None else None  # before composing: a typo fails fast
        check_overrides(overrides)  # nmt train's key and option checks: the same one-line messages
        cfg = model_config(compose_config(overrides))
    except Exception as error:  # Hydra/OmegaConf/validation errors: one line, no traceback
        line = config_error_line(error)
        if "Ambiguous value" in line:  # a=b,c reads as a sweep, which needs -m; a list of presets is a=[b,c]
            line += " (several presets at once: 'attention=[sparse,mqa]', quoted for the shell)"
        print(f"nmt attention: {line}", file=sys.stderr)
        return 2
    for site, variant in cfg.variants().items():
        resolved = cfg.site(site)
        print(
            f"{site:13s} {variant:24s} n_heads={resolved.n_heads} n_kv_heads={resolved.n_kv_heads} "
            f"window={resolved.window} global_tokens={resolved.global_tokens} backend={resolved.backend} "
            f"dropout={resolved.dropout}"
        )
    if kv is not None:
        print()
        print(format_kv_plan(kv_cache_plan(cfg, **kv)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    from nmt.errors import UsageError  # stdlib-only module: keeps `nmt --help` fast

    try:
        return run_command(args[0], args[1:])
    except UsageError as error:  # a subcommand's parser: argparse's "prog: message" line, without the usage block
        print(f"{error.prog or 'nmt ' + args[0]}: {error}", file=sys.stderr)
        return 2


def run_command(command: str, rest: list[str]) -> int:
    """Runs one subcommand, importing only its module; its exit status."""
    if command == "attention":
        return show_attention(rest)
    if command == "analyze":
        from nmt.analysis.cli import main as analyze_main

        return analyze_main(rest)
    if command == "report":
        from nmt.evaluation.report import main as report_main

        return report_main(rest)
    if command == "average":
        from nmt.training.average import main as average_main

        return average_main(rest)
    if command == "export":
        from nmt.ct2.export import main as export_main

        return export_main(rest)

    if command == "convert":
        from nmt.model.convert import main as convert_main

        return convert_main(rest)
    if command == "evaluate":
        from nmt.evaluation.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if command == "translate":
        from nmt.decoding.translate import main as translate_main

        return translate_main(rest)
    if command == "train":
        from nmt.training.train import main as train_main

        return train_main(rest)
    if command == "bench":
        from nmt.bench import main as bench_main

        return bench_main(rest)
    print(f"nmt: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
