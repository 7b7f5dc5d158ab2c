"""The processed-data format: one Parquet file per split.

Each row is one image: `image` holds its uint8 pixels (C*H*W, as a fixed-size list) and `label`
its class index. The file's metadata holds the image shape and the class names, so readers
need nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import PipelineError
from ..files import atomic_output

SPLITS = ("train", "val", "test")
ROW_GROUP_SIZE = 4096


def split_path(processed_dir: str | Path, split: str) -> Path:
    return Path(processed_dir) / f"{split}.parquet"


def write_split(path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
    """Write (N, C, H, W) uint8 images and their labels, atomically."""
    _, *shape = images.shape
    pixels = pa.array(images.reshape(-1), type=pa.uint8())
    table = pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(pixels, int(np.prod(shape))),
            "label": pa.array(labels, type=pa.int64()),
        }
    )
    metadata = {"image_shape": json.dumps(shape), "class_names": json.dumps(class_names)}
    table = table.replace_schema_metadata(metadata)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a split into contiguous arrays: images (N, C, H, W) uint8, labels (N,) int64."""
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro preprocess` first")
    table = pq.read_table(path, columns=["image", "label"])
    metadata = table.schema.metadata or {}
    try:
        shape = json.loads(metadata[b"image_shape"])
        class_names = json.loads(metadata[b"class_names"])
    except KeyError:
        raise PipelineError(
            f"{path} was not written by preprocess: rerun `dvc repro -f preprocess`"
        ) from None
    # One copy from Arrow's buffers into a writable array; no per-row Python objects.
    images = np.empty((table.num_rows, *shape), dtype=np.uint8)
    flat = images.reshape(table.num_rows, -1)
    start = 0
    for chunk in table.column("image").chunks:
        flat[start : start + len(chunk)] = chunk.flatten().to_numpy().reshape(len(chunk), -1)
        start += len(chunk)
    labels = np.array(table.column("label").to_numpy(), dtype=np.int64)
    return images, labels, class_names
