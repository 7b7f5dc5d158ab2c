"""Training-time augmentation of whole batches on the device: crop, flip, rotation, colour jitter.

Every image draws its own parameters, and the geometric ones combine into one affine warp per
image, applied to the batch by a single `grid_sample`. `BatchAugment.__init__` is the schema of
params.yaml's `augment:` keys (with mix.py's BatchMix): a new augmentation is a parameter here,
off by default, used in `forward`, and its value in params.yaml. (torchvision.transforms.v2 draws one set
of parameters per call, so on a batch every image would get the same crop; looping over images
instead costs a few kernel launches per image and step on a GPU.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# RandomResizedCrop's usual range of aspect ratios (width / height) for the crop.
ASPECT_RATIOS = (3 / 4, 4 / 3)


class BatchAugment(nn.Module):
    """(N, C, H, W) pixels in 0..255 -> float pixels in 0..255, augmented per image."""

    def __init__(
        self,
        crop_scale: tuple[float, float] = (1.0, 1.0),  # random resized crop: the area kept
        horizontal_flip: bool = False,  # flip half of the images left-right
        rotation: float = 0.0,  # rotate by up to this many degrees either way
        color_jitter: float = 0.0,  # brightness, contrast, saturation by up to +-this fraction
    ) -> None:
        super().__init__()
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError("crop_scale must be [low, high] with 0 < low <= high <= 1")
        if not 0 <= rotation <= 180:
            raise ValueError("rotation must be between 0 and 180 degrees")
        if not 0 <= color_jitter < 1:
            raise ValueError("color_jitter must be in [0, 1)")
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.horizontal_flip = horizontal_flip
        self.rotation = rotation
        self.color_jitter = color_jitter

    @property
    def geometric(self) -> bool:
        return self.crop_scale != (1.0, 1.0) or self.horizontal_flip or self.rotation > 0

    @property
    def enabled(self) -> bool:
        return self.geometric or self.color_jitter > 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return images  # off: batches pass untouched, bit for bit
        x = images.float()
        if self.geometric:
            x = self.warp(x)
        if self.color_jitter > 0:
            x = self.jitter(x)
        return x

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        low, high = self.crop_scale
        area = _uniform(n, low, high, x)
        log_ratio = _uniform(n, math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1]), x)
        ratio = log_ratio.exp() if self.crop_scale != (1.0, 1.0) else torch.ones_like(area)
        # The crop's width and height as fractions of the image's, at most the whole image.
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        # Its centre, anywhere that keeps it inside the image (grid coordinates run -1..1).
        cx = _uniform(n, -1.0, 1.0, x) * (1 - width)
        cy = _uniform(n, -1.0, 1.0, x) * (1 - height)
        angle = _uniform(n, -self.rotation, self.rotation, x) * (math.pi / 180)
        flip = torch.ones_like(area)
        if self.horizontal_flip:
            flip = torch.where(torch.rand(n, device=x.device) < 0.5, -flip, flip)
        cos, sin = angle.cos(), angle.sin()
        # Output grid -> input coordinates: flip, scale to the crop, rotate, move to its centre.
        theta = torch.stack(
            [
                torch.stack([flip * width * cos, -height * sin, cx], dim=1),
                torch.stack([flip * width * sin, height * cos, cy], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def jitter(self, x: torch.Tensor) -> torch.Tensor:
        n, strength = len(x), self.color_jitter
        factors = [_uniform(n, 1 - strength, 1 + strength, x).view(n, 1, 1, 1) for _ in range(3)]
        brightness, contrast, saturation = factors
        x = x * brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # each image's mean gray: contrast's anchor
        x = (x - mean) * contrast + mean
        if x.shape[1] == 3:
            gray = x.mean(dim=1, keepdim=True)
            x = gray + (x - gray) * saturation
        return x.clamp(0, 255)


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, device=like.device).uniform_(low, high)
