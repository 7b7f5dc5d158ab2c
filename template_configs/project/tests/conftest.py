"""Fixtures: the project's own params.yaml, shrunk to a tiny data set that trains in seconds.

The tests hold for any valid params.yaml: they take its network, image size, channels, optimizer
and augmentation, and override only what would be slow here or need files or the internet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlt_project.base.config import Config, load_config
from mlt_project.data.preprocess import preprocess

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square", "stripes")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """params.yaml with every path inside tmp_path and training cut to CPU-sized."""
    base = load_config(PROJECT_ROOT / "params.yaml")
    paths = {field.name: str(tmp_path / field.name) for field in dataclasses.fields(base.paths)}
    max_epochs = 2
    warmup = base.training.optimization.get("warmup_epochs", 0)
    return dataclasses.replace(
        base,
        paths=dataclasses.replace(base.paths, **paths),
        data=dataclasses.replace(
            base.data,
            num_classes=len(CLASSES),
            val_fraction=0.2,
            test_fraction=0.2,
            skip_corrupt=False,
        ),
        # Random weights: pretrained ones are downloaded, and a weights file may not be here.
        # (and so no freezing, nor a slower backbone: both need pretrained weights).
        model=dataclasses.replace(
            base.model,
            pretrained="none",
            weights_file=None,
            freeze_backbone_epochs=0,
            backbone_lr_factor=1.0,
        ),
        training=dataclasses.replace(
            base.training,
            batch_size=8,
            max_epochs=max_epochs,
            optimization={
                **base.training.optimization,
                # The same share of the run as in params.yaml (it must stay below max_epochs).
                "warmup_epochs": warmup * max_epochs / base.training.max_epochs,
            },
            accelerator="cpu",
            devices=1,
            num_nodes=1,
            precision="32-true",
        ),
        runtime=dataclasses.replace(
            base.runtime, preprocess_workers=1, loader_workers=0, streaming=False, compile=False
        ),
    )


def write_images(raw_dir: Path, per_class: int = 10, size: int = 12) -> None:
    """A few RGB images per class whose pixels depend on the class, so they can be learned."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (raw_dir / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)) + 80 * label
            Image.fromarray(pixels.astype(np.uint8)).save(raw_dir / name / f"{i}.png")


@pytest.fixture
def processed(cfg: Config) -> Config:
    """cfg, with raw images written and preprocessed into Parquet splits."""
    write_images(Path(cfg.paths.raw))
    preprocess(cfg)
    return cfg
