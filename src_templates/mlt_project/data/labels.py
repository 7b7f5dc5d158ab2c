"""Where the labels come from: data/raw/metadata.csv when there is one, else class folders.

    data/raw/metadata.csv   file_name,label[,split]   (Hugging Face's ImageFolder convention)
    data/raw/<class name>/<image>

`file_name` is relative to data/raw; an optional `split` (train, val or test) fixes that
image's split, an empty one leaves it to the hash (splits.py). Other columns are ignored.
With `data.task: multilabel` the `label` cell holds zero or more class names separated by
spaces (Kaggle's multi-label convention), and only metadata.csv can say that; an empty cell is
an image with none of the classes.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..base.errors import PipelineError
from ..base.tasks import OLDEST_TASK, TASKS, Task
from .images import IMAGE_SUFFIXES, image_files
from .store import SPLITS

LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")
LABEL_RULE = "up to 64 letters, digits, spaces or '_.+-', starting with a letter or digit"
# A multilabel cell separates names by spaces, so a name has none.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
NAME_RULE = "up to 64 letters, digits or '_.+-', starting with a letter or digit"
METADATA_FILE = "metadata.csv"
SAMPLE_HINT = "run `python -m mlt_project.data.sample_data` for the sample digits"
SHOWN_ROWS = 20  # bad rows logged one per line before the run stops; the count covers the rest

log = logging.getLogger(__name__)


@dataclass
class Images:
    """The images to preprocess, their labels and what was left out on the way."""

    class_names: list[str]
    files: list[Path]
    # multiclass: (n,) int64 indices into class_names; multilabel: (n, classes) uint8 multi-hot
    labels: np.ndarray
    fixed_splits: list[str | None]  # from metadata.csv's split column; None = drawn by hash
    source: str  # "class folders" or the metadata.csv path, for messages and the report
    bad_rows: list[str] = field(default_factory=list)  # skipped under data.skip_corrupt
    unlisted: int = 0  # images in paths.raw that metadata.csv does not name

    def file_name(self, index: int, raw_dir: Path) -> str:
        """The image's path relative to paths.raw, with forward slashes on every OS."""
        return self.files[index].relative_to(raw_dir).as_posix()


def find_images(raw_dir: Path, skip_bad: bool = False, task: Task = TASKS[OLDEST_TASK]) -> Images:
    """The images under `raw_dir` and their labels, from metadata.csv or class folders."""
    if not raw_dir.is_dir():
        raise PipelineError(
            f"{raw_dir} not found: {SAMPLE_HINT}, or put images in {raw_dir}/<class>/ "
            f"or list them in {raw_dir}/{METADATA_FILE}"
        )
    if (raw_dir / METADATA_FILE).is_file():
        return from_metadata(raw_dir, skip_bad, task.multi_hot)
    if task.multi_hot:
        raise PipelineError(
            f"data.task: {task.name} needs {raw_dir}/{METADATA_FILE} (class folders give one label "
            "an image): list the images as file_name,label with the labels separated by spaces "
            "(see PROJECT.md, Bring your own labels)"
        )
    return from_folders(raw_dir)


def label_sets(labels: np.ndarray) -> list[tuple[int, ...]]:
    """Each image's classes: one for multiclass labels, zero or more for multi-hot ones."""
    if labels.ndim == 1:
        return [(int(label),) for label in labels]
    return [tuple(int(c) for c in np.flatnonzero(row)) for row in labels]


def class_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """Images per class (an image counts once in each of its classes)."""
    if labels.ndim == 1:
        return np.bincount(labels, minlength=classes)
    return labels.sum(axis=0, dtype=np.int64)


def from_folders(raw_dir: Path) -> Images:
    """Class names, image files and their labels from a class-folder tree."""
    class_dirs = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise PipelineError(
            f"{raw_dir} has no class folders: {SAMPLE_HINT}, or add {raw_dir}/<class>/ "
            f"or a {raw_dir}/{METADATA_FILE}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        if not LABEL_RE.fullmatch(class_dir.name):
            raise PipelineError(
                f"class folder {class_dir.name!r} is not a valid label: use {LABEL_RULE}; "
                "rename the folder"
            )
        images = image_files(class_dir)
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise PipelineError(
                f"class folder {class_dir} has no images ({suffixes}): add some or remove it"
            )
        files += images
        labels += [label] * len(images)
    return Images(
        class_names=[d.name for d in class_dirs],
        files=files,
        labels=np.array(labels, dtype=np.int64),
        fixed_splits=[None] * len(files),
        source="class folders",
    )


def from_metadata(raw_dir: Path, skip_bad: bool, multilabel: bool = False) -> Images:
    """Images and labels listed in raw_dir/metadata.csv; bad rows stop the run or are skipped.

    A multilabel row's label is kept as its sorted, distinct names joined by one space.
    """
    path = raw_dir / METADATA_FILE
    rows: dict[str, tuple[str, str | None, int]] = {}  # file_name -> (label, split, line)
    conflicted: set[str] = set()  # listed twice, differently: which row is right is unknown
    bad: list[str] = []
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" export starts with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"file_name", "label"} - set(reader.fieldnames or [])
            if missing:
                raise PipelineError(
                    f"{path} has no {' or '.join(sorted(missing))} column (its header is "
                    f"{','.join(reader.fieldnames or [])!r}): the first line must name the "
                    "columns file_name,label and optionally split"
                )
            for row in reader:
                problem = _check_row(row, raw_dir, rows, conflicted, reader.line_num, multilabel)
                if problem:
                    bad.append(f"{path} line {reader.line_num}: {problem}")
    except UnicodeDecodeError:
        raise PipelineError(f"{path} is not UTF-8 text: save it as CSV UTF-8") from None
    except csv.Error as error:
        raise PipelineError(f"{path} is not a valid CSV file ({error}): fix it") from None
    if bad and not skip_bad:
        for line in bad[:SHOWN_ROWS]:
            log.error("%s", line)
        more = f" ({len(bad)} bad rows, logged above)" if len(bad) > 1 else ""
        raise PipelineError(
            f"{bad[0]}{more}: fix the rows, or set data.skip_corrupt: true to skip and count them"
        )
    for name in conflicted:  # skipped whole: neither of its labels can be trusted
        del rows[name]
    if not rows:
        raise PipelineError(f"{path} lists no usable images: add rows file_name,label")
    names = sorted(rows)
    if multilabel:
        class_names = sorted({c for label, _, _ in rows.values() for c in label.split()})
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.zeros((len(names), len(class_names)), dtype=np.uint8)
        for row, name in enumerate(names):
            labels[row, [index[c] for c in rows[name][0].split()]] = 1
    else:
        class_names = sorted({label for label, _, _ in rows.values()})
        _refuse_several_labels(class_names, path)
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index[rows[name][0]] for name in names], dtype=np.int64)
    listed = {raw_dir / name for name in names}
    return Images(
        class_names=class_names,
        files=[raw_dir / name for name in names],
        labels=labels,
        fixed_splits=[rows[name][1] for name in names],
        source=str(path),
        bad_rows=bad,
        unlisted=sum(1 for p in image_files(raw_dir) if p not in listed),
    )


def _refuse_several_labels(class_names: list[str], path: Path) -> None:
    """Under multiclass, a label of several names that are labels of other rows ('cat dog'
    beside 'cat') is a multilabel CSV: say so, rather than train a class 'cat dog'. A name with
    spaces alone ('golden retriever') stays one class, as a class folder of that name does."""
    known = set(class_names)
    for label in class_names:
        parts = label.split()
        if len(parts) > 1 and any(part in known for part in parts):
            raise PipelineError(
                f"{path}: label {label!r} looks like several labels ({', '.join(parts)}) but "
                "data.task is multiclass: set data.task: multilabel in params.yaml for images "
                "with several labels"
            )


def _check_row(
    row: dict[str, str | None],
    raw_dir: Path,
    rows: dict[str, tuple[str, str | None, int]],
    conflicted: set[str],
    line: int,
    multilabel: bool = False,
) -> str | None:
    """What is wrong with one metadata.csv row (None: nothing); a good row goes into `rows`."""
    name = (row.get("file_name") or "").strip()
    label = (row.get("label") or "").strip()
    split = (row.get("split") or "").strip() or None
    if not name:
        return "empty file_name"
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        return f"file_name {name!r} must be a path inside {raw_dir}, relative to it"
    name = relative.as_posix()
    if not (raw_dir / name).is_file():
        return f"{name} not found in {raw_dir}"
    if multilabel:
        bad = next((part for part in label.split() if not NAME_RE.fullmatch(part)), None)
        if bad is not None:
            return f"{name}: label {bad!r} is not valid: use {NAME_RULE}, spaces between labels"
        label = " ".join(sorted(set(label.split())))  # empty: none of the classes
    elif not label:
        return f"{name} has an empty label"
    elif not LABEL_RE.fullmatch(label):
        return f"{name}: label {label!r} is not valid: use {LABEL_RULE}"
    if split is not None and split not in SPLITS:
        return f"{name}: split {split!r} is not one of {', '.join(SPLITS)} (or empty: drawn)"
    if name in rows and rows[name][:2] != (label, split):
        first_label, first_split, first_line = rows[name]
        conflicted.add(name)
        return (
            f"{name} is listed again with label {label!r} split {split or ''!r}; line "
            f"{first_line} gave it label {first_label!r} split {first_split or ''!r}: keep one row"
        )
    rows.setdefault(name, (label, split, line))
    return None
