"""What the network is trained for, per data.task: the loss, the probabilities, the decision, the
training metrics and the per-class thresholds of a multilabel model.

    multiclass  one class an image: softmax over the logits, cross-entropy, the top class
    multilabel  zero or more: a sigmoid per class, binary cross-entropy, each class whose
                probability reaches its threshold (chosen on the validation split, see
                fit_thresholds; 0.5 while training)

Training (classifier.py), the thresholds chosen after it (train.py) and evaluation (eval.py)
all take them from here, so a change of loss (label smoothing, mixup, class weights) is one
change. Targets may be soft for both tasks: class probabilities (N, C) for multiclass, a
probability per class (N, C) for multilabel, as mixing two images' targets makes them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MULTICLASS, MULTILABEL = "multiclass", "multilabel"  # config.TASKS
DEFAULT_THRESHOLD = 0.5  # a class no validation image has: nothing to choose from


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The plain mean loss of a batch: cross-entropy (multiclass) or binary cross-entropy per
    class (multilabel), no smoothing, no class weights: what val/loss and evaluation report.
    Multiclass targets are class indices (N,) or class probabilities (N, C)."""
    if task == MULTILABEL:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    if targets.is_floating_point():
        return F.cross_entropy(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets)


def make_loss(
    task: str,
    num_classes: int,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> Loss:
    """The training loss, loss(logits, targets), with training.label_smoothing and the class
    weights of training.class_balance: loss (class_weights). Without either it is `loss`, bit
    for bit. Targets may be soft (mixup and cutmix blend two images' targets).

    multiclass: cross-entropy against the targets smoothed towards uniform; with weights, an
        image weighs its target's mix of them (w . y) and the batch loss is the weighted mean,
        sum(w_i * l_i) / sum(w_i), which for one-hot targets is PyTorch's weighted cross-entropy.
    multilabel: binary cross-entropy per class against targets smoothed towards 1/2; weights
        are each class's positive weight (BCE's pos_weight).
    """
    if task == MULTILABEL:

        def multilabel(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            targets = targets.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
            pos_weight = None if weights is None else weights.to(logits.device, logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)

        return multilabel

    def multiclass(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if weights is None and not targets.is_floating_point():
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        if not targets.is_floating_point():
            targets = F.one_hot(targets, num_classes).float()
        return soft_cross_entropy(logits, targets, label_smoothing, weights)

    return multiclass


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against class probabilities (N, C), smoothed towards uniform; with class
    weights, the weighted mean over images (make_loss)."""
    smoothed = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
    per_image = -(smoothed * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is None:
        return per_image.mean()
    image_weights = targets @ weights.to(targets.device)
    return (per_image * image_weights).sum() / image_weights.sum().clamp(min=1e-12)


def class_weights(task: str, counts: torch.Tensor, images: int) -> torch.Tensor:
    """Per-class loss weights from the training split: `counts` images per class of `images`.

    multiclass: inverse class frequency, n / (C * n_c), as scikit-learn's "balanced": a class of
        average size weighs 1 and the mean weight over the training images is 1; a class without
        training images weighs 0 (no image has its label).
    multilabel: BCE's positive weight, (n - n_c) / n_c, so a class's positives weigh as much as
        its negatives; 1 for a class without positives (there is nothing to weigh).
    """
    counts = counts.double()
    if task == MULTILABEL:
        return torch.where(counts > 0, (images - counts) / counts.clamp(min=1), 1.0).float()
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    return torch.where(counts > 0, weights, 0.0).float()


def scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    """What the training metrics are given: the logits (multiclass: the top one decides), or
    probabilities (multilabel: torchmetrics would guess from their range whether they are)."""
    return torch.sigmoid(logits) if task == MULTILABEL else logits


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes (multiclass), or a sigmoid per class (multilabel)."""
    return torch.sigmoid(logits) if task == MULTILABEL else torch.softmax(logits, dim=1)


def hard_targets(task: str, targets: torch.Tensor) -> torch.Tensor:
    """Targets as the metrics take them: class indices (multiclass), 0/1 per class (multilabel);
    a soft target counts for its likeliest class, or as present from 0.5."""
    if task == MULTILABEL:
        return (targets >= 0.5).long()
    return targets.argmax(dim=1) if targets.is_floating_point() else targets


def metrics(task: str, num_classes: int, validate_args: bool = True) -> nn.ModuleDict:
    """The metrics of each data.task, by name: the one place to add one (PROJECT.md, Add a metric).

    Training logs each per epoch as train/<name> and val/<name> (TensorBoard, the progress bar);
    evaluation computes it on the test split and writes it to evaluation_results.json as <name>,
    where its own report (eval.py: the figures per class too) has no figure of that name. Each
    takes what `scores` gives and hard targets (`hard_targets`); for multilabel, 0.5 decides
    while training, the thresholds chosen on the validation split in evaluation.

    accuracy  multiclass: the share of images whose top class is right (micro, as evaluation's);
              multilabel: the share of (image, class) decisions that are right
    macro_f1  multilabel: the mean F1 of the classes
    """
    # Imported here: evaluation and export use this module without them.
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MultilabelAccuracy,
        MultilabelF1Score,
    )

    if task == MULTILABEL:
        return nn.ModuleDict(
            {
                "accuracy": MultilabelAccuracy(num_classes, validate_args=validate_args),
                "macro_f1": MultilabelF1Score(
                    num_classes, average="macro", validate_args=validate_args
                ),
            }
        )
    accuracy = MulticlassAccuracy(num_classes, average="micro", validate_args=validate_args)
    return nn.ModuleDict({"accuracy": accuracy})


def decide(task: str, probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Predictions from probabilities (N, C): the top class (N,) for multiclass; for multilabel
    (N, C) booleans, each class at or above its threshold."""
    if task == MULTILABEL:
        cut = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds)
        return probs >= cut
    return probs.argmax(axis=1)


def fit_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """A multilabel model's decision threshold per class, from its validation probabilities.

    For each class, the threshold that maximises that class's F1 on these images, placed midway
    between the lowest probability it accepts and the highest it rejects (not at an image's own
    probability, which a rounding difference would flip); the highest such threshold where
    several give the best F1. DEFAULT_THRESHOLD for a class no image has.
    """
    thresholds = []
    for column in range(probs.shape[1]):
        p, positive = probs[:, column].astype(np.float64), targets[:, column] >= 0.5
        if not positive.any():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-p, kind="stable")
        p, positive = p[order], positive[order]
        hits = np.cumsum(positive)  # true positives when the first k + 1 images are accepted
        accepted = np.arange(1, len(p) + 1)
        f1 = 2 * hits / (accepted + positive.sum())
        # A cut only where the probability drops: equal probabilities are accepted together.
        f1[np.r_[p[:-1] <= p[1:], False]] = -1
        best = int(np.argmax(f1))
        below = p[best + 1] if best + 1 < len(p) else 0.0
        thresholds.append(float((p[best] + below) / 2))
    return thresholds


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (scikit-learn's
    average_precision_score); NaN for a class with no positive image."""
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    hits = np.cumsum(positive)
    last = np.r_[scores[1:] != scores[:-1], True]  # the end of each run of equal scores
    precision = hits[last] / np.arange(1, len(scores) + 1)[last]
    recall = hits[last] / positive.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
