"""The processed-data format: one Parquet file per split.

Each row is one image: `image` holds its uint8 pixels (C*H*W, as a fixed-size list) and `label`
its class index. The file's metadata holds the image shape and the class names, so readers
need nothing else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
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
    write_chunks(path, [(images, labels)], tuple(images.shape[1:]), class_names)


def write_chunks(
    path: Path,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, ...],
    class_names: list[str],
) -> int:
    """Write (images, labels) chunks as they come, so only one chunk is in memory; return rows."""
    metadata = {"image_shape": json.dumps(list(shape)), "class_names": json.dumps(class_names)}
    schema = pa.schema(
        [("image", pa.list_(pa.uint8(), int(np.prod(shape)))), ("label", pa.int64())],
        metadata=metadata,
    )
    rows = 0
    with atomic_output(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for images, labels in chunks:
            pixels = pa.array(images.reshape(-1), type=pa.uint8())
            image_column = pa.FixedSizeListArray.from_arrays(pixels, int(np.prod(shape)))
            label_column = pa.array(labels, type=pa.int64())
            table = pa.Table.from_arrays([image_column, label_column], schema=schema)
            writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
            rows += len(labels)
    return rows


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a split into contiguous arrays: images (N, C, H, W) uint8, labels (N,) int64."""
    parquet = open_split(path)
    shape, class_names = split_info(parquet, path)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    images = np.empty((starts[-1], *shape), dtype=np.uint8)
    labels = np.empty(starts[-1], dtype=np.int64)

    def copy_group(group: int) -> None:
        rows = slice(starts[group], starts[group + 1])
        images[rows], labels[rows] = read_row_group(parquet, group, shape)
        # Arrow's allocator keeps freed buffers for reuse, per thread; hand them back.
        pa.default_memory_pool().release_unused()

    # Row groups decode in parallel (Arrow releases the GIL) straight into one preallocated
    # array: peak memory is the data plus a row group per thread, not two whole copies.
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(copy_group, range(len(sizes))))
    return images, labels, class_names


def open_split(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro preprocess` first")
    return pq.ParquetFile(path)


def split_info(parquet: pq.ParquetFile, path: Path) -> tuple[list[int], list[str]]:
    """The image shape (C, H, W) and class names stored in a split's metadata."""
    metadata = parquet.schema_arrow.metadata or {}
    try:
        return json.loads(metadata[b"image_shape"]), json.loads(metadata[b"class_names"])
    except KeyError:
        raise PipelineError(
            f"{path} was not written by preprocess: rerun `dvc repro -f preprocess`"
        ) from None


def read_row_group(
    parquet: pq.ParquetFile, group: int, shape: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """One row group as images (n, C, H, W) uint8 and labels (n,) int64, no per-row objects."""
    # One thread: a streaming reader holds one row group, and Arrow's thread pool would keep
    # a memory arena per thread.
    table = parquet.read_row_group(group, columns=["image", "label"], use_threads=False)
    pixels = table.column("image").combine_chunks().flatten().to_numpy()
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    return pixels.reshape(len(labels), *shape), labels
