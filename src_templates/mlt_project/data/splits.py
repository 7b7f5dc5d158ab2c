"""Splits that never move and never leak: an image's split is a function of its bytes.

Each file's content digest (SHA-256 of its bytes, as `sha256sum` prints it) and `data.seed` give
it a score in [0, 1):

    score < test_fraction                     -> test
    score < test_fraction + val_fraction      -> val
    otherwise                                 -> train

So adding, removing or renaming images never moves another image, and exact duplicates (same
bytes, same score) always share a split: a copy of a test image is never trained on. A split
named in metadata.csv wins, and a duplicate follows its listed copy; a val or test split that
any row names is taken as given (a signed-off test set): the hash draws no more images into it.

Every class expected to have MIN_EXPECTED images in val (test) has some there but by a chance
below 1% ((1 - fraction) ** images). Where the hash leaves such a class with none, its train
image of lowest score moves there, so the class is measured. That is the one rule that looks at
other images, and so the one exception to "never moves": that image goes back to train once the
class gains an image of its own there. A smaller class left with none is reported, not moved
(name some of its images in metadata.csv's split column). Changing data.seed reshuffles
everything, on purpose.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from ..base.config import DataConfig
from ..base.errors import PipelineError
from .labels import class_counts, label_sets
from .store import SPLITS

READ_THREADS = 4  # file reads and hashing release the GIL
SCORE_BITS = 64
# A class with fraction * images >= this many is kept present in val and test (see above).
# 5: missing one by chance is rare (< 1%), so the images this rule moves, and may move back, are.
MIN_EXPECTED = 5


@dataclass(frozen=True)
class FileFacts:
    """What one read of a file tells: its content digest and its stored size (or None)."""

    digest: bytes
    size: tuple[int, int] | None  # (width, height) from the header; None = unreadable


@dataclass
class Assignment:
    """Each split's row indices, in the order to write them, and how they were chosen."""

    indices: dict[str, np.ndarray]
    duplicate_groups: list[list[int]] = field(default_factory=list)  # files sharing bytes
    moved_for_class: list[tuple[int, str]] = field(default_factory=list)  # (index, split)
    classes_missing: list[tuple[int, str]] = field(default_factory=list)  # (label, split)


def read_facts(files: list[Path]) -> list[FileFacts]:
    """The digest and header size of every file, a few files at a time."""
    workers = max(1, min(READ_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_facts, files))


def _facts(path: Path) -> FileFacts:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PipelineError(f"cannot read {path}: {error.strerror}; fix or remove it") from None
    try:
        with Image.open(BytesIO(data)) as image:  # the header only: no pixels decoded
            size = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        size = None  # decoding reports (or skips) it
    # SHA-256: hardware-accelerated on current CPUs (about twice BLAKE2b's speed here).
    return FileFacts(hashlib.sha256(data).digest(), size)


def score(digest: bytes, seed: int) -> float:
    """The content's place in [0, 1) for this seed: uniform, and the same on every machine."""
    keyed = hashlib.blake2b(digest, digest_size=SCORE_BITS // 8, key=str(seed).encode())
    return int.from_bytes(keyed.digest(), "big") / 2**SCORE_BITS


def split_indices(
    digests: list[bytes],
    labels: np.ndarray,
    fixed: list[str | None],
    files: list[Path],
    data: DataConfig,
) -> Assignment:
    """Assign every file a split from its content (see the module's docstring)."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        groups[digest].append(i)
    given = {split for split in fixed if split} - {"train"}  # train always takes the rest
    split_of: dict[bytes, str] = {}
    scores: dict[bytes, float] = {}
    for digest, members in groups.items():
        listed = {fixed[i] for i in members if fixed[i]}
        if len(listed) > 1:
            a, b = (next(i for i in members if fixed[i] == s) for s in sorted(listed)[:2])
            raise PipelineError(
                f"{files[a]} and {files[b]} are the same image but metadata.csv puts them in "
                f"{fixed[a]} and {fixed[b]}: give them one split, or remove one copy"
            )
        scores[digest] = score(digest, data.seed)
        split_of[digest] = listed.pop() if listed else _drawn(scores[digest], data, given)
    moved, missing = _keep_classes_present(groups, labels, fixed, split_of, scores, data, given)
    members_of = {split: [] for split in SPLITS}
    for digest, members in groups.items():
        members_of[split_of[digest]] += members
    indices = {
        # Written in a seeded random order: streamed training reads row groups in file order,
        # and rows sorted by class (or by score) would give its batches few classes.
        split: np.random.default_rng((data.seed, n)).permutation(np.sort(members_of[split]))
        for n, split in enumerate(SPLITS)
    }
    for split, rows in indices.items():
        if len(rows) == 0:
            fix = (
                "lower val_fraction/test_fraction"
                if split == "train"
                else f"raise data.{split}_fraction"
            )
            raise PipelineError(
                f"the {split} split is empty with {len(labels)} images: {fix} or add images"
            )
    duplicates = [members for members in groups.values() if len(members) > 1]
    return Assignment(indices, duplicates, moved, missing)


def _drawn(value: float, data: DataConfig, given: set[str]) -> str:
    """The split a score falls in; the band of a split that metadata.csv gives goes to train."""
    if value < data.test_fraction:
        return "train" if "test" in given else "test"
    if value < data.test_fraction + data.val_fraction:
        return "train" if "val" in given else "val"
    return "train"


def _keep_classes_present(
    groups: dict[bytes, list[int]],
    labels: np.ndarray,
    fixed: list[str | None],
    split_of: dict[bytes, str],
    scores: dict[bytes, float],
    data: DataConfig,
    given: set[str],
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Move a class's lowest-score train image to val (test) where the class has none there but
    is expected to have MIN_EXPECTED; return (index, split) of each image moved, and
    (label, split) of each class still without images in a split."""
    by_class: dict[int, set[bytes]] = defaultdict(set)
    classes_of = label_sets(labels)  # a multilabel image counts for each of its classes
    for digest, members in groups.items():
        for i in members:
            for label in classes_of[i]:
                by_class[label].add(digest)
    counts = class_counts(labels, max(by_class, default=0) + 1)
    moved: list[tuple[int, str]] = []
    missing: list[tuple[int, str]] = []
    for label, mine in sorted(by_class.items()):
        for split, fraction in (("test", data.test_fraction), ("val", data.val_fraction)):
            if any(split_of[d] == split for d in mine):
                continue
            # Only drawn images move, and never a class's last one in train.
            train = [d for d in mine if split_of[d] == "train"]
            movable = [d for d in train if not any(fixed[i] for i in groups[d])]
            if (
                split in given
                or counts[label] * fraction < MIN_EXPECTED
                or len(train) < 2
                or not movable
            ):
                missing.append((label, split))
                continue
            chosen = min(movable, key=scores.__getitem__)
            split_of[chosen] = split
            moved += [(i, split) for i in groups[chosen]]
    return moved, missing
