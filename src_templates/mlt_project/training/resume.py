"""Resume an interrupted training run: checkpoints every N steps and on SIGTERM, then exit 75.

DVC deletes a stage's outputs before it runs the stage again, so the resume checkpoint lives in
paths.checkpoints, which is no DVC output (and git-ignored). It is used only by the run it
belongs to: its fingerprint covers the model and training params, the processed data and the
code of the layers training runs (TRAINED_BY: the folders dvc.yaml's train stage depends on);
anything else starts fresh. It holds everything an uninterrupted run would still
have in memory: weights, optimizer, loop counters, the data order (data/resumable.py), the random
number generators and the metrics accumulated so far in the epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import Metric

from ..base.config import Config
from ..base.errors import Interrupted
from ..base.fileio import sha256_file
from ..data.store import SPLITS, split_path
from ..model.checkpoint import CHECKPOINT_FORMAT, FORMAT_KEY, read_checkpoint, save_checkpoint

# The layers whose code decides what training computes, as folders of the package: the ones
# training imports, and the ones dvc.yaml's train stage depends on, so DVC retrains exactly when
# a resume checkpoint stops fitting. Serving, release and deployment code is in neither.
TRAINED_BY = ("base", "data", "model", "training")

log = logging.getLogger(__name__)


def run_fingerprint(cfg: Config) -> str:
    """SHA-256 of what decides the training run: params, processed data, code, weights file."""
    package = Path(__file__).resolve().parent.parent
    code = sorted(path for layer in TRAINED_BY for path in (package / layer).rglob("*.py"))
    weights = cfg.model.weights_file
    identity = {
        "format": CHECKPOINT_FORMAT,
        "model": dataclasses.asdict(cfg.model),
        "training": dataclasses.asdict(cfg.training),
        "augment": cfg.augment,
        "input_shape": list(cfg.data.input_shape),
        "num_classes": cfg.data.num_classes,
        "task": cfg.data.task,
        "data": {split: sha256_file(split_path(cfg.paths.processed, split)) for split in SPLITS},
        "code": {path.relative_to(package).as_posix(): sha256_file(path) for path in code},
    }
    # The weights file's bytes, not only its path: a file replaced in paths.weights retrains (a
    # train dep). Only when there is one, so other runs keep their fingerprint; a missing file is
    # left to build_network, whose error names it.
    if weights and Path(weights).is_file():
        identity["weights_file_sha256"] = sha256_file(weights)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def find_resume(cfg: Config, fingerprint: str) -> Path | None:
    """The resume checkpoint if it belongs to this run; None (start fresh) if there is none or it
    belongs to another run; PipelineError if it cannot be read."""
    path = cfg.paths.resume_checkpoint
    if not path.exists():
        return None
    # An unreadable one stops the run, and is kept: starting fresh would overwrite it, and an I/O
    # error may be over by the next try (AWS Batch retries the job).
    checkpoint = read_checkpoint(path, fix="move it away (or delete it) to start training afresh")
    if checkpoint.get(FORMAT_KEY, {}).get("fingerprint") != fingerprint:
        log.info("%s is from another run (params, data or code changed): starting fresh", path)
        return None
    log.info(
        "resuming from %s: epoch %d, step %d", path, checkpoint["epoch"], checkpoint["global_step"]
    )
    return path


class ResumeCheckpoint(L.Callback):
    """Saves the resume checkpoint every N steps and on SIGTERM (then exits)."""

    def __init__(self, path: Path, fingerprint: str, every_n_steps: int) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.every_n_steps = every_n_steps
        self.stop_requested = False
        self._restore: dict[str, Any] | None = None
        self._at_epoch_end: dict[str, bool] | None = None  # a save put off to the epoch's end

    def due(self, trainer: L.Trainer) -> bool:
        """Whether this process saves after the step just taken (NanLossStop checks the loss)."""
        return self.stop_requested or trainer.global_step % self.every_n_steps == 0

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True

    def install_handler(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own handler (registered just before this hook) stops at the next batch
        # without saving anything; ours saves first. Lightning puts back the earlier one at the end.
        self.install_handler()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._restore is not None:
            # Right before the first step after a resume, where the interrupted run stood.
            set_rng_states(self._restore["rng"])
            set_metric_states(pl_module, self._restore["metrics"])
            self._restore = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        epoch_loop = trainer.fit_loop.epoch_loop
        last = epoch_loop.batch_progress.is_last_batch
        if epoch_loop._should_accumulate():
            # Inside an accumulation: its gradients are in no checkpoint, so save (and stop) only
            # where the optimizer has just stepped.
            return
        stop = self.stop_requested
        if trainer.world_size > 1:  # any process that got SIGTERM stops them all
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        save = stop or step % self.every_n_steps == 0
        if save and last:
            # After this epoch's validation instead: resumed from its last batch, Lightning would
            # go on with the next epoch without validating this one (early stopping and the
            # kept best epoch would then differ from an uninterrupted run).
            self._at_epoch_end = {"stop": stop}
            return
        if save:
            save_checkpoint(trainer, self.path)
        if stop:
            self.interrupt(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending = self._at_epoch_end
        if pending is None:
            return
        save_checkpoint(trainer, self.path)
        self._at_epoch_end = None
        if pending["stop"]:
            self.interrupt(trainer)

    def interrupt(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            log.warning(
                "SIGTERM: saved %s at epoch %d, step %d; exiting with code %d: run "
                "`dvc repro` again (AWS Batch retries the job) and training resumes there",
                self.path,
                trainer.current_epoch,
                trainer.global_step,
                Interrupted().code,
            )
        raise Interrupted()

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[FORMAT_KEY] = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint}
        # At an epoch's end the metrics start afresh with the next epoch: none to restore.
        metrics = {} if self._at_epoch_end is not None else metric_states(pl_module)
        checkpoint["resume_state"] = {"rng": rng_states(), "metrics": metrics}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._restore = checkpoint.get("resume_state")


def rng_states() -> dict[str, Any]:
    # Tensors, ints and tuples only, so that Lightning can load the file with weights_only=True.
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def metric_states(module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """What each torchmetrics metric has accumulated (not in the state_dict by default)."""
    return {
        name: {
            "count": metric._update_count,
            "state": {key: _cpu_copy(getattr(metric, key)) for key in metric._defaults},
        }
        for name, metric in module.named_modules()
        if isinstance(metric, Metric)
    }


def set_metric_states(module: torch.nn.Module, states: dict[str, dict[str, Any]]) -> None:
    metrics = dict(module.named_modules())
    for name, saved in states.items():
        metric = metrics.get(name)
        if not isinstance(metric, Metric):
            continue
        for key, value in saved["state"].items():
            setattr(metric, key, _to_device(value, metric.device))
        metric._update_count = saved["count"]
        metric._computed = None


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_cpu_copy(item) for item in value]
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value
