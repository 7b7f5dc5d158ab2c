"""The LightningModule: loss, metrics, optimizer, schedule and augmentation around a network.

The network itself is built by model/build.py and passed in; the hyperparameters keep its spec,
so `checkpoint.load_network` rebuilds whichever network a checkpoint was trained with. The loss
and the metrics of each data.task come from objective.py; a multilabel model's per-class
thresholds (chosen by train.py after fitting) are saved in the checkpoint beside its weights.
With `training.ema_decay`, an average of the weights (model/ema.py) is validated, and
`use_average` puts it into the network before train.py saves the checkpoint DVC tracks.
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
from .ema import ExponentialAverage
from .mix import BatchMix

AVERAGE = "ema."  # the average's keys in the state_dict: not the network's (checkpoint.NET_PREFIX)


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
        label_smoothing: float = 0.0,
        class_balance: str = "none",
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.task = task
        augment = dict(augment or {})
        num_classes = network["num_classes"]
        self.mix = BatchMix(
            num_classes, augment.pop("mixup_alpha", 0.0), augment.pop("cutmix_alpha", 0.0)
        )
        self.augment = BatchAugment(**augment)
        self.criterion = objective.make_loss(task, num_classes, label_smoothing)
        self.ema = ExponentialAverage(net, ema_decay) if ema_decay > 0 else None
        self.channels_last = False  # set by train.py (runtime.channels_last): speed only
        self.saving_final = False  # set by train.py: the checkpoint DVC tracks, without the average
        self.weights_record: dict[str, Any] = {}  # what train.py says the final weights are
        # No input checks in the training hot path: they cost a host sync per step on a GPU.
        self.train_metrics = objective.metrics(task, num_classes, validate_args=False)
        self.val_metrics = objective.metrics(task, num_classes)
        self.thresholds: list[float] | None = None  # multilabel: set by train.py after fitting

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.class_balance == "loss":
            # The DataModule has counted the training split's classes (its setup runs first).
            weights = torch.tensor(self.trainer.datamodule.class_weights)
            num_classes = self.hparams.network["num_classes"]
            self.criterion = objective.make_loss(
                self.task, num_classes, self.hparams.label_smoothing, weights
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

    def use_average(self) -> None:
        """Put the weights' average into the network (after training)."""
        if self.ema is not None:
            self.net.load_state_dict(self.ema.net.state_dict())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # Lightning calls this once per `accumulate_grad_batches` batches: the average follows
        # the optimizer's steps.
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.thresholds is not None:
            checkpoint[THRESHOLDS_KEY] = list(self.thresholds)
        if self.saving_final:
            # The network holds the kept weights now; the average would be a second copy.
            state = checkpoint["state_dict"]
            for key in [key for key in state if key.startswith(AVERAGE)]:
                del state[key]
            checkpoint["weights"] = dict(self.weights_record)

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
        # step more than a small network's whole forward pass. So accuracy only accumulates (on
        # the device) and is logged per epoch; the loss is logged on the steps the logger
        # writes anyway (every log_every_n_steps) and shows in the progress bar.
        hard = objective.hard_targets(self.task, targets)  # a mixed image: its dominant labels
        for metric in self.train_metrics.values():
            metric.update(objective.scores(self.task, logits), hard)
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
        targets = objective.hard_targets(self.task, labels)
        for metric in self.val_metrics.values():
            metric(objective.scores(self.task, logits), targets)
        # The plain loss (no smoothing, no class weights), so val loss, which early stopping
        # and the kept model go by, means the same whatever the training options.
        # sync_dist: under DDP the epoch value averages every process's share of the val set.
        loss = objective.loss(self.task, logits, labels)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        for name, metric in self.val_metrics.items():
            self.log(f"val/{name}", metric, prog_bar=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.thresholds = checkpoint.get(THRESHOLDS_KEY)

    def configure_optimizers(self) -> Any:
        settings = self.hparams.optimizer
        optimizer = make_optimizer(self.net, settings)
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


def parameter_groups(net: Network, lr: float, backbone_lr_factor: float = 1.0) -> Any:
    """The network's parameters; with backbone_lr_factor < 1, two groups: the backbone at
    lr * backbone_lr_factor and the classifier head (network.head) at lr."""
    if backbone_lr_factor == 1:
        return net.parameters()  # one group, as without the option
    head = f"body.{net.head}."
    named = list(net.named_parameters())
    backbone = [p for name, p in named if not name.startswith(head)]
    return [
        {"params": backbone, "lr": lr * backbone_lr_factor},
        {"params": [p for name, p in named if name.startswith(head)], "lr": lr},
    ]


def make_optimizer(net: Network, settings: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW, or SGD with (Nesterov) momentum, from the `training` params."""
    lr, weight_decay = settings["lr"], settings["weight_decay"]
    parameters = parameter_groups(net, lr, settings.get("backbone_lr_factor", 1.0))
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
        # Each group peaks at its own lr (the backbone's is lower with backbone_lr_factor).
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=total, pct_start=min(start, 0.99)
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
