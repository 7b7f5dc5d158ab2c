"""Evaluate the trained model on the test split: metrics JSON and a confusion-matrix plot.

python -m mlt_project.eval [--params params.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from .config import PARAMS_FILE, Config, load_config
from .errors import run_main
from .factories import create_datamodule, create_trainer, load_model
from .files import atomic_output
from .logs import setup_logger


def classification_report(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> dict[str, object]:
    """Loss, accuracy and per-class precision/recall/F1/support."""
    preds = logits.argmax(dim=1)
    n = len(class_names)
    per_metric = {
        "precision": multiclass_precision(preds, labels, n, average=None, zero_division=0),
        "recall": multiclass_recall(preds, labels, n, average=None, zero_division=0),
        "f1": multiclass_f1_score(preds, labels, n, average=None, zero_division=0),
    }
    support = torch.bincount(labels, minlength=n)
    per_class = {
        name: {metric: round(float(values[i]), 6) for metric, values in per_metric.items()}
        | {"support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "loss": round(float(F.cross_entropy(logits, labels)), 6),
        "accuracy": round(float((preds == labels).float().mean()), 6),
        "num_samples": len(labels),
        "per_class": per_class,
    }


def evaluate(cfg: Config) -> dict[str, object]:
    """Write paths.metrics and paths.plots for the checkpoint at paths.model; return the metrics."""
    log = setup_logger()
    model = load_model(cfg)
    datamodule = create_datamodule(cfg)
    # One process: under DDP each rank would predict only its share of the test set.
    trainer = create_trainer(cfg, logger=False, devices=1, num_nodes=1)
    logits = torch.cat(trainer.predict(model, datamodule=datamodule))
    labels = datamodule.datasets["test"].labels
    class_names = datamodule.class_names
    results = classification_report(logits, labels, class_names)

    with atomic_output(cfg.paths.metrics) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    # One row per test image, read by `dvc plots show` with the confusion template.
    with atomic_output(cfg.paths.plots) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for actual, predicted in zip(labels.tolist(), logits.argmax(dim=1).tolist(), strict=True):
            writer.writerow([class_names[actual], class_names[predicted]])
    log.info("test accuracy %.4f, loss %.4f", results["accuracy"], results["loss"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    return run_main(lambda: evaluate(load_config(args.params)))


if __name__ == "__main__":
    raise SystemExit(main())
