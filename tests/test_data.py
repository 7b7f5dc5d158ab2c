"""The processed-data path: Parquet reads that survive many threads, the format, fast imports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlt_project.base.errors import PipelineError
from mlt_project.data.labels import Images
from mlt_project.data.report import data_report, write_report
from mlt_project.data.splits import Assignment, FileFacts
from mlt_project.data.store import (
    pixels_of,
    read_file_names,
    read_row_group,
    read_split,
    rows_per_group,
    split_info,
    write_chunks,
)

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src_templates"

# Each process reads the split this many times with os.cpu_count() reporting 16, then prints
# the SHA-256 of every read. Shared readers crashed (SIGSEGV) or hung in libparquet this way.
READER = textwrap.dedent(
    """
    import hashlib, os, sys
    from pathlib import Path
    os.cpu_count = lambda: 16
    from mlt_project.data.store import read_split
    for _ in range(int(sys.argv[2])):
        images, labels, _ = read_split(Path(sys.argv[1]))
        print(hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest(), flush=True)
    """
)


def test_many_threads_in_many_processes_read_a_split_identically(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60_000, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    path = tmp_path / "train.parquet"
    # 256 rows per row group: ~235 groups, so threads often read at the same moment.
    names = [f"{i}.png" for i in range(len(images))]
    write_chunks(path, [(images, labels, names)], (1, 16, 16), list("0123456789"), 256 * 256)
    assert pq.ParquetFile(path).num_row_groups == 235
    expected = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    env = dict(os.environ, PYTHONPATH=str(SRC))
    reads = 8
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path), str(reads)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes, stderr = [], []
    for process in processes:
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            outcomes.append(("hung", out.split()))
        else:
            outcomes.append((process.returncode, out.split()))
        stderr.append(err[-500:])
    assert outcomes == [(0, [expected] * reads)] * len(processes), stderr


def test_row_groups_are_sized_in_bytes(tmp_path):
    images = np.arange(100 * 3 * 4 * 4, dtype=np.uint64).astype(np.uint8).reshape(100, 3, 4, 4)
    labels = np.arange(100) % 3
    path = tmp_path / "split.parquet"
    # 48 bytes per image, 1,000 bytes per row group: 20 images each.
    names = [f"img/{i}.png" for i in range(100)]
    chunks = [(images[:70], labels[:70], names[:70]), (images[70:], labels[70:], names[70:])]
    rows = write_chunks(path, chunks, (3, 4, 4), ["a", "b", "c"], 1000)
    parquet = pq.ParquetFile(path)
    assert rows == 100
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert sizes == [20, 20, 20, 10, 20, 10]
    assert parquet.schema_arrow.field("image").type == pa.binary(48)
    read_images, read_labels, names = read_split(path)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert names == ["a", "b", "c"]
    assert read_file_names(path) == [f"img/{i}.png" for i in range(100)]
    assert rows_per_group((3, 224, 224), 32 * 2**20) == 222
    assert rows_per_group((3, 4096, 4096), 2**20) == 1


def test_a_row_group_reads_as_a_view_of_arrows_memory(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (50, 1, 8, 8), dtype=np.uint8)
    path = tmp_path / "split.parquet"
    write_chunks(path, [(images, np.zeros(50, dtype=np.int64), ["x"] * 50)], (1, 8, 8), ["a", "b"])
    pixels, _ = read_row_group(pq.ParquetFile(path), 0, [1, 8, 8])
    np.testing.assert_array_equal(pixels, images)
    assert not pixels.flags.owndata  # no copy: numpy wraps the column's buffer


def test_pixels_of_a_sliced_and_chunked_column():
    data = np.arange(10 * 6, dtype=np.uint8)
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(6), 10, [None, pa.py_buffer(data)])
    column = pa.chunked_array([array.slice(3, 4), array.slice(8, 2)])
    pixels = pixels_of(column, [1, 2, 3])
    expected = np.concatenate([data[18:42], data[48:60]]).reshape(6, 1, 2, 3)
    np.testing.assert_array_equal(pixels, expected)


def test_a_split_in_the_old_list_format_asks_to_rerun_preprocess(tmp_path):
    path = tmp_path / "train.parquet"
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(8, np.uint8)), 4)
    schema = pa.schema(
        [("image", pa.list_(pa.uint8(), 4)), ("label", pa.int64())],
        metadata={"image_shape": "[1, 2, 2]", "class_names": '["a", "b"]'},
    )
    pq.write_table(pa.Table.from_arrays([pixels, pa.array([0, 1])], schema=schema), path)
    with pytest.raises(PipelineError) as error:
        split_info(pq.ParquetFile(path), path)
    assert str(error.value) == (
        f"{path} is in processed-data format 1, this code reads format 4: "
        "rerun `dvc repro -f preprocess`"
    )
    with pytest.raises(PipelineError, match="rerun `dvc repro -f preprocess`"):
        read_split(path)


# ---------------------------------------------------------------- the data report


def test_the_report_counts_each_class_in_each_split_and_shows_duplicates_and_skips(tmp_path):
    raw = Path("/data/raw")
    names = ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "g.png"]
    found = Images(
        class_names=["cat", "dog"],
        files=[raw / name for name in names],
        labels=np.array([0, 1, 0, 1, 0, 1, 1]),
        fixed_splits=[None, None, "test", None, None, None, None],
        source="data/raw/metadata.csv",
        bad_rows=["line 9: unknown split 'tset'"],
        unlisted=2,
    )
    facts = [
        FileFacts(b"A", (8, 8)),
        FileFacts(b"B", (8, 8)),
        FileFacts(b"C", (16, 8)),
        FileFacts(b"A", (8, 8)),  # a.png's bytes, labelled dog: a labelling mistake
        FileFacts(b"E", None),  # unreadable
        FileFacts(b"F", (8, 8)),
        FileFacts(b"B", (8, 8)),  # b.png's bytes, with b.png's label
    ]
    assignment = Assignment(
        indices={"train": np.array([6, 0, 3, 4, 1]), "val": np.array([5]), "test": np.array([2])},
        duplicate_groups=[[1, 6], [0, 3]],
        moved_for_class=[(5, "val")],
        classes_missing=[(0, "val")],
    )
    report = data_report(found, names, facts, assignment, {raw / "e.png"})
    assert report == {
        "labels_from": "data/raw/metadata.csv",
        "images": {"train": 4, "val": 1, "test": 1},  # e.png is not in train: unreadable
        "per_class": {
            "cat": {"train": 1, "val": 0, "test": 1},
            "dog": {"train": 3, "val": 1, "test": 0},
        },
        "splits": {
            "given_by_metadata": 1,
            "drawn_by_hash": 6,
            "moved_to_keep_classes_present": [{"file_name": "f.png", "split": "val"}],
            "classes_missing": {"val": ["cat"], "test": []},
        },
        "duplicates": {
            "groups": 2,
            "copies": 2,
            "with_different_labels": 1,
            "examples": [["a.png", "d.png"], ["b.png", "g.png"]],  # the mistake first
        },
        "skipped": {
            "unreadable": ["e.png"],
            "unreadable_count": 1,
            "bad_rows": ["line 9: unknown split 'tset'"],
            "bad_rows_count": 1,
            "not_in_metadata": 2,
        },
        "image_sizes": {"8x8": 5, "16x8": 1, "unreadable": 1},
        "image_sizes_other": 0,
    }
    assert list(report["image_sizes"]) == ["8x8", "16x8", "unreadable"]  # most common first
    path = tmp_path / "reports" / "data.json"
    write_report(path, report)
    assert json.loads(path.read_text()) == report
    assert path.read_text().endswith("}\n")


def test_a_multilabel_image_counts_once_in_images_and_once_per_class():
    names = ["0.png", "1.png", "2.png", "3.png"]
    found = Images(
        class_names=["sun", "tree"],
        files=[Path(name) for name in names],
        labels=np.array([[1, 1], [0, 0], [1, 0], [0, 1]], dtype=np.uint8),
        fixed_splits=[None] * 4,
        source="data/raw/metadata.csv",
    )
    facts = [FileFacts(bytes([i]), (4, 4)) for i in range(4)]
    assignment = Assignment(
        {"train": np.array([0, 1]), "val": np.array([2]), "test": np.array([3])}
    )
    report = data_report(found, names, facts, assignment, set())
    assert report["images"] == {"train": 2, "val": 1, "test": 1}
    assert report["per_class"] == {
        "sun": {"train": 1, "val": 1, "test": 0},
        "tree": {"train": 1, "val": 0, "test": 1},
    }
    assert report["duplicates"] == {
        "groups": 0,
        "copies": 0,
        "with_different_labels": 0,
        "examples": [],
    }
