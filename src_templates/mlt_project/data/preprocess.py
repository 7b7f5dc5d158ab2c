"""Raw images in class folders -> resized, channel-converted uint8 arrays in Parquet splits.

    data/raw/<class name>/<image>.png|jpg|...  ->  data/processed/{train,val,test}.parquet

Class indices follow the sorted folder names. The split is stratified by class, each split's rows
are in a random order, and both depend only on the file list and `data.seed`, so reruns give
identical files.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from .. import cli
from ..config import Config, DataConfig
from ..errors import PipelineError
from .store import SPLITS, rows_per_group, split_path, write_chunks

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")
ORIENTATION = 0x0112  # the EXIF tag
SAMPLE_HINT = "run `python -m mlt_project.data.sample_data` for the sample digits"

# Images per worker task: few, larger messages through the pipe; fewer for large images, so a
# task's decoded pixels stay under BLOCK_BYTES, and blocks enough to keep every worker busy.
BLOCK, BLOCK_BYTES = 64, 2 * 2**20
IN_FLIGHT = 2  # blocks submitted ahead per worker
IMAGES_PER_WORKER = 1000

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
        images = sorted(
            p
            for p in class_dir.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(class_dir))
        )
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise PipelineError(
                f"class folder {class_dir} has no images ({suffixes}): add some or remove it"
            )
        files += images
        labels += [label] * len(images)
    return [d.name for d in class_dirs], files, np.array(labels, dtype=np.int64)


def _hidden(relative: Path) -> bool:
    # Dotfiles, macOS AppleDouble files (`._name.png`: metadata, not images) and hidden folders.
    return any(part.startswith(".") for part in relative.parts)


def load_image(path: Path, data: DataConfig) -> np.ndarray:
    """Decode one image into (C, H, W) uint8, converted to data.channels and resized to data.image_size."""
    height, width = data.image_size
    try:
        with Image.open(path) as image:
            if image.getexif().get(ORIENTATION, 1) != 1:  # a phone photo, stored sideways
                image = ImageOps.exif_transpose(image)
            image = _to_8bit(image).convert("L" if data.channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PipelineError(
            f"cannot read image {path}: {error}; replace or remove the file, or set "
            "data.skip_corrupt: true to skip unreadable images"
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


def decode_block(files: list[Path], data: DataConfig) -> tuple[np.ndarray, list[Path]]:
    """Decode files into one (n, C, H, W) array; with data.skip_corrupt, unreadable files are
    left out and returned as paths."""
    images = np.empty((len(files), *data.input_shape), dtype=np.uint8)
    bad: list[Path] = []
    kept = 0
    for path in files:
        try:
            images[kept] = load_image(path, data)
            kept += 1
        except PipelineError:
            if not data.skip_corrupt:
                raise
            bad.append(path)
    return images[:kept], bad


def row_groups(
    files: list[Path],
    labels: np.ndarray,
    data: DataConfig,
    pool: ProcessPoolExecutor | None,
    workers: int,
    group_rows: int,
    skipped: list[Path],
    progress: tqdm,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode `files` into (images, labels) chunks of one Parquet row group each, in order.

    In `pool`'s workers when there is one, a block of images per task (about BLOCK_BYTES
    decoded). Only a few blocks are in flight at a time, so memory holds the row group being
    filled, the blocks in flight and the one being written; the workers decode the next row
    group's blocks while this process writes.
    """
    block_rows = max(1, min(BLOCK, group_rows, BLOCK_BYTES // int(np.prod(data.input_shape))))
    starts = range(0, len(files), group_rows)
    blocks = [  # blocks never straddle row groups
        files[i : min(i + block_rows, start + group_rows)]
        for start in starts
        for i in range(start, min(start + group_rows, len(files)), block_rows)
    ]
    decoded = decode_blocks(blocks, data, pool, workers)
    for start in starts:
        chunk = files[start : start + group_rows]
        batch = np.empty((len(chunk), *data.input_shape), dtype=np.uint8)
        kept = np.ones(len(chunk), dtype=bool)
        row = 0
        while row < len(chunk):
            images, bad = next(decoded)
            block = chunk[row : row + len(images) + len(bad)]
            if bad:
                skipped += bad
                kept[row : row + len(block)] = [path not in bad for path in block]
            batch[row : row + len(block)][kept[row : row + len(block)]] = images
            row += len(block)
            progress.update(len(block))
        chunk_labels = labels[start : start + group_rows]
        yield (batch, chunk_labels) if kept.all() else (batch[kept], chunk_labels[kept])


def decode_blocks(
    blocks: list[list[Path]], data: DataConfig, pool: ProcessPoolExecutor | None, workers: int
) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """decode_block of each block, in order; with a pool, at most IN_FLIGHT blocks per worker
    submitted ahead (pool.map would submit them all, and their results would pile up)."""
    if pool is None:
        yield from (decode_block(block, data) for block in blocks)
        return
    pending: collections.deque[Future] = collections.deque()
    window = IN_FLIGHT * workers
    for block in blocks:
        pending.append(pool.submit(decode_block, block, data))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def resolve_workers(workers: int | str, images: int) -> int:
    """`auto` -> one process per core, but no more than one per IMAGES_PER_WORKER images."""
    if workers != "auto":
        return int(workers)
    cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    # Starting a worker and sending its images back costs ~0.1-0.3 s, and one process decodes
    # ~1,000 small images in less: a pool pays only with many images (none for the 1,797 digits;
    # 16 workers for 3,000 images were slower than one).
    return max(1, min(len(cores), images // IMAGES_PER_WORKER))


def split_indices(labels: np.ndarray, data: DataConfig) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices in a random order, deterministic for a given data.seed."""
    rng = np.random.default_rng(data.seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * data.test_fraction)
        n_val = round(len(members) * data.val_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    # Each split in a random order (drawn after the split, which stays as it was): written in
    # this order, every run of rows in the file, a row group included, samples the whole split,
    # so a streamed epoch sees the classes mixed as in memory (in class order, a batch held few).
    splits = {split: rng.permutation(np.concatenate(chunks)) for split, chunks in parts.items()}
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
    # Split by split, one row group at a time: memory holds a row group or two, not the data set.
    workers = resolve_workers(cfg.runtime.preprocess_workers, len(files))
    group_rows = rows_per_group(cfg.data.input_shape)
    skipped: list[Path] = []
    counts = {}
    with (
        ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool,
        tqdm(total=len(files), desc="preprocess", unit="img", mininterval=1.0) as progress,
    ):
        for split, indices in splits.items():
            chunks = row_groups(
                [files[i] for i in indices], labels[indices], cfg.data, pool, workers, group_rows,
                skipped, progress,
            )  # fmt: skip
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
    return cli.stage(__doc__, preprocess, argv)


if __name__ == "__main__":
    raise SystemExit(main())
