"""The training loss: cross-entropy with label smoothing and class weights, on int or soft targets.

Targets are class indices (N,) as the data gives them, or class probabilities (N, C) where
mixup or cutmix have blended two labels (model/mix.py). Plain cross-entropy on class indices is
the default path, so a run without the options computes what it always did, bit for bit.
(A multi-label task would add its own branch in `make_loss`: BCE on multi-hot targets.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """Inverse class frequency, n / (C * n_c), as scikit-learn's "balanced": a class of average
    size weighs 1 and the mean weight over the training images is 1. A class without training
    images weighs 0 (no image has its label)."""
    counts = counts.double()
    weights = counts.sum() / (len(counts) * counts.clamp(min=1))
    return torch.where(counts > 0, weights, 0.0).float()


def make_loss(
    num_classes: int, label_smoothing: float = 0.0, weights: torch.Tensor | None = None
) -> Loss:
    """loss(logits, targets): targets are class indices (N,) or probabilities (N, C)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if weights is None and not targets.is_floating_point():
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        if not targets.is_floating_point():
            targets = F.one_hot(targets, num_classes).float()
        return soft_cross_entropy(logits, targets, label_smoothing, weights)

    return loss


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against class probabilities, smoothed towards uniform by label_smoothing.

    With class weights, an image weighs its target's mix of them (w . y) and the batch loss is
    the weighted mean, sum(w_i * loss_i) / sum(w_i): for one-hot targets that is PyTorch's
    weighted cross-entropy, and the loss's scale does not depend on the batch's class mix.
    """
    smoothed = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
    per_image = -(smoothed * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is None:
        return per_image.mean()
    image_weights = targets @ weights.to(targets.device)
    return (per_image * image_weights).sum() / image_weights.sum().clamp(min=1e-12)
