"""Evaluate the trained network on the test split: metrics, per-class figures, confusion, mistakes.

python -m mlt_project.eval [--params params.yaml]

Plain PyTorch, no Lightning: the network comes from the checkpoint (checkpoint.py) and the test
split is read row group by row group, so memory holds a row group, not the split. A multilabel
model decides with the per-class thresholds its checkpoint holds (chosen on the validation
split), and its confusion rows are one per image and class: a 2x2 block per class.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from . import cli
from .checkpoint import load_trained
from .config import Config
from .data.store import open_split, read_file_names, require_task, split_path
from .fileio import atomic_output
from .logs import setup_logger
from .model import objective
from .model.inference import predict_split

__all__ = ["classification_report", "evaluate", "mistakes", "multilabel_report", "predict_split"]


def classification_report(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> dict[str, object]:
    """Loss, accuracy, macro F1 and per-class precision/recall/F1/support (0 where a ratio is 0/0).

    Macro F1 is the mean F1 of the classes that occur in the labels or the predictions.
    """
    preds = logits.argmax(dim=1)
    n = len(class_names)
    # confusion[actual, predicted]
    confusion = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n).double()
    hits, support, predicted = confusion.diag(), confusion.sum(dim=1), confusion.sum(dim=0)
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, hits / support.clamp(min=1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), 0.0)
    per_metric = {"precision": precision, "recall": recall, "f1": f1}
    per_class = {
        name: {metric: round(float(values[i]), 6) for metric, values in per_metric.items()}
        | {"support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    seen = (support + predicted) > 0
    return {
        "loss": round(float(objective.loss(objective.MULTICLASS, logits, labels)), 6),
        "accuracy": round(float((preds == labels).float().mean()), 6),
        "macro_f1": round(float(f1[seen].mean()), 6),
        "num_samples": len(labels),
        "per_class": per_class,
    }


def mistakes(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], file_names: list[str]
) -> list[tuple[str, str, str, float]]:
    """(file name, true label, predicted label, its probability) of every wrong prediction,
    most confident first: those are the likeliest label errors, and the costliest mistakes."""
    probabilities = torch.softmax(logits, dim=1)
    scores, preds = probabilities.max(dim=1)
    wrong = (preds != labels).nonzero().flatten()
    # A stable sort on the negated score: ties keep file order, so reruns write the same file.
    order = wrong[torch.sort(-scores[wrong], stable=True).indices]
    return [
        (
            file_names[i],
            class_names[labels[i]],
            class_names[preds[i]],
            round(float(scores[i]), 6),
        )
        for i in order.tolist()
    ]


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom, 0 where bottom is 0."""
    top, bottom = np.asarray(top, dtype=np.float64), np.asarray(bottom, dtype=np.float64)
    return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)


def multilabel_report(
    logits: torch.Tensor, targets: torch.Tensor, class_names: list[str], thresholds: list[float]
) -> dict[str, object]:
    """Loss, macro and micro F1, mAP, exact match and per-class precision/recall/F1/AP/support
    of a multilabel model, each class decided at its threshold.

    Macro F1 is the mean F1 of the classes that occur in the labels or the predictions; mAP
    (threshold-free) the mean average precision of the classes with a positive test image;
    exact match the share of images whose predicted set of labels is exactly right.
    """
    probs = objective.probabilities(objective.MULTILABEL, logits).numpy()
    actual = targets.numpy() >= 0.5
    predicted = objective.decide(objective.MULTILABEL, probs, np.array(thresholds))
    tp = (predicted & actual).sum(axis=0)
    support, claimed = actual.sum(axis=0), predicted.sum(axis=0)
    precision, recall = _ratio(tp, claimed), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    ap = np.array([objective.average_precision(probs[:, c], actual[:, c]) for c in range(len(f1))])
    per_class = {
        name: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "average_precision": None if np.isnan(ap[i]) else round(float(ap[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    seen = (support + claimed) > 0
    micro = _ratio(2 * tp.sum(), support.sum() + claimed.sum())
    return {
        "loss": round(float(objective.loss(objective.MULTILABEL, logits, targets)), 6),
        "macro_f1": round(float(f1[seen].mean()) if seen.any() else 0.0, 6),
        "micro_f1": round(float(micro), 6),
        "mean_average_precision": round(float(np.nanmean(ap)) if (support > 0).any() else 0.0, 6),
        "exact_match": round(float((predicted == actual).all(axis=1).mean()), 6),
        "num_samples": len(actual),
        "per_class": per_class,
    }


def multilabel_mistakes(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_names: list[str],
    thresholds: list[float],
    file_names: list[str],
) -> list[tuple[str, str, str, float]]:
    """(file name, true labels, predicted labels, score) of every image whose predicted set of
    labels is not its true one, labels separated by spaces; the score is the probability the
    model gave its most confident wrong decision (p of a wrong label, 1 - p of a missed one),
    most confident first."""
    probs = objective.probabilities(objective.MULTILABEL, logits).numpy()
    actual = targets.numpy() >= 0.5
    predicted = objective.decide(objective.MULTILABEL, probs, np.array(thresholds))
    wrong = predicted != actual
    confidence = np.where(wrong, np.where(predicted, probs, 1 - probs), -1.0).max(axis=1)
    rows = np.flatnonzero(wrong.any(axis=1))
    order = rows[np.argsort(-confidence[rows], kind="stable")]  # ties keep file order

    def names(row: np.ndarray) -> str:
        return " ".join(class_names[c] for c in np.flatnonzero(row))

    return [
        (file_names[i], names(actual[i]), names(predicted[i]), round(float(confidence[i]), 6))
        for i in order.tolist()
    ]


def multilabel_confusion(
    logits: torch.Tensor, targets: torch.Tensor, class_names: list[str], thresholds: list[float]
) -> list[tuple[str, str]]:
    """(actual, predicted) per image and class, as `<class>` or `not <class>`: the confusion plot
    shows each class's 2x2 block (a multilabel image is no single cell of one matrix)."""
    probs = objective.probabilities(objective.MULTILABEL, logits).numpy()
    actual = targets.numpy() >= 0.5
    predicted = objective.decide(objective.MULTILABEL, probs, np.array(thresholds))

    def cell(name: str, present: bool) -> str:
        return name if present else f"not {name}"

    return [
        (cell(name, bool(actual[i, c])), cell(name, bool(predicted[i, c])))
        for i in range(len(actual))
        for c, name in enumerate(class_names)
    ]


def shared_metrics(
    task: str, logits: torch.Tensor, labels: torch.Tensor, thresholds: list[float] | None
) -> dict[str, float]:
    """objective.metrics on the test split, as training logs them per epoch for val: multilabel
    decisions are taken at the per-class thresholds here (0.5 while training)."""
    if task == objective.MULTILABEL:
        probs = objective.probabilities(task, logits)
        scores = (probs >= torch.tensor(thresholds, dtype=probs.dtype)).float()
    else:
        scores = logits
    targets = objective.hard_targets(task, labels)
    found = objective.metrics(task, logits.shape[1])
    return {name: round(float(metric(scores, targets)), 6) for name, metric in found.items()}


def device_for(cfg: Config) -> torch.device:
    """The GPU when training.accelerator allows one and there is one, else the CPU."""
    wants_gpu = cfg.training.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def evaluate(cfg: Config) -> dict[str, object]:
    """Evaluate the checkpoint at paths.model; return the classification report.

    Writes paths.metrics (the report's few top-level numbers: what `dvc metrics show` and
    `dvc exp show` list), paths.per_class (one row per class), paths.plots (confusion rows)
    and paths.mistakes (the test images it got wrong).
    """
    log = setup_logger()
    trained = load_trained(cfg)
    test = split_path(cfg.paths.processed, "test")
    require_task(open_split(test), test, cfg.data.task)
    logits, labels, class_names = predict_split(
        trained.net, test, cfg.evaluation.batch_size, device_for(cfg)
    )
    file_names = read_file_names(test)
    columns = ["precision", "recall", "f1", "support"]
    if trained.task == objective.MULTILABEL:
        thresholds = trained.thresholds or []
        results = multilabel_report(logits, labels, class_names, thresholds)
        confusion = multilabel_confusion(logits, labels, class_names, thresholds)
        wrong = multilabel_mistakes(logits, labels, class_names, thresholds, file_names)
        columns.insert(3, "average_precision")
    else:
        results = classification_report(logits, labels, class_names)
        preds = logits.argmax(dim=1).tolist()
        confusion = [
            (class_names[a], class_names[p]) for a, p in zip(labels.tolist(), preds, strict=True)
        ]
        wrong = mistakes(logits, labels, class_names, file_names)

    # The metrics of objective.metrics the report has no figure of its own for (multilabel
    # accuracy, one a user added).
    shared = shared_metrics(trained.task, logits, labels, trained.thresholds)
    results |= {name: value for name, value in shared.items() if name not in results}
    # With the options that decide them, the weights' epoch and EMA (train.keep_final_weights).
    summary = {key: value for key, value in results.items() if key != "per_class"} | trained.weights
    with atomic_output(cfg.paths.metrics) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    # Per-class figures in a file of their own: as metrics they would be 4 columns per class.
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
        writer.writerows(confusion)
    with atomic_output(cfg.paths.mistakes) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label", "predicted", "score"])
        writer.writerows(wrong)
    if trained.task == objective.MULTILABEL:
        log.info(
            "test macro F1 %.4f, micro F1 %.4f, mAP %.4f, exact match %.4f, loss %.4f; %d "
            "images with a wrong label listed in %s",
            results["macro_f1"], results["micro_f1"], results["mean_average_precision"],
            results["exact_match"], results["loss"], len(wrong), cfg.paths.mistakes,
        )  # fmt: skip
    else:
        log.info(
            "test accuracy %.4f, macro F1 %.4f, loss %.4f; %d mistakes listed in %s",
            results["accuracy"],
            results["macro_f1"],
            results["loss"],
            len(wrong),
            cfg.paths.mistakes,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    return cli.stage(__doc__, evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
