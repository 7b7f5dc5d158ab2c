"""The optimizer and its learning-rate schedule, from the optimizer's keys of `training:`.

Its `__init__` is the schema of those keys (base/schema.py checks params.yaml against it): a new
option is a parameter here, used below, and its value in params.yaml. The schedule is stepped
every optimizer step, so warm-up and decay are smooth whatever the epoch length.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("none", "cosine", "onecycle")


class Optimization:
    """AdamW, or SGD with (Nesterov) momentum, and a none | cosine | onecycle schedule after a
    linear warm-up of `warmup_epochs` (it may be a fraction)."""

    def __init__(
        self,
        max_epochs: int,
        optimizer: str,
        lr: float,
        momentum: float,
        weight_decay: float,
        scheduler: str,
        warmup_epochs: float,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}")
        if lr <= 0:
            raise ValueError("lr must be positive")
        if not 0 <= momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if weight_decay < 0:
            raise ValueError("weight_decay must be 0 or more")
        if not 0 <= warmup_epochs < max_epochs:
            raise ValueError("warmup_epochs must be 0 or more, and below max_epochs")
        self.max_epochs = max_epochs
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.scheduler = scheduler
        self.warmup_epochs = warmup_epochs

    def make_optimizer(
        self, net: nn.Module, backbone_lr_factor: float = 1.0
    ) -> torch.optim.Optimizer:
        parameters = parameter_groups(net, self.lr, backbone_lr_factor)
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                parameters,
                lr=self.lr,
                momentum=self.momentum,
                nesterov=self.momentum > 0,
                weight_decay=self.weight_decay,
            )
        return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, total: int
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The schedule over `total` optimizer steps, None for a constant rate."""
        warmup = round(self.warmup_epochs * total / self.max_epochs)
        if self.scheduler == "onecycle":
            # OneCycle warms up by itself: its first phase is the warm-up (30% when none is set).
            start = warmup / total if warmup else 0.3
            # Each group peaks at its own lr (the backbone's is lower with backbone_lr_factor).
            peaks = [group["lr"] for group in optimizer.param_groups]
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=peaks, total_steps=total, pct_start=min(start, 0.99)
            )
        if self.scheduler == "none" and not warmup:
            return None
        decays = self.scheduler == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not decays:
                return 1.0
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(net: Any, lr: float, backbone_lr_factor: float = 1.0) -> Any:
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
