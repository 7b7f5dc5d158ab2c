import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlt_project.data import preprocess as stage
from mlt_project.data.preprocess import find_images, load_image, preprocess, resolve_workers
from mlt_project.data.store import SPLITS, read_split, split_path
from mlt_project.errors import PipelineError


def test_worker_processes_write_the_same_splits_as_one_process(processed, tmp_path, monkeypatch):
    # Row groups of 5 images decoded in blocks of 2 (the last of each group shorter), one image
    # unreadable: the pool's path through blocks, row groups and skipped files gives the same
    # bytes as one process.
    (Path(processed.paths.raw) / "circle" / "3.png").write_bytes(b"not a png")
    image_bytes = int(np.prod(processed.data.input_shape))
    monkeypatch.setattr(stage, "rows_per_group", lambda shape: 5)
    monkeypatch.setattr(stage, "BLOCK_BYTES", 2 * image_bytes)
    written = {}
    for workers in (2, 1):
        cfg = dataclasses.replace(
            processed,
            paths=dataclasses.replace(processed.paths, processed=str(tmp_path / str(workers))),
            data=dataclasses.replace(processed.data, skip_corrupt=True),
            runtime=dataclasses.replace(processed.runtime, preprocess_workers=workers),
        )
        assert sum(preprocess(cfg).values()) == 29
        written[workers] = [read_split(split_path(cfg.paths.processed, s)) for s in SPLITS]
    for parallel_split, serial_split in zip(written[2], written[1], strict=True):
        for parallel_part, serial_part in zip(parallel_split, serial_split, strict=True):
            np.testing.assert_array_equal(parallel_part, serial_part)


def test_the_progress_bar_reaches_every_image(processed, capsys):
    cfg = processed
    capsys.readouterr()
    preprocess(cfg)
    err = capsys.readouterr().err
    assert "preprocess: 100%" in err
    assert "30/30" in err  # 3 classes x 10 images (conftest.write_images)


def test_hidden_files_and_folders_are_not_images(processed):
    cfg = processed
    raw = Path(cfg.paths.raw)
    class_names, files, _ = find_images(raw)
    for name in class_names:
        (raw / name / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
        (raw / name / ".hidden").mkdir()
        (raw / name / ".hidden" / "x.png").write_bytes(b"not an image")
    assert find_images(raw)[:2] == (class_names, files)
    assert preprocess(cfg) == {"train": 18, "val": 6, "test": 6}


def test_exif_orientation_is_applied(cfg, tmp_path):
    # A 40x20 (wide) image stored as-is, with EXIF orientation 6: show it turned 90 degrees
    # clockwise, i.e. 20x40 (tall), its left half (dark) on top.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    data = dataclasses.replace(cfg.data, image_size=[40, 20], channels=1)
    image = load_image(path, data)[0].astype(int)
    assert image.shape == (40, 20)
    assert image[:20].max() < 40 and image[20:].min() > 215  # dark on top, light below


def test_a_corrupt_image_names_skip_corrupt(processed):
    cfg = processed
    (Path(cfg.paths.raw) / "circle" / "0.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"or set data\.skip_corrupt: true to skip unreadable"):
        preprocess(cfg)
    skip = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, skip_corrupt=True))
    counts = preprocess(skip)
    assert sum(counts.values()) == 29


def test_auto_workers_need_many_images(monkeypatch):
    # The cores this process may use (Linux), else all of them (macOS has no sched_getaffinity).
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert resolve_workers("auto", 1797) == 1  # the sample digits: no pool
    assert resolve_workers("auto", 100_000) == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert resolve_workers("auto", 100_000) == 6
    assert resolve_workers(3, 10) == 3
