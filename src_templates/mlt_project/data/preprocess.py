"""Raw images -> resized, channel-converted uint8 arrays in Parquet splits, and a data report.

    data/raw/<class name>/<image>.png|jpg|...  or  data/raw/metadata.csv (file_name,label[,split])
        ->  data/processed/{train,val,test}.parquet, paths.data_report

Class indices follow the sorted class names (labels.py). Each image's split is a function of its
bytes and `data.seed` (splits.py), so reruns give identical files and new images never move
old ones; each split's rows are written in a seeded random order, so that any run of rows (a
row group, as streaming reads them) is a sample of the whole split.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..base import cli
from ..base.config import Config, DataConfig
from ..base.errors import PipelineError
from ..base.tasks import task as task_named
from .images import load_image
from .labels import class_counts, find_images
from .report import data_report, write_report
from .splits import read_facts, split_indices
from .store import rows_per_group, split_path, write_chunks

# Images per worker task: few, larger messages through the pipe; fewer for large images, so a
# task's decoded pixels stay under BLOCK_BYTES, and blocks enough to keep every worker busy.
BLOCK, BLOCK_BYTES = 64, 2 * 2**20
IN_FLIGHT = 2  # blocks submitted ahead per worker
IMAGES_PER_WORKER = 1000

log = logging.getLogger(__name__)


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
        except PipelineError as error:
            if not data.skip_corrupt:
                raise PipelineError(
                    f"{error}, or set data.skip_corrupt: true to skip unreadable images"
                ) from None
            bad.append(path)
    return images[:kept], bad


def split_blocks(count: int, group_rows: int, block_rows: int) -> list[slice]:
    """The blocks (slices of a split's files) that workers decode, in order: at most `block_rows`
    files each, and never straddling a row group."""
    return [
        slice(i, min(i + block_rows, start + group_rows))
        for start in range(0, count, group_rows)
        for i in range(start, min(start + group_rows, count), block_rows)
    ]


def row_groups(
    files: list[Path],
    labels: np.ndarray,
    names: list[str],
    data: DataConfig,
    decoded: Iterator[tuple[np.ndarray, list[Path]]],
    group_rows: int,
    skipped: list[Path],
    progress: tqdm,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """(images, labels, names) chunks of one Parquet row group each, in order, from `decoded`:
    decode_blocks over this split's split_blocks (and whatever follows them), of which it takes
    exactly this split's.

    Memory holds the row group being filled, the blocks in flight and the one being written;
    the workers decode the next row group's blocks, and the next split's, while this process
    writes.
    """
    for start in range(0, len(files), group_rows):
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
        chunk_names = names[start : start + group_rows]
        if kept.all():
            yield batch, chunk_labels, chunk_names
        else:
            kept_names = [name for name, keep in zip(chunk_names, kept, strict=True) if keep]
            yield batch[kept], chunk_labels[kept], kept_names


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


def preprocess(cfg: Config) -> dict[str, int]:
    """Write the three splits and the data report; return the number of images in each split."""
    raw_dir = Path(cfg.paths.raw)
    task = task_named(cfg.data.task)
    found = find_images(raw_dir, cfg.data.skip_corrupt, task)
    if len(found.class_names) != cfg.data.num_classes:
        where = "class folders" if found.source == "class folders" else f"labels in {found.source}"
        raise PipelineError(
            f"{raw_dir} has {len(found.class_names)} {where} but data.num_classes is "
            f"{cfg.data.num_classes}: set data.num_classes: {len(found.class_names)} in params.yaml"
        )
    files, labels = found.files, found.labels
    facts = read_facts(files)
    assignment = split_indices(
        [f.digest for f in facts], labels, found.fixed_splits, files, cfg.data
    )
    names = [found.file_name(i, raw_dir) for i in range(len(files))]
    counts_of = class_counts(labels, len(found.class_names))
    for label, split in assignment.classes_missing:
        log.warning(
            "class %r has no %s images (%d in all): add images, or name some in metadata.csv's "
            "split column",
            found.class_names[label], split, int(counts_of[label]),
        )  # fmt: skip
    out_dir = Path(cfg.paths.processed)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Split by split, one row group at a time: memory holds a row group or two, not the data set.
    workers = resolve_workers(cfg.runtime.preprocess_workers, len(files))
    group_rows = rows_per_group(cfg.data.input_shape)
    skipped: list[Path] = []
    counts = {}
    block_rows = max(1, min(BLOCK, group_rows, BLOCK_BYTES // int(np.prod(cfg.data.input_shape))))
    ordered = {split: [files[i] for i in indices] for split, indices in assignment.indices.items()}
    # One stream of blocks through all three splits: the workers go on to the next split's
    # images while this process writes the last row group of one (per split, the pool used to
    # drain: a worker idle while the other finished its last block, both while the file was
    # written).
    blocks = [
        split_files[block]
        for split_files in ordered.values()
        for block in split_blocks(len(split_files), group_rows, block_rows)
    ]
    with (
        ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool,
        tqdm(total=len(files), desc="preprocess", unit="img", mininterval=1.0) as progress,
    ):
        decoded = decode_blocks(blocks, cfg.data, pool, workers)
        for split, indices in assignment.indices.items():
            chunks = row_groups(
                ordered[split], labels[indices], [names[i] for i in indices],
                cfg.data, decoded, group_rows, skipped, progress,
            )  # fmt: skip
            path = split_path(out_dir, split)
            counts[split] = write_chunks(
                path, chunks, cfg.data.input_shape, found.class_names, task=task
            )
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
    report = data_report(found, names, facts, assignment, set(skipped))
    write_report(cfg.paths.data_report, report)
    duplicates = report["duplicates"]
    log.info(
        "%d exact duplicate file(s) in %d group(s), each group kept in one split%s",
        duplicates["copies"],
        duplicates["groups"],
        f" ({duplicates['with_different_labels']} with different labels)"
        if duplicates["with_different_labels"]
        else "",
    )
    log.info(
        "wrote %s to %s (%d classes, labels from %s; report in %s)",
        counts, out_dir, len(found.class_names), found.source, cfg.paths.data_report,
    )  # fmt: skip
    return counts


def main(argv: list[str] | None = None) -> int:
    return cli.stage(__doc__, preprocess, argv)


if __name__ == "__main__":
    raise SystemExit(main())
