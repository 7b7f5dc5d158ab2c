"""An exponential moving average of a network's weights, updated after every optimizer step.

The average is a copy of the network (`ExponentialAverage.net`) that validation runs and the
checkpoint DVC tracks holds, as timm and Ultralytics evaluate and export theirs. Float buffers
(BatchNorm's running mean and variance) are averaged like the weights, as timm's ModelEmaV2
does; integer ones (BatchNorm's batch count) are copied. The copy and its update count live in
the LightningModule's state_dict, so a resume checkpoint restores the average exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialAverage(nn.Module):
    def __init__(self, net: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        # Never trained (no gradients), only validated: it follows the LightningModule's mode, as
        # Lightning sets it (eval for validation), and so never warns of modules left in eval.
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> torch.Tensor:
        """`decay`, ramped up over the first steps: min(decay, (1 + n) / (10 + n)) after n
        updates (TensorFlow's num_updates rule), so the random start fades out quickly."""
        n = self.updates.double()
        return torch.minimum((1 + n) / (10 + n), torch.tensor(self.decay, dtype=torch.double))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        decay = self.current_decay().float()
        averaged = self.net.state_dict()
        for name, value in net.state_dict().items():
            mine = averaged[name]
            if mine.is_floating_point():
                mine.lerp_(value.detach().to(mine.dtype), 1 - decay.to(mine.device))
            else:
                mine.copy_(value)
        self.updates += 1
