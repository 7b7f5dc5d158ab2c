"""Factories: the DataModule, the model and the Trainer (and its callbacks) are built here."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from .cluster import require_rendezvous
from .config import Config
from .data.datamodule import ImageDataModule
from .fileio import atomic_output
from .model.build import build_network, check_sections, network_spec
from .model.classifier import ImageClassifier

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


# Steps between TensorBoard points, loss logs and progress-bar redraws. Drawing the bar (and
# reading the metrics it shows) every step costs more than a step of a small model.
LOG_EVERY_N_STEPS = 10


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
        for column, name in (("val_loss", "val/loss"), ("val_acc", "val/acc")):
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


def create_datamodule(cfg: Config) -> ImageDataModule:
    return ImageDataModule(
        processed_dir=cfg.paths.processed,
        batch_size=cfg.training.batch_size,
        eval_batch_size=cfg.evaluation.batch_size,
        num_workers=cfg.runtime.loader_workers,
        pin_memory=cfg.runtime.pin_memory and torch.cuda.is_available(),
        persistent_workers=cfg.runtime.persistent_workers,
        streaming=cfg.runtime.streaming,
        seed=cfg.training.seed,
        task=cfg.data.task,
        class_balance=cfg.training.class_balance,
    )


def create_model(cfg: Config) -> ImageClassifier:
    """A new model: the network `model.name` names, with its pretrained weights if asked for."""
    check_sections(cfg.model)
    spec = network_spec(cfg.model, cfg.data.input_shape, cfg.data.num_classes)
    net = build_network(spec, cfg.model.pretrained, cfg.model.weights_file)
    training = cfg.training
    return ImageClassifier(
        net=net,
        network=spec,
        optimizer={
            "name": training.optimizer,
            "lr": training.lr,
            "momentum": training.momentum,
            "weight_decay": training.weight_decay,
            "scheduler": training.scheduler,
            "warmup_epochs": training.warmup_epochs,
            "backbone_lr_factor": cfg.model.backbone_lr_factor,
        },
        augment=dataclasses.asdict(cfg.augment),
        freeze_backbone_epochs=cfg.model.freeze_backbone_epochs,
        task=cfg.data.task,
        label_smoothing=training.label_smoothing,
        class_balance=training.class_balance,
        ema_decay=training.ema_decay,
    )


def training_callbacks(cfg: Config) -> list[L.Callback]:
    """Early stopping on the val loss, and keeping the best weights when a run may stop early."""
    training = cfg.training
    callbacks: list[L.Callback] = []
    if training.early_stopping_patience:
        callbacks.append(
            EarlyStopping(MONITOR, patience=training.early_stopping_patience, mode="min")
        )
    if training.keeps_best:
        callbacks.append(KeepBest(MONITOR))
    return callbacks


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed on a GPU that supports it, full precision elsewhere."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def use_channels_last(setting: bool | str, accelerator: str, net: torch.nn.Module) -> bool:
    """runtime.channels_last, `auto` resolved: on for a convolutional network on a CUDA GPU
    (cuDNN's faster kernels take NHWC), off elsewhere (on the CPU it gains nothing measured)."""
    if setting != "auto":
        return bool(setting)
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return on_gpu and any(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def create_trainer(cfg: Config, *, logger: bool = True, **overrides: Any) -> L.Trainer:
    """A Trainer from `training` params; keyword overrides win (tests use fast_dev_run)."""
    training = cfg.training
    options: dict[str, Any] = {
        "accelerator": training.accelerator,
        "devices": training.devices,
        "num_nodes": training.num_nodes,
        "precision": resolve_precision(training.precision, training.accelerator),
        "max_epochs": training.max_epochs,
        "max_time": training.max_time,
        "accumulate_grad_batches": training.accumulate_grad_batches,
        "gradient_clip_val": training.gradient_clip_val or None,
        # One folder, not version_N per run: train.py clears it when a run starts afresh. No
        # hp_metric: TensorBoard would show a placeholder -1 for every run.
        "logger": TensorBoardLogger(
            cfg.paths.logs, name="", version="train", default_hp_metric=False
        )
        if logger
        else False,
        "enable_checkpointing": False,  # train.py writes the one checkpoint DVC tracks
        "log_every_n_steps": LOG_EVERY_N_STEPS,
        "callbacks": [TQDMProgressBar(refresh_rate=LOG_EVERY_N_STEPS)]
        + (
            [LearningRateMonitor(logging_interval="step"), TrainingCurves(cfg.paths.curves)]
            if logger
            else []
        )
        + training_callbacks(cfg),
        "enable_model_summary": logger,
    }
    options.update(overrides)
    devices, num_nodes = options["devices"], options["num_nodes"]
    if num_nodes > 1 or (isinstance(devices, int) and devices > 1):
        require_rendezvous(num_nodes)
        # One process per device and node; DDP talks over NCCL on GPUs and gloo on the CPU.
        # A frozen backbone leaves parameters without gradients, which DDP must be told about.
        frozen = cfg.model.freeze_backbone_epochs > 0
        options.setdefault("strategy", "ddp_find_unused_parameters_true" if frozen else "ddp")
    return L.Trainer(**options)
