"""Networks defined in this package, by the name `model.name` selects them with.

To add one: write an `nn.Module` here whose `__init__` takes `input_shape` (C, H, W) and
`num_classes` first, then its own options, and put `@network("name")` above it. Its options come
from the params.yaml section `model.<name>:`, checked against the signature: unknown or mistyped
keys are errors, and so is a missing one that has no default. It receives float pixels, scaled
to 0..1, in (N, C, H, W) and returns logits (N, num_classes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NETWORKS: dict[str, type[nn.Module]] = {}


def network(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make the network buildable as `model.name: <name>`."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        NETWORKS[name] = cls
        return cls

    return register


@network("mlp")
class MLP(nn.Module):
    """Two linear layers over the flattened pixels: a baseline for tiny images."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        hidden_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@network("cnn")
class SmallCNN(nn.Module):
    """Blocks of two 3x3 conv-BN-ReLU layers, each block doubling the width and halving the
    resolution, then global average pooling and a linear head: small images (8-64 px)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        width: int,
        blocks: int,
        dropout: float,
    ) -> None:
        super().__init__()
        channels = input_shape[0]
        size = min(input_shape[1:])
        layers: list[nn.Module] = []
        for block in range(blocks):
            out = width * 2**block
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
            if size >= 2:  # pool while there is resolution left: 8 px images survive 3 blocks
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
