"""``nmt train``: check the command line, then let Hydra start the run and ``nmt.training.trainer.train`` do it.

Every job's config is composed and validated first (``nmt.config.overrides``) with Hydra and the dataclass schemas
alone, so ``--help``, ``--cfg job`` and any config error answer in about a second: one line naming the key, exit
status 2, and no run folder. Lightning, datasets and torch are imported only once the config is known to be good.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

import __main__
from nmt.config.compose import CONF_DIR, config_error_line, register_configs
from nmt.config.overrides import check_command_line

# Flags that print something and start no run: Hydra answers them itself.
INFO_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion", "-i", "--info"}
_STARTED = time.time()


def __getattr__(name: str):
    """``from nmt.training.train import train`` keeps working; the import of Lightning waits until it is asked for."""
    if name == "train":
        from nmt.training.trainer import train

        return train
    raise AttributeError(f"module 'nmt.training.train' has no attribute {name!r}")


def remove_failed_start(run_dir: Path, started: float) -> None:
    """Remove the run folder a failed start left, if everything in it was written by this start and none of it is a
    checkpoint or model: a resumed run, or a folder holding anything older, is left as it is."""
    if not run_dir.is_dir():
        return
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    if any(p.suffix in (".ckpt", ".safetensors") or p.stat().st_mtime < started for p in files):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        from nmt.training.trainer import train

        train(cfg, run_dir=run_dir)
    except Exception as error:  # data problems, Lightning's own checks: one line (NMT_DEBUG=1: the traceback)
        if os.environ.get("NMT_DEBUG") == "1":
            raise
        remove_failed_start(run_dir, _STARTED)
        kind = "" if isinstance(error, ValueError) else f"{type(error).__name__}: "
        print(f"nmt train: {kind}{config_error_line(error)}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    """Entry for ``nmt train ARGS``: Hydra reads sys.argv, and Lightning's DDP launcher re-runs this file with it."""
    register_configs()
    if not INFO_FLAGS & set(argv):
        error = check_command_line(argv)
        if error is not None:
            print(f"nmt train: {error}", file=sys.stderr)
            return 2
    # Lightning's DDP launcher re-runs `python -m <__main__'s module>` (or `python <sys.argv[0]>`) with sys.argv[1:]
    # in each child process: point both at this module so the children train with the same overrides.
    sys.argv = [str(Path(__file__).resolve()), *argv]
    if getattr(__main__, "__spec__", None) is not None:
        __main__.__spec__ = importlib.util.find_spec("nmt.training.train")
    _hydra_main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
