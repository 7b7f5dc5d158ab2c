"""The Lightning callbacks of a training run, besides resuming (resume.py): the curves DVC plots,
the kept best epoch, the NaN-loss stop, and the warnings filter used around fit.
create_trainer (factories.py) builds every one of them.
"""

from __future__ import annotations

import contextlib
import csv
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from ..base.errors import PipelineError
from ..base.fileio import atomic_output

if TYPE_CHECKING:
    from .module import ImageClassifier

MONITOR = "val/loss"  # what early stopping and the kept model go by

# Warnings of Lightning's that a user of this project cannot act on, silenced while training
# only (not process-wide): batches come from in-memory tensors, where worker processes would
# only add start-up time; a streamed split's length is exact, as data/stream.py gives each
# worker batches of its own; and Lightning's own use of a torch API that torch has deprecated.
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*IterableDataset. has .__len__. defined.*",
    ".*isinstance.treespec, LeafSpec.*",
)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


class TrainingCurves(L.Callback):
    """Per-epoch train_loss, val_loss and val_acc, written to a CSV that `dvc plots` draws.

    TensorBoard shows the latest run as it trains; this file is a DVC output of the train stage,
    so `dvc plots diff` compares the curves of commits and experiments.
    """

    COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc")

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        self.loss_sum: torch.Tensor | float = 0.0
        self.batches = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            # Summed where it is: reading it (.item()) would make every step wait for the GPU.
            # Lightning hands over the loss divided by accumulate_grad_batches: undone here.
            loss = loss.detach().float() * trainer.accumulate_grad_batches
            self.loss_sum = self.loss_sum + loss
            self.batches += 1
        # The row starts at the epoch's last batch; a resume checkpoint due there is saved at the
        # epoch's end, after validation has filled in the row (resume.ResumeCheckpoint).
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.add_row(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.batches:  # the loader did not tell which batch was its last
            self.add_row(trainer, pl_module)
        if not self.rows or self.rows[-1]["epoch"] != trainer.current_epoch:
            return
        logged = trainer.callback_metrics  # validation has run at this epoch's end
        for column, name in (("val_loss", "val/loss"), ("val_acc", "val/accuracy")):
            if name in logged:
                self.rows[-1][column] = round(float(logged[name]), 6)

    def add_row(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Under DDP each process saw its share of the batches: add up all of them.
        totals = torch.tensor([float(self.loss_sum), self.batches], device=pl_module.device)
        loss_sum, batches = trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        train_loss = round(loss_sum / max(batches, 1), 6)
        self.rows.append({"epoch": trainer.current_epoch, "train_loss": train_loss})
        self.loss_sum, self.batches = 0.0, 0

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            with atomic_output(self.path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)

    # Kept in the resume checkpoint: a resumed run writes the epochs before the interruption too.
    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "loss_sum": float(self.loss_sum), "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        self.loss_sum, self.batches = state_dict["loss_sum"], state_dict["batches"]


class KeepBest(L.Callback):
    """The validated weights (the average, with EMA) of the epoch with the lowest `monitor`,
    copied to the CPU at each improvement; train.py saves them. Kept in the resume checkpoint, so
    a resumed run keeps the best so far. Used when a run may stop early (patience, max_time)."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.epoch: int | None = None  # as numbered in paths.curves
        self.weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)  # under DDP the same on every process (sync_dist)
        if self.best is None or value < self.best:  # ties keep the earlier epoch
            self.best, self.epoch = value, trainer.current_epoch
            state = pl_module.validated_net.state_dict()
            self.weights = {name: tensor.detach().cpu().clone() for name, tensor in state.items()}

    def restore(self, pl_module: ImageClassifier) -> bool:
        """Put the best weights into the network; False if no epoch was validated."""
        if self.weights is None:
            return False
        pl_module.net.load_state_dict(self.weights)
        self.weights = None  # the network holds them now: the final checkpoint needs no copy
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epoch = state_dict["best"], state_dict["epoch"]
        self.weights = state_dict["weights"]


class NanLossStop(L.Callback):
    """Stops training with one line when the loss is no longer finite: no model is written, and
    no resume checkpoint keeps the weights it broke.

    Reading the loss waits for the device, so it is read only on the steps the logger reads it
    anyway, at an epoch's last batch, and where `saves(trainer)` says a checkpoint is about to
    be saved (this callback runs before the one that saves it).
    """

    def __init__(self, every_n_steps: int, saves: Callable[[L.Trainer], bool] | None = None):
        self.every_n_steps = max(every_n_steps, 1)
        self.saves = saves

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_accumulate():
            return  # inside an accumulation: no step was taken
        due = (
            trainer.global_step % self.every_n_steps == 0
            or epoch_loop.batch_progress.is_last_batch
            or (self.saves is not None and self.saves(trainer))
        )
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if due and loss is not None and not bool(torch.isfinite(loss).all()):
            raise PipelineError(
                f"training loss became {float(loss)} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}: lower training.lr (now "
                f"{trainer.optimizers[0].defaults['lr']}) or check the images; no model was written"
            )
