"""The processed-data format: one Parquet file per split.

Each row is one image: `image` holds its uint8 pixels (C*H*W bytes, fixed-size binary), `label`
its class index (multiclass) or its multi-hot labels (multilabel: one byte per class, 0 or 1,
fixed-size binary), and `file_name` its source file, relative to paths.raw (so evaluation can
name the images it gets wrong). The file's metadata holds the format number, the task, the image
shape and the class names, so readers need nothing else. Row groups are sized in bytes, not rows, so memory
per row group is the same whatever the image size.
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

from ..base.errors import PipelineError
from ..base.fileio import atomic_output
from ..base.tasks import OLDEST_TASK, TASKS, Task

SPLITS = ("train", "val", "test")
# 2: pixels as fixed_size_binary (1: a fixed-size list of uint8, which decoded through per-value
# offsets and took ~10x a row group of transient memory to write). 3: the file_name column.
# 4: the task in the metadata, and multi-hot labels for multilabel.
FORMAT = 4
# Bytes of pixels per row group: what a reader or writer holds at a time, per thread or worker.
ROW_GROUP_BYTES = 32 * 2**20
PAGE_BYTES = 2**20
READ_THREADS = 4
RERUN = "rerun `dvc repro -f preprocess`"


def split_path(processed_dir: str | Path, split: str) -> Path:
    return Path(processed_dir) / f"{split}.parquet"


def rows_per_group(shape: tuple[int, ...], row_group_bytes: int = ROW_GROUP_BYTES) -> int:
    """Images per row group: as many as fit in `row_group_bytes`, at least one."""
    return max(1, row_group_bytes // int(np.prod(shape)))


def write_chunks(
    path: Path,
    chunks: Iterable[tuple[np.ndarray, np.ndarray, list[str]]],
    shape: tuple[int, ...],
    class_names: list[str],
    row_group_bytes: int = ROW_GROUP_BYTES,
    *,
    task: Task = TASKS[OLDEST_TASK],
) -> int:
    """Write (images, labels, file names) chunks as they come, one chunk in memory; return rows.

    A chunk becomes one row group or more (at most `row_group_bytes` of pixels each). The labels
    of a task with several an image are (n, classes) multi-hot, stored as one byte per class.
    """
    size = int(np.prod(shape))
    classes = len(class_names)
    multi_hot = task.multi_hot
    label_type = pa.binary(classes) if multi_hot else pa.int64()
    metadata = {
        "format": str(FORMAT),
        "task": task.name,
        "image_shape": json.dumps(list(shape)),
        "class_names": json.dumps(class_names),
    }
    schema = pa.schema(
        [
            pa.field("image", pa.binary(size), nullable=False),
            pa.field("label", label_type),
            pa.field("file_name", pa.string()),
        ],
        metadata=metadata,
    )
    rows = 0
    options = {
        # Pixels uncompressed and never dictionary-encoded: decoded images barely compress, and
        # decompressing them would cost every epoch of a streamed read.
        "compression": {"image": "none", "label": "snappy", "file_name": "snappy"},
        "use_dictionary": [] if multi_hot else ["label"],
        # Pages of ~PAGE_BYTES: the writer encodes this many rows before it checks a page's size,
        # and by default (1,024 rows) a page, and its copies, held the whole row group.
        "write_batch_size": max(1, PAGE_BYTES // size),
        # Min/max of the pixels would store two whole images per page, and filter nothing.
        "write_statistics": [] if multi_hot else ["label"],
    }
    with atomic_output(path) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        for images, labels, file_names in chunks:
            pixels = np.ascontiguousarray(images, dtype=np.uint8)
            # The pixels' own memory as the column's data buffer: no copy, no per-row objects.
            image_column = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(size), len(labels), [None, pa.py_buffer(pixels)]
            )
            if multi_hot:
                hot = np.ascontiguousarray(labels, dtype=np.uint8)
                label_column = pa.FixedSizeBinaryArray.from_buffers(
                    label_type, len(hot), [None, pa.py_buffer(hot)]
                )
            else:
                label_column = pa.array(labels, type=pa.int64())
            name_column = pa.array(file_names, type=pa.string())
            table = pa.Table.from_arrays([image_column, label_column, name_column], schema=schema)
            writer.write_table(table, row_group_size=rows_per_group(shape, row_group_bytes))
            rows += len(labels)
    return rows


def read_split(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a split into contiguous arrays: images (N, C, H, W) uint8, labels (N,) int64, or
    (N, classes) float32 multi-hot."""
    with open_split(path) as parquet:
        shape, class_names = split_info(parquet, path)
        multi_hot = pa.types.is_fixed_size_binary(parquet.schema_arrow.field("label").type)
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    images = np.empty((starts[-1], *shape), dtype=np.uint8)
    if multi_hot:
        labels = np.empty((starts[-1], len(class_names)), dtype=np.float32)
    else:
        labels = np.empty(starts[-1], dtype=np.int64)

    def copy_group(group: int) -> None:
        # A reader of its own: a ParquetFile shared between threads crashes inside libparquet.
        with pq.ParquetFile(path) as parquet:
            rows = slice(starts[group], starts[group + 1])
            images[rows], labels[rows] = read_row_group(parquet, group, shape)

    # Row groups decode in parallel (Arrow releases the GIL) straight into one preallocated
    # array: peak memory is the data plus a row group per thread, not two whole copies.
    with ThreadPoolExecutor(max(1, min(READ_THREADS, os.cpu_count() or 1, len(sizes)))) as pool:
        list(pool.map(copy_group, range(len(sizes))))
    # Arrow's allocator keeps freed buffers for reuse; hand them back, once all threads are done.
    pa.default_memory_pool().release_unused()
    return images, labels, class_names


def read_head(path: Path, rows: int) -> tuple[np.ndarray, list[str]]:
    """The first `rows` images of a split (all, if it has fewer) and its class names, reading
    only the row groups they are in. Rows are in a seeded random order (preprocess), so they are
    a sample of the split."""
    with open_split(path) as parquet:
        shape, class_names = split_info(parquet, path)
        parts, found = [], 0
        for group in range(parquet.num_row_groups):
            if found >= rows:
                break
            images, _ = read_row_group(parquet, group, shape)
            parts.append(images[: rows - found].copy())
            found += len(parts[-1])
    empty = np.empty((0, *shape), dtype=np.uint8)
    return np.concatenate(parts) if parts else empty, class_names


def read_file_names(path: Path) -> list[str]:
    """Each row's source file (relative to paths.raw), in file order: one small column."""
    with open_split(path) as parquet:
        split_info(parquet, path)
        return parquet.read(columns=["file_name"]).column("file_name").to_pylist()


def class_counts(path: Path) -> tuple[np.ndarray, int]:
    """Images per class in a split, and its number of images, read from the label column alone
    (no pixels). A multilabel image counts for each of its classes."""
    with open_split(path) as parquet:
        _, class_names = split_info(parquet, path)
        column = parquet.read(columns=["label"]).column("label")
    if pa.types.is_fixed_size_binary(column.type):
        hot = pixels_of(column, [column.type.byte_width])
        return hot.sum(axis=0, dtype=np.int64), len(hot)
    labels = column.to_numpy()
    return np.bincount(labels, minlength=len(class_names)), len(labels)


def open_split(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro preprocess` first")
    return pq.ParquetFile(path)


def split_info(parquet: pq.ParquetFile, path: Path) -> tuple[list[int], list[str]]:
    """The image shape (C, H, W) and class names stored in a split's metadata."""
    metadata = parquet.schema_arrow.metadata or {}
    if b"image_shape" not in metadata or b"class_names" not in metadata:
        raise PipelineError(f"{path} was not written by preprocess: {RERUN}")
    found = int(metadata.get(b"format", b"1"))
    if found != FORMAT:
        raise PipelineError(
            f"{path} is in processed-data format {found}, this code reads format {FORMAT}: {RERUN}"
        )
    return json.loads(metadata[b"image_shape"]), json.loads(metadata[b"class_names"])


def split_task(parquet: pq.ParquetFile) -> str:
    """multiclass or multilabel: what the split's labels are (after split_info checked it)."""
    return (parquet.schema_arrow.metadata or {}).get(b"task", OLDEST_TASK.encode()).decode()


def require_task(parquet: pq.ParquetFile, path: Path, task: str) -> None:
    """Refuse a split preprocessed for the other task than params.yaml's data.task."""
    found = split_task(parquet)
    if found != task:
        raise PipelineError(
            f"{path} holds {found} labels but data.task is {task}: "
            "rerun `dvc repro preprocess` (or set data.task back)"
        )


def read_row_group(
    parquet: pq.ParquetFile, group: int, shape: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """One row group as images (n, C, H, W) uint8 and labels, no per-row objects: (n,) int64
    class indices, or (n, classes) float32 multi-hot (the targets BCE takes).

    The images may be a read-only view of Arrow's memory.
    """
    # One thread: a streaming reader holds one row group, and Arrow's thread pool would keep
    # a memory arena per thread.
    table = parquet.read_row_group(group, columns=["image", "label"], use_threads=False)
    column = table.column("label")
    if pa.types.is_fixed_size_binary(column.type):
        labels = pixels_of(column, [column.type.byte_width]).astype(np.float32)
    else:
        labels = column.to_numpy().astype(np.int64, copy=False)
    return pixels_of(table.column("image"), shape), labels


def pixels_of(column: pa.ChunkedArray, shape: list[int]) -> np.ndarray:
    """A fixed_size_binary column as (n, *shape) uint8: a view of its buffer where it is one chunk."""
    size = int(np.prod(shape))
    parts = [
        # buffers()[1] is the data of the whole parent array; a slice starts `offset` rows in.
        np.frombuffer(chunk.buffers()[1], np.uint8, len(chunk) * size, chunk.offset * size)
        for chunk in column.chunks
    ]
    pixels = parts[0] if len(parts) == 1 else np.concatenate(parts or [np.empty(0, np.uint8)])
    return pixels.reshape(len(pixels) // size, *shape)
