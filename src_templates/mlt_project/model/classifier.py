"""The LightningModule: loss, metrics, optimizer, schedule and augmentation around a network.

The network itself is built by model/build.py and passed in; the hyperparameters keep its spec,
so `checkpoint.load_network` rebuilds whichever network a checkpoint was trained with. The loss
and the metrics of each data.task come from objective.py; a multilabel model's per-class
thresholds (chosen by train.py after fitting) are saved in the checkpoint beside its weights.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from ..checkpoint import THRESHOLDS_KEY
from . import objective
from .augment import BatchAugment
from .build import Network, NetworkSpec


class ImageClassifier(L.LightningModule):
    """Takes images as stored by preprocess: (N, C, H, W) pixel values in 0..255, any dtype."""

    def __init__(
        self,
        net: Network,
        network: NetworkSpec,
        optimizer: dict[str, Any],
        augment: dict[str, Any] | None = None,
        freeze_backbone_epochs: int = 0,
        task: str = objective.MULTICLASS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.task = task
        self.augment = BatchAugment(**(augment or {}))
        num_classes = network["num_classes"]
        # No input checks in the training hot path: they cost a host sync per step on a GPU.
        self.train_metrics = objective.training_metrics(task, num_classes, validate_args=False)
        self.val_metrics = objective.training_metrics(task, num_classes)
        self.thresholds: list[float] | None = None  # multilabel: set by train.py after fitting

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def on_train_epoch_start(self) -> None:
        # From the epoch count, so a resumed run freezes exactly as the interrupted one did.
        if self.hparams.freeze_backbone_epochs:
            self.net.set_backbone_trainable(
                self.current_epoch >= self.hparams.freeze_backbone_epochs
            )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        # Augmented here, on the device the batch is on: training batches only. (Not in
        # on_after_batch_transfer: Lightning warns on every run when a DataModule is passed too.)
        logits = self(self.augment(images))
        loss = objective.loss(self.task, logits, labels)
        # The hot path: every call to self.log, metric forward and host sync here costs each
        # step more than a small network's whole forward pass. So accuracy only accumulates (on
        # the device) and is logged per epoch; the loss is logged on the steps the logger
        # writes anyway (every log_every_n_steps) and shows in the progress bar.
        targets = objective.hard_targets(self.task, labels)
        for metric in self.train_metrics.values():
            metric.update(logits, targets)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        for name, metric in self.train_metrics.items():
            self.log(f"train/{name}", metric)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        targets = objective.hard_targets(self.task, labels)
        for metric in self.val_metrics.values():
            metric(logits, targets)
        # sync_dist: under DDP the epoch value averages every process's share of the val set.
        loss = objective.loss(self.task, logits, labels)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.thresholds is not None:
            checkpoint[THRESHOLDS_KEY] = list(self.thresholds)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.thresholds = checkpoint.get(THRESHOLDS_KEY)

    def configure_optimizers(self) -> Any:
        settings = self.hparams.optimizer
        optimizer = make_optimizer(self.net.parameters(), settings)
        total = self.total_steps()
        warmup = round(settings["warmup_epochs"] * total / max(self.trainer.max_epochs or 1, 1))
        scheduler = make_scheduler(optimizer, settings, total, warmup)
        if scheduler is None:
            return optimizer
        # Stepped every batch: warm-up and decay are smooth whatever the epoch length.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def total_steps(self) -> int:
        """Optimizer steps in the whole run, which the schedule spans.

        Not trainer.estimated_stepping_batches when the DataModule can tell: called here, before
        a resume restores the loops, it builds the train loader early, and the loader's restored
        position is then lost (the resumed run would differ from an uninterrupted one).
        """
        trainer = self.trainer
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "batches_per_epoch"):
            return int(trainer.estimated_stepping_batches)
        batches = datamodule.batches_per_epoch(trainer.world_size)
        total = math.ceil(batches / trainer.accumulate_grad_batches) * max(
            trainer.max_epochs or 1, 1
        )
        return min(total, trainer.max_steps) if trainer.max_steps != -1 else total


def make_optimizer(parameters: Any, settings: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW, or SGD with (Nesterov) momentum, from the `training` params."""
    lr, weight_decay = settings["lr"], settings["weight_decay"]
    if settings["name"] == "sgd":
        momentum = settings["momentum"]
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
        )
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: dict[str, Any], total: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """none | cosine | onecycle, each after `warmup` steps of linear warm-up."""
    kind = settings["scheduler"]
    if kind == "onecycle":
        # OneCycle warms up by itself: its first phase is the warm-up (30% when none is set).
        start = warmup / total if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings["lr"], total_steps=total, pct_start=min(start, 0.99)
        )
    if kind == "none" and not warmup:
        return None

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "none":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
