"""The data report preprocess writes (paths.data_report): what went into each split, and why.

A small JSON file kept in git beside the code (a DVC output with cache: false), so a diff of it
shows how a data change moved the counts. Not a metrics file: `dvc metrics show` stays short.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from ..base.fileio import atomic_output
from .labels import Images, label_sets
from .splits import Assignment, FileFacts
from .store import SPLITS

SHOWN = 20  # file names listed per kind of finding; the counts cover the rest


def data_report(
    found: Images,
    names: list[str],
    facts: list[FileFacts],
    assignment: Assignment,
    unreadable: set[Path],
) -> dict[str, Any]:
    """Images per class per split, duplicates, skipped files and image sizes, as plain data."""
    per_class = {name: dict.fromkeys(SPLITS, 0) for name in found.class_names}
    images = dict.fromkeys(SPLITS, 0)  # not the sum of per_class: a multilabel image has several
    classes_of = label_sets(found.labels)
    for split, indices in assignment.indices.items():
        for i in indices:
            if found.files[i] not in unreadable:
                images[split] += 1
                for label in classes_of[i]:
                    per_class[found.class_names[label]][split] += 1
    groups = assignment.duplicate_groups
    mixed = [g for g in groups if len({classes_of[i] for i in g}) > 1]
    # Groups with different labels first: those are labelling mistakes to fix.
    examples = [[names[i] for i in g] for g in sorted(groups, key=lambda g: g not in mixed)]
    bad_files = sorted(names[i] for i, f in enumerate(found.files) if f in unreadable)
    sizes = collections.Counter(
        f"{fact.size[0]}x{fact.size[1]}" if fact.size else "unreadable" for fact in facts
    )
    return {
        "labels_from": found.source,
        "images": images,
        "per_class": per_class,
        "splits": {
            "given_by_metadata": sum(1 for split in found.fixed_splits if split),
            "drawn_by_hash": sum(1 for split in found.fixed_splits if not split),
            # The class-presence rule (splits.py): these are the images it moved out of train.
            "moved_to_keep_classes_present": [
                {"file_name": names[i], "split": split} for i, split in assignment.moved_for_class
            ],
            # Classes too small for that rule (or in a split metadata.csv gives): not measured.
            "classes_missing": {
                split: [found.class_names[c] for c, s in assignment.classes_missing if s == split]
                for split in ("val", "test")
            },
        },
        "duplicates": {
            "groups": len(groups),
            "copies": sum(len(g) - 1 for g in groups),  # files beyond the first of each group
            "with_different_labels": len(mixed),
            "examples": examples[:SHOWN],
        },
        "skipped": {
            "unreadable": bad_files[:SHOWN],
            "unreadable_count": len(bad_files),
            "bad_rows": found.bad_rows[:SHOWN],
            "bad_rows_count": len(found.bad_rows),
            "not_in_metadata": found.unlisted,
        },
        # Width x height as stored (before EXIF rotation and resizing), most common first.
        "image_sizes": dict(sizes.most_common(SHOWN)),
        "image_sizes_other": sum(sizes.values()) - sum(n for _, n in sizes.most_common(SHOWN)),
    }


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
