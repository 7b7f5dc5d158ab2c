"""Find a learning rate: Lightning's range test on the project's data, network and optimizer.

python -m mlt_project.training.lr_find [--params params.yaml] [--min-lr 1e-6] [--max-lr 1.0] [--steps 100]

Trains from the start for `--steps` batches while the learning rate rises exponentially from
--min-lr to --max-lr, and suggests the rate where the (smoothed) loss falls fastest. Prints it,
and writes lr against loss beside paths.curves (plots/lr_find.csv; `dvc plots show`). Changes
nothing else: params.yaml, the model DVC tracks, the TensorBoard logs, the curves and any resume
checkpoint stay as they are. Set training.lr yourself if you take the suggestion.
"""

from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.tuner import Tuner

from ..base import cli
from ..base.config import Config, load_config
from ..base.errors import PipelineError
from ..base.fileio import atomic_output
from ..base.logs import setup_logger
from .callbacks import quiet_warnings
from .factories import create_datamodule, create_model, create_trainer

MIN_LR, MAX_LR, STEPS = 1e-6, 1.0, 100
# Lightning's suggestion skips the first 10 points and the last one: fewer steps leave it nothing.
MIN_STEPS = 20


def plot_path(cfg: Config) -> Path:
    """Beside the training curves, in the folder `dvc plots` already shows."""
    return Path(cfg.paths.curves).with_name("lr_find.csv")


def find_lr(
    cfg: Config, min_lr: float = MIN_LR, max_lr: float = MAX_LR, steps: int = STEPS
) -> tuple[float, Path]:
    """Run the range test; return the suggested lr and the CSV of lr against loss."""
    if not 0 < min_lr < max_lr:
        raise PipelineError(
            f"--min-lr {min_lr:g} and --max-lr {max_lr:g}: need 0 < --min-lr < --max-lr"
        )
    if steps < MIN_STEPS:
        raise PipelineError(
            f"--steps {steps} is too few for a suggestion: give {MIN_STEPS} or more"
        )
    log = setup_logger()
    L.seed_everything(cfg.training.seed, workers=True)
    datamodule, model = create_datamodule(cfg), create_model(cfg)
    # Lightning saves the initial weights as .lr_find_*.ckpt in default_root_dir and loads them
    # back at the end: a folder of its own, removed whatever happens, keeps paths.checkpoints and
    # the project's root clean. No logger, so neither the TensorBoard events nor the training
    # curves (a DVC output) are touched; one device, as a range test needs no DDP.
    with tempfile.TemporaryDirectory(prefix="lr_find-") as scratch, quiet_warnings():
        trainer = create_trainer(
            cfg,
            logger=False,
            devices=1,
            num_nodes=1,
            # The steps bound the run, whatever training.max_epochs says: the range test goes on
            # into further epochs of a small training split.
            max_epochs=-1,
            max_steps=steps,
            default_root_dir=scratch,
        )
        finder = Tuner(trainer).lr_find(
            model,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=steps,
            update_attr=False,  # never training.lr: the user decides
        )
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None or not math.isfinite(suggestion):
        raise PipelineError(
            f"the loss did not give a learning rate between {min_lr:g} and {max_lr:g} in "
            f"{steps} steps: widen --min-lr/--max-lr or raise --steps"
        )
    path = plot_path(cfg)
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "log10_lr", "loss"])
        for step, (lr, loss) in enumerate(
            zip(finder.results["lr"], finder.results["loss"], strict=True)
        ):
            writer.writerow([step, f"{lr:.6g}", f"{math.log10(lr):.4f}", f"{loss:.6f}"])
    log.info(
        "wrote %s (dvc plots show %s -x log10_lr -y loss); training.lr is %g now",
        path,
        path,
        cfg.training.optimization["lr"],
    )
    return float(suggestion), path


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--min-lr", type=float, default=MIN_LR, help=f"default: {MIN_LR:g}")
    parser.add_argument("--max-lr", type=float, default=MAX_LR, help=f"default: {MAX_LR:g}")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"default: {STEPS}")
    args = parser.parse_args(argv)

    def body() -> None:
        lr, _ = find_lr(load_config(args.params), args.min_lr, args.max_lr, args.steps)
        print(f"suggested lr: {lr:.6g}")

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
