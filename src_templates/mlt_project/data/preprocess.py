"""Raw images in class folders -> resized, channel-converted uint8 arrays in Parquet splits.

    data/raw/<class name>/<image>.png|jpg|...  ->  data/processed/{train,val,test}.parquet

Class indices follow the sorted folder names. The split is stratified by class and depends only
on the file list and `data.seed`, so reruns give identical files.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..config import PARAMS_FILE, Config, DataConfig, load_config
from ..errors import PipelineError, run_main
from ..logs import setup_logger
from .store import ROW_GROUP_SIZE, SPLITS, split_path, write_chunks

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")
SAMPLE_HINT = "run `python -m mlt_project.data.sample_data` for the sample digits"

log = logging.getLogger(__name__)


def find_images(raw_dir: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, image files and their labels from a class-folder tree."""
    if not raw_dir.is_dir():
        raise PipelineError(
            f"{raw_dir} not found: {SAMPLE_HINT}, or put images in {raw_dir}/<class>/"
        )
    class_dirs = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise PipelineError(
            f"{raw_dir} has no class folders: {SAMPLE_HINT}, or add {raw_dir}/<class>/"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        if not LABEL_RE.fullmatch(class_dir.name):
            raise PipelineError(
                f"class folder {class_dir.name!r} is not a valid label: use up to 64 letters, digits, "
                "spaces or '_.+-', starting with a letter or digit; rename the folder"
            )
        images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise PipelineError(
                f"class folder {class_dir} has no images ({suffixes}): add some or remove it"
            )
        files += images
        labels += [label] * len(images)
    return [d.name for d in class_dirs], files, np.array(labels, dtype=np.int64)


def load_image(path: Path, data: DataConfig) -> np.ndarray:
    """Decode one image into (C, H, W) uint8, converted to data.channels and resized to data.image_size."""
    height, width = data.image_size
    try:
        with Image.open(path) as image:
            image = _to_8bit(image).convert("L" if data.channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PipelineError(
            f"cannot read image {path}: {error}; replace or remove the file"
        ) from None
    return pixels[None] if data.channels == 1 else pixels.transpose(2, 0, 1)


def _to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16- and 32-bit pixels at 255 instead of scaling them.
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.int64) >> 8
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    return image


def load_image_or_path(path: Path, data: DataConfig) -> np.ndarray | Path:
    """load_image, or the path itself when the file cannot be read (data.skip_corrupt)."""
    try:
        return load_image(path, data)
    except PipelineError:
        return path


def decoded(files: list[Path], data: DataConfig, workers: int) -> Iterator[np.ndarray | Path]:
    """Decode `files` in order, in `workers` processes (1: in this one).

    With data.skip_corrupt an unreadable file comes back as its path instead of pixels.
    """
    read = functools.partial(load_image_or_path if data.skip_corrupt else load_image, data=data)
    if workers == 1:
        yield from map(read, files)
        return
    with ProcessPoolExecutor(workers) as pool:
        # A row group's worth at a time, so decoded images never pile up ahead of the writer;
        # 64 images per task, so the pipe carries few, larger messages.
        for start in range(0, len(files), ROW_GROUP_SIZE):
            yield from pool.map(read, files[start : start + ROW_GROUP_SIZE], chunksize=64)


def row_groups(
    images: Iterator[np.ndarray | Path],
    labels: np.ndarray,
    shape: tuple[int, ...],
    skipped: list[Path] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group decoded images into (images, labels) chunks of one Parquet row group each.

    Unreadable files (paths, from decoded with data.skip_corrupt) are left out and listed in
    `skipped`.
    """
    for start in range(0, len(labels), ROW_GROUP_SIZE):
        chunk = labels[start : start + ROW_GROUP_SIZE]
        batch = np.empty((len(chunk), *shape), dtype=np.uint8)
        kept = np.ones(len(chunk), dtype=bool)
        for i in range(len(chunk)):
            image = next(images)
            if isinstance(image, Path):
                kept[i] = False
                if skipped is not None:
                    skipped.append(image)
            else:
                batch[i] = image
        yield (batch, chunk) if kept.all() else (batch[kept], chunk[kept])


def resolve_workers(workers: int | str) -> int:
    """`auto` -> one process per CPU core this process may use."""
    if workers != "auto":
        return int(workers)
    cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    return max(1, len(cores))


def split_indices(labels: np.ndarray, data: DataConfig) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices, deterministic for a given data.seed."""
    rng = np.random.default_rng(data.seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * data.test_fraction)
        n_val = round(len(members) * data.val_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    splits = {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}
    for split, indices in splits.items():
        if len(indices) == 0:
            fix = (
                "lower val_fraction/test_fraction"
                if split == "train"
                else f"raise data.{split}_fraction"
            )
            raise PipelineError(
                f"the {split} split is empty with {len(labels)} images: {fix} or add images"
            )
    return splits


def preprocess(cfg: Config) -> dict[str, int]:
    """Write the three splits; return the number of images in each."""
    class_names, files, labels = find_images(Path(cfg.paths.raw))
    if len(class_names) != cfg.data.num_classes:
        raise PipelineError(
            f"{cfg.paths.raw} has {len(class_names)} class folders but data.num_classes is "
            f"{cfg.data.num_classes}: set data.num_classes: {len(class_names)} in params.yaml"
        )
    splits = split_indices(labels, cfg.data)
    out_dir = Path(cfg.paths.processed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Split by split, one row group at a time: memory holds one row group, not the data set.
    order = np.concatenate(list(splits.values()))
    images = decoded(
        [files[i] for i in order], cfg.data, resolve_workers(cfg.runtime.preprocess_workers)
    )
    with tqdm(images, total=len(order), desc="preprocess", unit="img", mininterval=1.0) as bar:
        stream = iter(bar)  # one iterator for all splits: the bar counts images done, rate, ETA
        skipped: list[Path] = []
        counts = {}
        for split, indices in splits.items():
            chunks = row_groups(stream, labels[indices], cfg.data.input_shape, skipped)
            path = split_path(out_dir, split)
            counts[split] = write_chunks(path, chunks, cfg.data.input_shape, class_names)
            if counts[split] == 0:
                raise PipelineError(
                    f"the {split} split is empty: all its {len(indices)} images are unreadable "
                    f"(data.skip_corrupt skipped them): replace them or add images"
                )
    if skipped:
        log.warning(
            "skipped %d unreadable image(s) (data.skip_corrupt: true): %s",
            len(skipped),
            ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else ""),
        )
    log.info("wrote %s to %s (%d classes)", counts, out_dir, len(class_names))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    setup_logger()
    return run_main(lambda: preprocess(load_config(args.params)))


if __name__ == "__main__":
    raise SystemExit(main())
