"""The training half of each task: its losses and its metrics, in torch.

Each class extends its numpy half (base/tasks.py: probabilities, decisions, thresholds, the
test report, mistakes, confusion rows, the parity gate's decisions), so one object holds all a
task does: `task(cfg.data.task)` gives it to training and evaluation. Targets may be soft for
both tasks: class probabilities (N, C) for multiclass, a probability per class (N, C) for
multilabel, as mixing two images' targets makes them.

To add a metric, add it to `metrics` of the task: training logs it and evaluation reports it
(PROJECT.md, Add a metric). torchmetrics is imported there, not here: the export and the release
load networks through this module without it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..base import tasks

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Multiclass(tasks.Multiclass):
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The plain mean cross-entropy of a batch (no smoothing, no class weights): what
        val/loss, which early stopping and the kept best epoch go by, and evaluation report.
        Targets are class indices (N,) or class probabilities (N, C)."""
        if targets.is_floating_point():
            return F.cross_entropy(logits, targets.to(logits.dtype))
        return F.cross_entropy(logits, targets)

    def training_loss(
        self, num_classes: int, label_smoothing: float = 0.0, weights: torch.Tensor | None = None
    ) -> Loss:
        """Cross-entropy against the targets smoothed towards uniform (training.label_smoothing);
        with class weights (training.class_balance: loss), an image weighs its target's mix of
        them (w . y) and the batch loss is the weighted mean, sum(w_i * l_i) / sum(w_i), which
        for one-hot targets is PyTorch's weighted cross-entropy. Without either: `loss`, bit for
        bit."""

        def multiclass(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if weights is None and not targets.is_floating_point():
                return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            if not targets.is_floating_point():
                targets = F.one_hot(targets, num_classes).float()
            smoothed = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
            per_image = -(smoothed * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
            if weights is None:
                return per_image.mean()
            image_weights = targets @ weights.to(targets.device)
            return (per_image * image_weights).sum() / image_weights.sum().clamp(min=1e-12)

        return multiclass

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics are given for a batch: the logits (the top one decides)."""
        return logits

    def test_scores(self, logits: torch.Tensor, thresholds: list[float] | None) -> torch.Tensor:
        """What the metrics are given on the test split: as in training."""
        return logits

    def hard_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Class indices; a soft (mixed) target counts for its likeliest class."""
        return targets.argmax(dim=1) if targets.is_floating_point() else targets

    def metrics(self, num_classes: int, validate_args: bool = True) -> nn.ModuleDict:
        """The metrics by name: training logs each per epoch as train/<name> and val/<name>
        (TensorBoard, the progress bar), and evaluation writes it on the test split to
        evaluation_results.json as <name> where its report has no figure of that name.

        accuracy  the share of images whose top class is right (micro, as the report's)
        """
        from torchmetrics.classification import MulticlassAccuracy

        accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=validate_args)
        return nn.ModuleDict({"accuracy": accuracy})


class Multilabel(tasks.Multilabel):
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The plain mean binary cross-entropy per class against 0/1 (or soft) targets."""
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))

    def training_loss(
        self, num_classes: int, label_smoothing: float = 0.0, weights: torch.Tensor | None = None
    ) -> Loss:
        """Binary cross-entropy per class against targets smoothed towards 1/2; class weights are
        each class's positive weight (BCE's pos_weight)."""

        def multilabel(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            targets = targets.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
            pos_weight = None if weights is None else weights.to(logits.device, logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)

        return multilabel

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: given logits, torchmetrics would guess from their range what they are."""
        return logits.sigmoid()

    def test_scores(self, logits: torch.Tensor, thresholds: list[float] | None) -> torch.Tensor:
        """The decisions at the thresholds chosen after training (0.5 decides while training)."""
        return (logits.sigmoid() >= logits.new_tensor(thresholds)).float()

    def hard_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """0/1 per class; a mixed image counts for its dominant labels."""
        return (targets >= 0.5).long()

    def metrics(self, num_classes: int, validate_args: bool = True) -> nn.ModuleDict:
        """The metrics by name, as Multiclass.metrics.

        accuracy  the share of (image, class) decisions that are right
        macro_f1  the mean F1 of the classes
        """
        from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

        return nn.ModuleDict(
            {
                "accuracy": MultilabelAccuracy(num_classes, validate_args=validate_args),
                "macro_f1": MultilabelF1Score(
                    num_classes, average="macro", validate_args=validate_args
                ),
            }
        )


TrainedTask = Multiclass | Multilabel
TASKS: dict[str, TrainedTask] = {t.name: t for t in (Multiclass(), Multilabel())}


def task(name: str) -> TrainedTask:
    """The task `data.task` names, both halves (config.py has checked the name)."""
    return TASKS[name]
