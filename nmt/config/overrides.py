"""``nmt train``'s command line checked before any work: every override names a key of the schema or a config group
(with "did you mean" for a near miss), and every job — one, or each of a ``-m`` sweep — composes and validates, and
finds its local training and validation files.

Only Hydra, OmegaConf and the dataclass schemas are imported here (no torch, Lightning or datasets), so a typo is
reported in about a second. Hydra alone would accept ``+trainer.max_stpes=10`` (``+`` adds a key), drop it when the
config becomes a dataclass, and start a 100,000-step run.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Optional, Sequence

from nmt.config.compose import CONF_DIR, compose_config, config_error_line, to_train_config
from nmt.config.train import TrainConfig
from nmt.data.corpora import local_files
from nmt.errors import first_line
from nmt.training.init_from import check_init_from


class OverrideError(ValueError):
    """An override that names no key of the schema and no config group."""


def schema_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, nodes and leaves: ['model', 'model.d_model', …]."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        keys.append(key)
        if dataclasses.is_dataclass(hints[field.name]):
            keys += schema_keys(hints[field.name], key + ".")
    return keys


def config_groups(roots: Sequence[Path] = (CONF_DIR,)) -> set[str]:
    """The config groups (sub-folders holding YAML) of nmt's config folder and the user's."""
    groups = set()
    for root in roots:
        groups |= {str(p.parent.relative_to(root)) for p in Path(root).glob("**/*.yaml") if p.parent != Path(root)}
    return groups


def check_key(key: str, groups: set[str], keys: Sequence[str]) -> None:
    """Raise OverrideError for a key that is neither a config group nor a schema key; Hydra checks its own."""
    if key in groups or key in keys or key == "hydra" or key.startswith("hydra."):
        return
    close = difflib.get_close_matches(key, [*keys, *groups], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else " (nmt train --help lists the groups and keys)"
    raise OverrideError(f"unknown key {key}{hint}")


def check_option(override, roots: Sequence[Path]) -> None:
    """A group override names options that exist: Hydra silently ignores a missing option of an ``optional`` group
    (``experiment=typo`` ran the defaults)."""
    group = override.key_or_group
    options = {p.stem for root in roots for p in (Path(root) / group).glob("*.yaml")}
    if override.is_delete() or not options:
        return
    values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
    for value in values:
        for name in value if isinstance(value, list) else [value]:
            if name is not None and str(name) not in options:
                raise OverrideError(f"{group}={name}: no such option; options: {', '.join(sorted(options))}")


def _search_roots(overrides, config_dir: Optional[str]) -> Optional[list[Path]]:
    """nmt's config folder and the user's (``--config-dir``, ``hydra.searchpath`` file:// entries); None where a
    search path entry is not a folder we can list (pkg://), so options are left to Hydra."""
    roots = [CONF_DIR, *([Path(config_dir)] if config_dir else [])]
    for override in overrides:
        if override.key_or_group == "hydra.searchpath":
            for entry in override.value() or []:
                if not str(entry).startswith("file://"):
                    return None
                roots.append(Path(str(entry)[len("file://"):]))
    return roots


def _with_search_path(overrides: list[str], config_dir: Optional[str]) -> list[str]:
    """``--config-dir DIR`` as the compose API takes it: DIR added to hydra.searchpath."""
    if not config_dir:
        return overrides
    entry = f"file://{Path(config_dir).resolve()}"
    rest = [o for o in overrides if not o.startswith("hydra.searchpath=")]
    given = [o.split("=", 1)[1].strip("[]") for o in overrides if o.startswith("hydra.searchpath=")]
    return [*rest, f"hydra.searchpath=[{','.join([entry, *filter(None, given)])}]"]


def parse(overrides: list[str]) -> list:
    """Hydra's parse of ``overrides``. OverrideError naming the override its grammar refuses (Hydra's own message
    names only the token), with how to quote a value that holds braces or quotes: the shell strips one level of
    quotes and Hydra reads the next."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        override = error.override
        key, _, value = override.partition("=")
        hint = (f"; quote the value for Hydra inside quotes for the shell: \"{key}='{value}'\""
                if any(c in value for c in "{}'\"") and not value.startswith(("'", '"')) else "")
        raise OverrideError(f"cannot read the override {override!r}: {first_line(error)}{hint}") from None


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job: one job, or the cross product of a sweep's values (Hydra's basic sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse(overrides)
    if not multirun:
        return [overrides]
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_local_files(cfg: TrainConfig) -> None:
    """The training and validation files of a local corpus exist (DataError naming the one that does not)."""
    if cfg.data.path is not None:
        for split in (cfg.data.splits.train, cfg.data.splits.valid):
            local_files(cfg.data, split)


def check_run_dir(overrides: list[str], cfg: TrainConfig) -> None:
    """A fresh run (``resume=false``) does not start in a folder that holds an earlier run's checkpoints or model:
    its files would be replaced one by one, the trained model first. OverrideError says how to continue it instead.
    Only ``hydra.run.dir=DIR`` names a folder in advance (Hydra's default is a new timestamped one)."""
    if cfg.resume:
        return
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "hydra.run.dir" and value:
            run = Path(value).expanduser()
            earlier = [p for p in (run / "checkpoints" / "last.ckpt", run / "model" / "config.json") if p.exists()]
            if earlier:
                raise OverrideError(
                    f"hydra.run.dir={value} already holds a run ({earlier[0].relative_to(run)}); add resume=true to "
                    "continue it, or name another hydra.run.dir"
                )


def check_overrides(overrides: list[str], config_dir: Optional[str] = None) -> None:
    """Every override names a schema key or a config group, and every group option exists (OverrideError with a
    did-you-mean, or the group's options); Hydra's grammar errors pass through. Used by ``nmt train`` and
    ``nmt attention``."""
    parsed = parse(overrides)
    roots = _search_roots(parsed, config_dir)
    keys = schema_keys()
    groups = config_groups(roots or [CONF_DIR, *([Path(config_dir)] if config_dir else [])])
    for override in parsed:
        check_key(override.key_or_group, groups, keys)
        if roots is not None and override.key_or_group in groups:
            check_option(override, roots)


def check_command_line(argv: list[str]) -> Optional[str]:
    """None when every job of ``nmt train ARGV`` composes and validates, else one line saying what is wrong."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)  # a bad flag exits with argparse's usage line, status 2
    try:
        check_overrides(args.overrides, args.config_dir)
        for job in jobs(args.overrides, args.multirun):
            cfg = to_train_config(compose_config(_with_search_path(job, args.config_dir), args.config_name or "train"))
            check_local_files(cfg)
            if not args.multirun:  # a sweep writes into hydra.sweep.dir, one new folder per job
                check_run_dir(job, cfg)
            check_init_from(cfg)  # DIR/config.json against the run's model config: json only
    except Exception as error:  # Hydra, OmegaConf and __post_init__ errors alike: one line
        return config_error_line(error)
    return None
