import dataclasses
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlt_project.base.errors import PipelineError
from mlt_project.data import preprocess as stage
from mlt_project.data.images import load_image
from mlt_project.data.labels import find_images
from mlt_project.data.preprocess import preprocess, resolve_workers
from mlt_project.data.splits import score
from mlt_project.data.store import SPLITS, read_file_names, read_split, split_path


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
    found = find_images(raw)
    class_names, files = found.class_names, found.files
    for name in class_names:
        (raw / name / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
        (raw / name / ".hidden").mkdir()
        (raw / name / ".hidden" / "x.png").write_bytes(b"not an image")
    again = find_images(raw)
    assert (again.class_names, again.files) == (class_names, files)
    assert sum(preprocess(cfg).values()) == 30


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


def splits_of(cfg) -> dict[str, str]:
    """file_name -> split, as the processed files say."""
    return {
        name: split
        for split in SPLITS
        for name in read_file_names(split_path(cfg.paths.processed, split))
    }


def test_every_row_names_its_source_image(processed):
    cfg = processed
    raw = Path(cfg.paths.raw)
    for split in SPLITS:
        images, labels, class_names = read_split(split_path(cfg.paths.processed, split))
        for pixels, label, name in zip(
            images, labels, read_file_names(split_path(cfg.paths.processed, split)), strict=True
        ):
            assert name.split("/")[0] == class_names[label]  # data/raw/<class>/<image>
            np.testing.assert_array_equal(pixels, load_image(raw / name, cfg.data))


def test_growing_renaming_and_copying_images_moves_no_other_image(processed):
    cfg = processed
    raw = Path(cfg.paths.raw)
    before = splits_of(cfg)
    # Grow the set by 30% (new pixels), rename an image, and copy one under a new name.
    rng = np.random.default_rng(7)
    for i in range(9):
        pixels = rng.integers(0, 60, (12, 12, 3)) + 80 * (i % 3)
        Image.fromarray(pixels.astype(np.uint8)).save(
            raw / ["circle", "square", "stripes"][i % 3] / f"new{i}.png"
        )
    (raw / "square" / "4.png").rename(raw / "square" / "renamed.png")
    shutil.copy(raw / "stripes" / "2.png", raw / "circle" / "copy-of-stripes-2.png")
    preprocess(cfg)
    after = splits_of(cfg)
    assert len(after) == 40
    before["square/renamed.png"] = before.pop("square/4.png")
    assert {name: after[name] for name in before} == before
    assert after["circle/copy-of-stripes-2.png"] == after["stripes/2.png"]
    report = json.loads(Path(cfg.paths.data_report).read_text())
    assert report["duplicates"]["groups"] == 1
    assert report["duplicates"]["with_different_labels"] == 1
    assert report["duplicates"]["examples"] == [["circle/copy-of-stripes-2.png", "stripes/2.png"]]


def test_rows_are_written_in_a_seeded_random_order_not_by_class(processed):
    # Streamed training reads row groups in file order: rows sorted by class would give its
    # batches one class at a time.
    _, labels, _ = read_split(split_path(processed.paths.processed, "train"))
    assert (np.diff(labels) != 0).sum() > len(set(labels.tolist()))


def pngs_in_train_band(folder: Path, count: int, data, rng) -> None:
    """`count` PNGs whose bytes the hash puts in train: none of them falls in val or test."""
    folder.mkdir(parents=True)
    written = 0
    while written < count:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(buffer, "PNG")
        digest = hashlib.sha256(buffer.getvalue()).digest()
        if score(digest, data.seed) >= data.test_fraction + data.val_fraction:
            (folder / f"{written}.png").write_bytes(buffer.getvalue())
            written += 1


def test_a_class_the_hash_leaves_out_of_val_and_test_gets_one_image_in_each(cfg, caplog):
    # 0.2/0.2 fractions: "big" (30 images, 6 expected per split) is kept present; "small" (10,
    # 2 expected) is only reported. Neither has an image the hash would put in val or test.
    raw = Path(cfg.paths.raw)
    rng = np.random.default_rng(3)
    pngs_in_train_band(raw / "big", 30, cfg.data, rng)
    pngs_in_train_band(raw / "small", 10, cfg.data, rng)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_classes=2))
    with caplog.at_level("WARNING"):
        preprocess(cfg)
    report = json.loads(Path(cfg.paths.data_report).read_text())
    assert report["per_class"]["big"] == {"train": 28, "val": 1, "test": 1}
    assert report["per_class"]["small"] == {"train": 10, "val": 0, "test": 0}
    moved = report["splits"]["moved_to_keep_classes_present"]
    assert sorted(row["split"] for row in moved) == ["test", "val"]
    assert all(row["file_name"].startswith("big/") for row in moved)
    assert report["splits"]["classes_missing"] == {"val": ["small"], "test": ["small"]}
    assert "class 'small' has no test images (10 in all)" in caplog.text


def write_flat(raw: Path, rows: list[tuple[str, str, str]], header="file_name,label,split") -> None:
    """Images in one flat folder, labelled by metadata.csv; pixels depend on the label."""
    (raw / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [header]
    for name, label, split in rows:
        if not (raw / name).exists() and name.startswith("images/") and "missing" not in name:
            shade = 40 * (sum(map(ord, label)) % 6)
            pixels = rng.integers(0, 40, (10, 10)) + shade
            Image.fromarray(pixels.astype(np.uint8)).save(raw / name)
        lines.append(",".join([name, label, split]) if "split" in header else f"{name},{label}")
    (raw / "metadata.csv").write_text("\n".join(lines) + "\n")


def csv_config(cfg, **data):
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, **{"num_classes": 4, **data})
    )


def test_labels_and_fixed_splits_come_from_metadata_csv(cfg):
    raw = Path(cfg.paths.raw)
    labels = ["ant", "bee", "cat", "dog"]
    given = {0: "test", 1: "test", 2: "test", 3: "test", 4: "train", 5: "train"}
    rows = [(f"images/{i:02d}.png", labels[i % 4], given.get(i, "")) for i in range(40)]
    write_flat(raw, rows)
    counts = preprocess(csv_config(cfg))
    assert sum(counts.values()) == 40
    splits = splits_of(cfg)
    # The listed test set is the test split, whole: the hash draws no more images into it.
    assert sorted(name for name, split in splits.items() if split == "test") == [
        f"images/{i:02d}.png" for i in range(4)
    ]
    # Rows naming train leave the others to the hash, which still draws val images.
    assert splits["images/04.png"] == splits["images/05.png"] == "train"
    assert counts["val"] > 0
    _, train_labels, class_names = read_split(split_path(cfg.paths.processed, "train"))
    assert class_names == labels
    names = read_file_names(split_path(cfg.paths.processed, "train"))
    assert [class_names[k] for k in train_labels] == [labels[int(n[7:9]) % 4] for n in names]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("images/missing.png", "ant", ""), "line 42: images/missing.png not found in"),
        (("images/00.png", "ant", "holdout"), "line 42: images/00.png: split 'holdout' is not one of train, val, test"),
        (("images/99.png", "", ""), "line 42: images/99.png has an empty label"),
        (("images/01.png", "cat", ""), "line 42: images/01.png is listed again with label 'cat'"),
        (("../outside.png", "ant", ""), "line 42: file_name '../outside.png' must be a path inside"),
    ],
)  # fmt: skip
def test_a_bad_metadata_row_stops_the_run_or_is_skipped_and_counted(cfg, row, message):
    raw = Path(cfg.paths.raw)
    # 40 good rows (lines 2-41), then the bad one.
    rows = [(f"images/{i:02d}.png", ["ant", "bee", "cat", "dog"][i % 4], "") for i in range(39)]
    rows.append(("images/99.png", "ant", ""))
    write_flat(raw, [*rows, row])
    with pytest.raises(PipelineError, match=message) as error:
        preprocess(csv_config(cfg, val_fraction=0.2, test_fraction=0.2))
    assert "set data.skip_corrupt: true" in str(error.value)
    assert not Path(cfg.paths.processed).exists()
    counts = preprocess(csv_config(cfg, val_fraction=0.2, test_fraction=0.2, skip_corrupt=True))
    kept = 39 if row[0] == "images/01.png" else 40  # a file listed twice differently: neither
    assert sum(counts.values()) == kept
    skipped = json.loads(Path(cfg.paths.data_report).read_text())["skipped"]
    assert skipped["bad_rows_count"] == 1 and message.split(": ")[0] in skipped["bad_rows"][0]


def test_num_classes_is_checked_against_the_csv_labels(cfg):
    write_flat(Path(cfg.paths.raw), [("images/0.png", "ant", ""), ("images/1.png", "bee", "")])
    with pytest.raises(
        PipelineError, match=r"has 2 labels in .*metadata\.csv but data\.num_classes is 4"
    ):
        preprocess(csv_config(cfg))
