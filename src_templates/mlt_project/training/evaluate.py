"""Evaluate the trained network on the test split: metrics, per-class figures, confusion, mistakes.

python -m mlt_project.training.evaluate [--params params.yaml]

Plain PyTorch, no Lightning: the network comes from the checkpoint (model/checkpoint.py) and the
test split is read row group by row group, so memory holds a row group, not the split. What the
figures are is the task's (base/tasks.py): a multilabel model decides with the per-class
thresholds its checkpoint holds (chosen on the validation split), and its confusion rows are one
per image and class.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from ..base import cli
from ..base.config import Config
from ..base.fileio import atomic_output
from ..base.logs import setup_logger
from ..data.store import open_split, read_file_names, require_task, split_path
from ..model.checkpoint import load_trained
from ..model.inference import device_for, predict_split


def evaluate(cfg: Config) -> dict[str, Any]:
    """Evaluate the checkpoint at paths.model; return the report.

    Writes paths.metrics (the report's few top-level numbers: what `dvc metrics show` and
    `dvc exp show` list), paths.per_class (one row per class), paths.plots (confusion rows)
    and paths.mistakes (the test images it got wrong).
    """
    log = setup_logger()
    trained = load_trained(cfg)
    task, thresholds = trained.task, trained.thresholds
    test = split_path(cfg.paths.processed, "test")
    require_task(open_split(test), test, cfg.data.task)
    device = device_for(cfg.training.accelerator)
    logits, labels, class_names = predict_split(
        trained.net, test, cfg.evaluation.batch_size, device
    )
    scores, targets = logits.numpy(), labels.numpy()
    results = {"loss": round(float(task.loss(logits, labels)), 6)}
    results |= task.report(scores, targets, class_names, thresholds)
    # The task's training metrics the report has no figure of its own for (multilabel accuracy,
    # one a user added), on the test split, as training logs them per epoch for val. Built only
    # when the checkpoint names one (or names none: an older checkpoint): importing torchmetrics
    # loads torchvision, torch._dynamo and scipy, which took longer than the rest of this stage.
    named = trained.metric_names
    if named is None or any(name not in results for name in named):
        found = task.metrics(logits.shape[1])
        decided, hard = task.test_scores(logits, thresholds), task.hard_targets(labels)
        for name, metric in found.items():
            results.setdefault(name, round(float(metric(decided, hard)), 6))
    wrong = task.mistakes(scores, targets, class_names, thresholds, read_file_names(test))

    # With what decides them, the weights' epoch and EMA (ImageClassifier.finish).
    summary = {key: value for key, value in results.items() if key != "per_class"} | trained.weights
    with atomic_output(cfg.paths.metrics) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    # Per-class figures in a file of their own: as metrics they would be 4 columns per class.
    columns = task.per_class_columns
    with atomic_output(cfg.paths.per_class) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *columns])
        for name, figures in results["per_class"].items():
            # An average precision is undefined (empty) for a class without test images.
            writer.writerow([name, *("" if figures[c] is None else figures[c] for c in columns)])
    # One row per test image (and class, multilabel), read by `dvc plots show` as a confusion.
    with atomic_output(cfg.paths.plots) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows(task.confusion(scores, targets, class_names, thresholds))
    with atomic_output(cfg.paths.mistakes) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label", "predicted", "score"])
        writer.writerows(wrong)
    log.info(
        "%s; %d images with a wrong prediction listed in %s",
        task.summary(results),
        len(wrong),
        cfg.paths.mistakes,
    )
    return results


def main(argv: list[str] | None = None) -> int:
    return cli.stage(__doc__, evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
