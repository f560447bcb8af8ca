"""``nmt average RUN_DIR``: average the parameters of a run's last N periodic checkpoints into a model directory.

Averaging the last checkpoints of a run (fairseq's ``average_checkpoints.py``, Vaswani et al. 2017) smooths out the
noise of the final updates and usually adds BLEU at no training cost. Checkpoints are read with ``weights_only=True``
and must share one model config and one sentencepiece model; the result is exported like a trained model, with the
run's sacreBLEU tokenizer read from the checkpoints (as an export from one of them records it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import torch

from nmt.decoding.export import export_model
from nmt.decoding.loading import ModelLoadError, load_model, load_model_info
from nmt.errors import UsageParser, first_line, plural
from nmt.files import check_output_folder

STEP_FILE = re.compile(r"step-(\d+)\.ckpt$")


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's periodic checkpoints (``checkpoints/step-NNNNNNN.ckpt``), oldest first."""
    found = [(int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("step-*.ckpt")
             if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def average_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the models' parameters, accumulated in float64 so N checkpoints lose no precision."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        model, _ = load_model(path)
        for name, tensor in model.state_dict().items():
            if name not in total:
                total[name] = torch.zeros_like(tensor, dtype=torch.float64)
                dtypes[name] = tensor.dtype
            total[name] += tensor.double()
    return {name: (value / len(paths)).to(dtypes[name]) for name, value in total.items()}


def average_run(run_dir: str | Path, last: int = 10, output: Optional[str | Path] = None, force: bool = False) -> Path:
    """Average the newest ``last`` step checkpoints of ``run_dir`` into ``output`` (default ``<run>/model_avg<N>``,
    replaced when it exists). ValueError (one line) for a bad run or --last, and for an ``output`` that exists
    without ``force``, is a file, or holds the checkpoints (nmt.files.check_output_folder)."""
    run_dir = Path(run_dir)
    if last < 1:
        raise ValueError(f"--last ({last}) must be >= 1")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    found = step_checkpoints(run_dir)
    if not found:
        raise ValueError(f"{run_dir}: no checkpoints to average: no step-*.ckpt files in {run_dir / 'checkpoints'} "
                         "(train with trainer.checkpoint_every_n_steps and trainer.keep_checkpoints)")
    if len(found) < last:
        raise ValueError(f"{run_dir / 'checkpoints'}: --last {last} asks for more checkpoints than the "
                         f"{len(found)} there")
    chosen = found[-last:]
    out = Path(output) if output else run_dir / f"model_avg{last}"
    # The default folder is this command's own: rerunning refreshes it. Any other is replaced only with --force.
    check_output_folder(out, force or output is None, f"--output {out}" if output else None, reads=chosen)
    model, tokenizer, info = load_model_info(chosen[-1])
    for path in chosen[:-1]:  # one model config and one vocabulary, or the mean is meaningless
        other, other_tokenizer = load_model(path)
        if other.cfg.to_dict() != model.cfg.to_dict() or other_tokenizer.serialized != tokenizer.serialized:
            raise ValueError(f"{path}: a different model config or sentencepiece model than {chosen[-1].name}")
    model.load_state_dict(average_state(chosen))
    # The run's BLEU tokenizer, from the checkpoint itself (config.yaml may not travel with copied checkpoints).
    extra = {"checkpoint": f"average of {', '.join(p.name for p in chosen)}", "bleu_tokenize": info["bleu_tokenize"]}
    return export_model(model, tokenizer, out, extra=extra)


def main(argv: list[str]) -> int:
    parser = UsageParser(prog="nmt average", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("run_dir", help="a training run directory (holds checkpoints/step-*.ckpt)")
    parser.add_argument("--last", type=int, default=10, help="how many of the newest step checkpoints (default 10)")
    parser.add_argument("--output", help="model directory to write (default RUN_DIR/model_avgN, refreshed on rerun)")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    try:
        out = average_run(args.run_dir, args.last, args.output, args.force)
    except (ValueError, ModelLoadError, OSError) as error:
        print(f"nmt average: {first_line(error)}", file=sys.stderr)
        return 2
    print(f"averaged the last {plural(args.last, 'checkpoint')} of {args.run_dir} → {out}")
    return 0
