"""Evaluate the trained network on the test split: metrics, per-class figures, confusion, mistakes.

python -m mlt_project.eval [--params params.yaml]

Plain PyTorch, no Lightning: the network comes from the checkpoint (checkpoint.py) and the test
split is read row group by row group, so memory holds a row group, not the split.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cli
from .checkpoint import load_trained
from .config import Config
from .data.store import open_split, read_file_names, read_row_group, split_info, split_path
from .files import atomic_output
from .logs import setup_logger


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
        "loss": round(float(F.cross_entropy(logits, labels)), 6),
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


def device_for(cfg: Config) -> torch.device:
    """The GPU when training.accelerator allows one and there is one, else the CPU."""
    wants_gpu = cfg.training.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def predict_split(
    net: torch.nn.Module, path: Path, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Logits (float32, on the CPU) and labels for every row of a split, in file order."""
    parquet = open_split(path)
    shape, class_names = split_info(parquet, path)
    net = net.to(device)
    logits, labels = [], []
    with torch.inference_mode():
        for group in range(parquet.num_row_groups):
            images, group_labels = read_row_group(parquet, group, shape)
            for start in range(0, len(group_labels), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size].copy())  # writable
                logits.append(net(batch.to(device)).float().cpu())
            labels.append(torch.tensor(group_labels))
    return torch.cat(logits), torch.cat(labels), class_names


def evaluate(cfg: Config) -> dict[str, object]:
    """Evaluate the checkpoint at paths.model; return the classification report.

    Writes paths.metrics (the report's few top-level numbers: what `dvc metrics show` and
    `dvc exp show` list), paths.per_class (one row per class), paths.plots (confusion rows)
    and paths.mistakes (the test images it got wrong).
    """
    log = setup_logger()
    net, weights = load_trained(cfg)
    test = split_path(cfg.paths.processed, "test")
    logits, labels, class_names = predict_split(
        net, test, cfg.evaluation.batch_size, device_for(cfg)
    )
    results = classification_report(logits, labels, class_names)

    # With the options that decide them, the weights' epoch and EMA (train.keep_final_weights).
    summary = {key: value for key, value in results.items() if key != "per_class"} | weights
    with atomic_output(cfg.paths.metrics) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    # Per-class figures in a file of their own: as metrics they would be 4 columns per class.
    with atomic_output(cfg.paths.per_class) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        columns = ["precision", "recall", "f1", "support"]
        writer.writerow(["class", *columns])
        for name, figures in results["per_class"].items():
            writer.writerow([name, *(figures[column] for column in columns)])
    # One row per test image, read by `dvc plots show` with the confusion template.
    with atomic_output(cfg.paths.plots) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for actual, predicted in zip(labels.tolist(), logits.argmax(dim=1).tolist(), strict=True):
            writer.writerow([class_names[actual], class_names[predicted]])
    wrong = mistakes(logits, labels, class_names, read_file_names(test))
    with atomic_output(cfg.paths.mistakes) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label", "predicted", "score"])
        writer.writerows(wrong)
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
