"""The LightningModule: the loss, metrics, optimizer, schedule and augmentation around a network.

Everything is built by training/factories.py and passed in: the network (model/build.py; the
hyperparameters keep its spec, so `model/checkpoint.py` rebuilds whichever network a checkpoint
holds), the optimizer and its schedule (model/optim.py), the batch augmentation and mixing
(model/augment.py, model/mix.py). The loss and the metrics are the task's (base/tasks.py). With
`training.ema_decay`, an average of the weights (model/ema.py) is validated. After fitting,
`finish` puts the weights to keep into the network and chooses the task's thresholds on them;
the checkpoint DVC tracks then holds those, without the average's copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch

from ..model.augment import BatchAugment
from ..model.build import Network, NetworkSpec
from ..model.checkpoint import METRIC_NAMES_KEY, THRESHOLDS_KEY
from ..model.ema import ExponentialAverage
from ..model.mix import BatchMix
from ..model.optim import Optimization
from ..model.tasks import task as task_named

if TYPE_CHECKING:
    from .callbacks import KeepBest

AVERAGE = "ema."  # the average's keys in the state_dict: not the network's (checkpoint.NET_PREFIX)


class ImageClassifier(L.LightningModule):
    """Takes images as stored by preprocess: (N, C, H, W) pixel values in 0..255, any dtype."""

    def __init__(
        self,
        net: Network,
        network: NetworkSpec,
        task: str,
        optimization: Optimization,
        augment: BatchAugment | None = None,
        mix: BatchMix | None = None,
        freeze_backbone_epochs: int = 0,
        backbone_lr_factor: float = 1.0,
        label_smoothing: float = 0.0,
        class_balance: str = "none",
        ema_decay: float = 0.0,
        channels_last: bool = False,  # runtime.channels_last, resolved: speed only
        compile: bool = False,  # runtime.compile: speed only
    ) -> None:
        super().__init__()
        built = ["net", "optimization", "augment", "mix", "channels_last", "compile"]
        self.save_hyperparameters(ignore=built)
        num_classes = network["num_classes"]
        self.net = net
        self.task = task_named(task)
        self.optimization = optimization
        self.augment = augment or BatchAugment()
        self.mix = mix or BatchMix(num_classes)
        self.criterion = self.task.training_loss(num_classes, label_smoothing)
        self.ema = ExponentialAverage(net, ema_decay) if ema_decay > 0 else None
        # No input checks in the training hot path: they cost a host sync per step on a GPU.
        self.train_metrics = self.task.metrics(num_classes, validate_args=False)
        self.val_metrics = self.task.metrics(num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # the average's copy too
        if compile:
            # The network only, in place: its state_dict keys stay as they are, and Lightning's
            # logging and the metrics (which would recompile on every new value) stay eager.
            self.net.compile()
        # Set by finish(), after fitting: the thresholds (multilabel), and what the weights are.
        self.thresholds: list[float] | None = None
        self.weights_record: dict[str, float] = {}
        self.finished = False

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.class_balance == "loss":
            # The DataModule has counted the training split's classes (its setup runs first).
            weights = torch.tensor(self.trainer.datamodule.class_weights)
            self.criterion = self.task.training_loss(
                self.hparams.network["num_classes"], self.hparams.label_smoothing, weights
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(images))

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @property
    def validated_net(self) -> torch.nn.Module:
        """The weights validation runs and the checkpoint DVC tracks will hold."""
        return self.ema.net if self.ema is not None else self.net

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this once per `accumulate_grad_batches` batches: the average follows
        # the optimizer's steps.
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)

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
        # Mixup/cutmix turn the labels into soft targets (class probabilities, or a
        # probability per class for multilabel); the loss takes either.
        images, targets = self.mix(self.augment(images), labels)
        logits = self(images)
        loss = self.criterion(logits, targets)
        # The hot path: every call to self.log, metric forward and host sync here costs each
        # step more than a small network's whole forward pass. So the metrics only accumulate
        # (on the device) and are logged per epoch; the loss is logged on the steps the logger
        # writes anyway (every log_every_n_steps) and shows in the progress bar.
        hard = self.task.hard_targets(targets)
        for metric in self.train_metrics.values():
            metric.update(self.task.scores(logits), hard)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        for name, metric in self.train_metrics.items():
            self.log(f"train/{name}", metric)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.validated_net(self._layout(images))
        targets = self.task.hard_targets(labels)
        for metric in self.val_metrics.values():
            metric(self.task.scores(logits), targets)
        # The plain loss (no smoothing, no class weights), so val loss, which early stopping
        # and the kept model go by, means the same whatever the training options.
        # sync_dist: under DDP the epoch value averages every process's share of the val set.
        self.log("val/loss", self.task.loss(logits, labels), prog_bar=True, sync_dist=True)
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimization.make_optimizer(self.net, self.hparams.backbone_lr_factor)
        scheduler = self.optimization.make_scheduler(optimizer, self.total_steps())
        if scheduler is None:
            return optimizer
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

    def finish(
        self, best: KeepBest | None, validation: Callable[[], tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, float]:
        """After fitting: put the weights to keep into the network (the best epoch's when the
        run may stop early, else the last; the average with EMA) and choose the task's
        thresholds on them, from `validation`'s (logits, targets). Returns what the weights are,
        for the checkpoint and evaluation's metrics (best_epoch as numbered in paths.curves)."""
        record: dict[str, float] = {}
        if best is not None and best.restore(self):
            record |= {"best_epoch": best.epoch, "best_val_loss": round(best.best, 6)}
        elif self.ema is not None:
            self.net.load_state_dict(self.ema.net.state_dict())
        if self.ema is not None:
            record["ema_decay"] = self.hparams.ema_decay
        if best is not None:
            record["epochs_trained"] = self.current_epoch
        self.thresholds = self.task.fit_thresholds(validation)
        self.weights_record, self.finished = record, True
        return record

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[METRIC_NAMES_KEY] = list(self.val_metrics)
        if self.thresholds is not None:
            checkpoint[THRESHOLDS_KEY] = list(self.thresholds)
        if self.finished:
            # The network holds the kept weights now; the average would be a second copy.
            state = checkpoint["state_dict"]
            for key in [key for key in state if key.startswith(AVERAGE)]:
                del state[key]
            checkpoint["weights"] = dict(self.weights_record)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.thresholds = checkpoint.get(THRESHOLDS_KEY)
