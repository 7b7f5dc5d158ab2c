"""Checkpoint I/O without Lightning: read a checkpoint, check its format, rebuild its network;
and save one (the trained model, a resume point) atomically.

Evaluation, export and the release read trained networks through here, so none of them has to
import Lightning (seconds of start-up) to run a network that is plain PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.config import Config
from ..base.errors import PipelineError
from ..base.fileio import atomic_output
from ..base.tasks import OLDEST_TASK
from .build import Network, build_network
from .tasks import TrainedTask
from .tasks import task as task_named
from .tensor_files import load_tensors

if TYPE_CHECKING:  # no Lightning at run time: eval and export load without it
    import lightning as L

# Bump when a checkpoint's contents change incompatibly; readers refuse a newer format.
# 2: the network's spec in hyper_parameters["network"]. 3: hyper_parameters["task"] and, for
# multilabel, the per-class decision thresholds (THRESHOLDS_KEY).
CHECKPOINT_FORMAT = 3
THRESHOLDS_KEY = "thresholds"  # training/module.py writes it
# The names of the task's metrics training logged (training/module.py writes them; absent from
# checkpoints written before): evaluation builds the metrics only for names its report lacks.
METRIC_NAMES_KEY = "metric_names"
FORMAT_KEY = "ml_template"  # not the module name: bootstrap would rename it
NET_PREFIX = "net."  # the network's weights inside the LightningModule's state_dict
RETRAIN = "delete it and retrain with `dvc repro`"


def read_checkpoint(path: Path, fix: str = RETRAIN) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, read as data (tensor_files); PipelineError if it is not
    one or is too new. `fix` says what to do with a file that is no checkpoint."""
    checkpoint = load_tensors(path, f"checkpoint {path}", fix)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise PipelineError(f"{path} holds no Lightning checkpoint (no state_dict): {fix}")
    check_format(checkpoint, path)
    return checkpoint


def check_format(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint written by a newer template, whose contents this code may misread."""
    written = checkpoint.get(FORMAT_KEY, {}).get("format", 0)
    if written > CHECKPOINT_FORMAT:
        raise PipelineError(
            f"{path} was written by a newer template (checkpoint format {written}; this project "
            f"reads up to {CHECKPOINT_FORMAT}): update the project with "
            "`python3 .ml-aws-template/bootstrap.py --update`, or retrain with `dvc repro`"
        )


def trained_spec(cfg: Config, saved: dict[str, Any], path: Path) -> dict[str, Any]:
    """The network spec a checkpoint was trained with; it must fit params.yaml's data."""
    spec = saved.get("hyper_parameters", {}).get("network")
    if spec is None:
        raise PipelineError(
            f"{path} was written by an older template and does not say which network it holds: "
            "retrain with `dvc repro`"
        )
    task = saved["hyper_parameters"].get("task", OLDEST_TASK)
    trained = (tuple(spec["input_shape"]), spec["num_classes"], task)
    expected = (cfg.data.input_shape, cfg.data.num_classes, cfg.data.task)
    keys = ("input_shape", "num_classes", "task")
    for key, was, now in zip(keys, trained, expected, strict=True):
        if was != now:
            raise PipelineError(
                f"{path} was trained with {key} {was} but params.yaml gives {now}: "
                "retrain with `dvc repro` or restore the params it was trained with"
            )
    return spec


@dataclass(frozen=True)
class Trained:
    """A trained network and how its outputs become predictions."""

    net: Network  # uint8 pixels in, logits out, in eval mode
    task: TrainedTask  # what the outputs mean, and how it was trained (model/tasks.py)
    thresholds: list[float] | None  # the task's, chosen on the validation split (multilabel)
    # What train says of the weights: the epoch they are from when the run kept its best
    # (best_epoch), and ema_decay when they are an average (empty for neither).
    weights: dict[str, float]
    # The task's metrics training logged, by name (model/tasks.py, `metrics`); None when the
    # checkpoint does not say.
    metric_names: list[str] | None = None


def load_trained(cfg: Config, checkpoint: str | Path | None = None) -> Trained:
    """The trained network with its task, (multilabel) thresholds and what train says of its
    weights."""
    path = Path(checkpoint or cfg.paths.model)
    if not path.is_file():
        raise PipelineError(f"no checkpoint at {path}: run `dvc repro train` first")
    saved = read_checkpoint(path)
    spec = trained_spec(cfg, saved, path)
    # The architecture from the checkpoint's spec, its weights from the checkpoint: never a
    # download, whatever model.pretrained says.
    net = build_network(spec)
    weights = {
        key.removeprefix(NET_PREFIX): value
        for key, value in saved["state_dict"].items()
        if key.startswith(NET_PREFIX)
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        # A state_dict that does not fit the network (its code changed since training).
        detail = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line),
            str(error).strip().splitlines()[-1],
        )
        raise PipelineError(
            f"{path} does not fit the {spec['name']} network as the code builds it now "
            f"({detail}): retrain with `dvc repro`, or restore the model code it was trained with"
        ) from None
    task = task_named(saved["hyper_parameters"].get("task", OLDEST_TASK))
    thresholds = saved.get(THRESHOLDS_KEY)
    if not task.valid_thresholds(thresholds, spec["num_classes"]):
        raise PipelineError(
            f"{path} holds a {task.name} network without the thresholds it decides with (its "
            "training did not finish): retrain with `dvc repro`"
        )
    weights_record = dict(saved.get("weights", {}))
    return Trained(net.eval(), task, thresholds, weights_record, saved.get(METRIC_NAMES_KEY))


def save_checkpoint(trainer: L.Trainer, path: str | Path) -> None:
    """Save atomically. Under DDP every process calls save_checkpoint, and rank 0 writes."""
    if trainer.is_global_zero:
        with atomic_output(path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
    else:
        trainer.save_checkpoint(path, weights_only=False)
