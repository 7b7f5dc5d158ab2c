"""Mixup and CutMix of whole training batches on the device, with a mixing weight per image.

Image i is mixed with image N-1-i (the batch reversed, as timm does): mixup blends the two by
lam_i ~ Beta(alpha, alpha), cutmix pastes a box of the partner covering 1 - lam_i of the area
(lam_i then corrected to the box's area after clipping at the borders). The labels are mixed
by the same lam_i, so the targets become class probabilities (N, C), which every task's loss
takes (base/tasks.py). With both on, each batch is one or the other, cutmix with probability 0.5
(timm's switch_prob). Its options are params.yaml's `augment:` keys of the same names:
`BatchMix.__init__` is their schema, as BatchAugment's is for the others.
The draws come from torch's global generators, which the resume checkpoint restores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SWITCH_PROB = 0.5  # with both on: the share of batches that get cutmix


class BatchMix(nn.Module):
    """(images, labels) -> (mixed float images, soft targets (N, C)); identity when off.

    Labels are class indices (N,) or, for multilabel, multi-hot rows (N, C): mixed alike."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        super().__init__()
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha < 0:
                raise ValueError(f"{name} must be 0 (off) or more, e.g. 0.2 (mixup), 1.0 (cutmix)")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            return images, labels
        cutmix = self.cutmix_alpha > 0
        if cutmix and self.mixup_alpha > 0:
            # On the CPU generator: a host-side decision, without waiting for the device.
            cutmix = bool(torch.rand(()) < SWITCH_PROB)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        x = images.float()
        lam = beta(alpha, len(x), x.device)
        partner = x.flip(0)
        if cutmix:
            inside, lam = boxes(lam, x.shape[-2], x.shape[-1])
            mixed = torch.where(inside.unsqueeze(1), partner, x)
        else:
            weight = lam.view(-1, 1, 1, 1)
            mixed = x * weight + partner * (1 - weight)
        # Class indices become one-hot rows; multilabel targets are multi-hot rows already.
        one_hot = (
            labels.float()
            if labels.is_floating_point()
            else F.one_hot(labels, self.num_classes).float()
        )
        weight = lam.view(-1, 1)
        return mixed, one_hot * weight + one_hot.flip(0) * (1 - weight)


def beta(alpha: float, n: int, device: torch.device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), on the device (no argument checks: they sync with it)."""
    concentration = torch.full((n,), float(alpha), device=device)
    return torch.distributions.Beta(concentration, concentration, validate_args=False).sample()


def boxes(lam: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A box per image covering about 1 - lam of it, anywhere (clipped at the borders):
    the (N, H, W) mask of where the partner shows, and lam corrected to the box's real area."""
    n, device = len(lam), lam.device
    ratio = (1 - lam).sqrt()
    cut_h, cut_w = (ratio * height).round(), (ratio * width).round()
    cy = torch.rand(n, device=device) * height
    cx = torch.rand(n, device=device) * width
    top, bottom = (cy - cut_h / 2).clamp(0, height), (cy + cut_h / 2).clamp(0, height)
    left, right = (cx - cut_w / 2).clamp(0, width), (cx + cut_w / 2).clamp(0, width)
    top, bottom, left, right = (v.round() for v in (top, bottom, left, right))
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < bottom.view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < right.view(-1, 1, 1))
    )
    area = (bottom - top) * (right - left)
    return inside, 1 - area / (height * width)
