"""Image files: which files are images, and decoding one the way training sees it (load_image,
decode): preprocess, predict and the server all call these.

EXIF orientation applied, 16- and 32-bit pixels scaled to 8 bits, converted to data.channels and
resized to data.image_size (bilinear). No torch: predict runs without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..base.config import DataConfig
from ..base.errors import PipelineError

ORIENTATION = 0x0112  # the EXIF tag
IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted, without hidden ones (dotfiles, macOS AppleDouble
    files `._name.png`, which are metadata, and hidden folders)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


# What Pillow raises for a file it cannot decode (a bomb: more pixels than Image.MAX_IMAGE_PIXELS).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: Path, data: DataConfig) -> np.ndarray:
    """Decode one image into (C, H, W) uint8, converted to data.channels and resized to data.image_size."""
    try:
        with Image.open(path) as image:
            return decode(image, data)
    except DECODE_ERRORS as error:
        # The caller says how to skip it: preprocess and predict have different switches.
        raise PipelineError(
            f"cannot read image {path}: {error}; replace or remove the file"
        ) from None


def decode(image: Image.Image, data: DataConfig) -> np.ndarray:
    """An opened image as load_image returns it; the server calls it on a request's body, so
    the model sees exactly what predict and training see. Raises DECODE_ERRORS."""
    height, width = data.image_size
    if image.getexif().get(ORIENTATION, 1) != 1:  # a phone photo, stored sideways
        image = ImageOps.exif_transpose(image)
    image = _to_8bit(image).convert("L" if data.channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if data.channels == 1 else pixels.transpose(2, 0, 1)


def _to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16- and 32-bit pixels at 255 instead of scaling them.
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.int64) >> 8
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    return image
