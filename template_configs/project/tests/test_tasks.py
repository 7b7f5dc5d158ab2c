"""The tasks of base/tasks.py (the loss, decisions, thresholds, reports and mistakes of each) on
values whose answers are worked out by hand; and a multilabel project trained and evaluated."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlt_project.base.tasks import TASKS as NUMPY_TASKS
from mlt_project.base.tasks import average_precision
from mlt_project.data.preprocess import preprocess
from mlt_project.model.checkpoint import load_trained
from mlt_project.model.tasks import TASKS, Multiclass, Multilabel
from mlt_project.training.evaluate import evaluate
from mlt_project.training.factories import create_datamodule
from mlt_project.training.train import train

MULTICLASS, MULTILABEL = Multiclass(), Multilabel()


def test_every_task_has_both_halves_under_its_name():
    """The numpy half (base/tasks.py) is what predict and the server use; training takes the
    subclass with the losses and metrics (model/tasks.py)."""
    assert {name: type(task) for name, task in TASKS.items()} == {
        "multiclass": Multiclass,
        "multilabel": Multilabel,
    }
    for name, task in TASKS.items():
        assert isinstance(task, type(NUMPY_TASKS[name])) and task.name == name


def test_multilabel_loss_is_binary_cross_entropy_and_takes_soft_targets():
    logits = torch.tensor([[0.0, 2.0]])
    hard = MULTILABEL.loss(logits, torch.tensor([[1.0, 0.0]]))
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert hard.item() == pytest.approx(expected)
    soft = MULTILABEL.loss(logits, torch.tensor([[0.5, 0.5]]))  # as mixup makes them
    assert soft.item() == pytest.approx((math.log(2) + 0.5 * 2 + math.log(1 + math.exp(-2))) / 2)


def test_multiclass_loss_takes_indices_or_class_probabilities():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    by_index = MULTICLASS.loss(logits, torch.tensor([0]))
    by_probability = MULTICLASS.loss(logits, torch.tensor([[1.0, 0.0, 0.0]]))
    assert by_index.item() == pytest.approx(by_probability.item())
    assert MULTICLASS.hard_targets(torch.tensor([[0.2, 0.7, 0.1]])).tolist() == [1]
    assert MULTILABEL.hard_targets(torch.tensor([[0.2, 0.7]])).tolist() == [[0, 1]]


def test_thresholds_maximise_each_class_f1_midway_between_probabilities():
    # Class 0: positives at 0.9 and 0.6, a negative at 0.7 between them and one at 0.2. Accepting
    # down to 0.6 gives F1 0.8 (the best): the threshold lies midway between 0.6 and 0.2.
    # Class 1: no positive image, so nothing to choose from: 0.5.
    probs = np.array([[0.9, 0.1], [0.7, 0.8], [0.6, 0.3], [0.2, 0.4]])
    logits = np.log(probs / (1 - probs))
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=np.float32)
    assert MULTILABEL.fit_thresholds(lambda: (logits, targets)) == pytest.approx([0.4, 0.5])
    # A task without thresholds never computes the validation outputs.
    assert MULTICLASS.fit_thresholds(lambda: pytest.fail("computed")) is None


def test_average_precision_is_the_step_area_under_precision_recall():
    # Ranked: +, -, +: precision 1 at recall 0.5, 2/3 at recall 1.
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    positive = np.array([True, False, True, False])
    assert average_precision(scores, positive) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert math.isnan(average_precision(scores, np.zeros(4, dtype=bool)))


def test_multilabel_report_and_mistakes_apply_the_thresholds():
    names = ["cat", "dog"]
    probs = np.array([[0.9, 0.4], [0.3, 0.6], [0.8, 0.95]])
    logits = np.log(probs / (1 - probs))
    targets = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    # dog's threshold 0.35 accepts image 0's 0.4; cat's 0.5 wrongly accepts image 2's 0.8.
    report = MULTILABEL.report(logits, targets, names, [0.5, 0.35])
    assert report["per_class"]["dog"]["f1"] == 1.0
    assert report["per_class"]["cat"]["precision"] == 0.5
    assert report["per_class"]["cat"]["average_precision"] == pytest.approx(1.0)
    assert report["micro_f1"] == pytest.approx(2 * 4 / (4 + 5))
    assert report["exact_match"] == pytest.approx(2 / 3)
    wrong = MULTILABEL.mistakes(logits, targets, names, [0.5, 0.35], ["a", "b", "c"])
    assert wrong == [("c", "dog", "cat dog", pytest.approx(0.8))]
    # predict and the server: each image's labels at or over their thresholds, likeliest first.
    assert MULTILABEL.chosen(probs, [0.5, 0.35]) == [[0, 1], [1], [1, 0]]


def test_mistakes_come_most_confident_first_with_their_file_names():
    logits = np.array([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1])
    files = ["a.png", "b.png", "c.png", "d.png"]
    rows = MULTICLASS.mistakes(logits, labels, ["cat", "dog"], None, files)
    assert [row[:3] for row in rows] == [
        ("b.png", "cat", "dog"),  # p(dog) = 0.993
        ("d.png", "dog", "cat"),  # p(cat) = 0.953
        ("c.png", "cat", "dog"),  # p(dog) = 0.731
    ]
    assert [row[3] for row in rows] == pytest.approx([0.993307, 0.952574, 0.731059], abs=1e-6)


def write_tagged_images(raw: Path, count: int = 60) -> None:
    """`count` images with 0-3 of the tags a, b, c (a bright quadrant each), in metadata.csv."""
    rng = np.random.default_rng(0)
    (raw / "images").mkdir(parents=True)
    rows = ["file_name,label"]
    for i in range(count):
        present = rng.random(3) < 0.5
        pixels = rng.integers(0, 60, (12, 12))
        for (top, left), on in zip([(0, 0), (0, 6), (6, 0)], present, strict=True):
            pixels[top : top + 6, left : left + 6] += 150 * int(on)
        Image.fromarray(pixels.astype(np.uint8)).save(raw / "images" / f"{i}.png")
        rows.append(
            f"images/{i}.png," + " ".join(t for t, on in zip("abc", present, strict=True) if on)
        )
    (raw / "metadata.csv").write_text("\n".join(rows) + "\n")


def on_test(task, logits, targets, thresholds):
    """The task's training metrics as evaluation computes them on the test split."""
    scores, hard = task.test_scores(logits, thresholds), task.hard_targets(targets)
    return {name: float(m(scores, hard)) for name, m in task.metrics(logits.shape[1]).items()}


def test_the_metrics_training_logs_agree_with_the_evaluation_report():
    """A task's metrics are what training logs as val/<name> and evaluation adds to its report:
    where the report has the same figure, the two must agree."""
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 4), torch.randint(0, 4, (50,))
    report = MULTICLASS.report(logits.numpy(), labels.numpy(), list("abcd"), None)
    shared = on_test(MULTICLASS, logits, labels, None)
    assert shared["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    tags = (torch.rand(50, 3) < 0.4).float()
    thresholds = [0.3, 0.5, 0.7]
    shared = on_test(MULTILABEL, logits[:, :3], tags, thresholds)
    decided = torch.sigmoid(logits[:, :3]) >= torch.tensor(thresholds)
    assert shared["accuracy"] == pytest.approx((decided == tags.bool()).float().mean().item())
    report = MULTILABEL.report(logits[:, :3].numpy(), tags.numpy(), list("xyz"), thresholds)
    assert shared["macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-6)


def test_multilabel_trains_chooses_thresholds_and_evaluates(cfg):
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task="multilabel"))
    write_tagged_images(Path(cfg.paths.raw))
    preprocess(cfg)
    for streaming in (False, True):  # both loaders yield the multi-hot float targets BCE takes
        runtime = dataclasses.replace(cfg.runtime, streaming=streaming)
        datamodule = create_datamodule(dataclasses.replace(cfg, runtime=runtime))
        datamodule.setup("fit")
        images, targets = next(iter(datamodule.train_dataloader()))
        assert targets.dtype == torch.float32 and targets.shape == (len(images), 3)
        assert set(targets.unique().tolist()) <= {0.0, 1.0}
    metrics = train(cfg)
    assert {"val/accuracy", "val/macro_f1"} <= set(metrics)
    trained = load_trained(cfg)
    assert trained.task.name == "multilabel" and len(trained.thresholds) == 3
    results = evaluate(cfg)
    for key in ("loss", "macro_f1", "micro_f1", "mean_average_precision", "exact_match"):
        assert 0 <= results[key] <= (1 if key != "loss" else math.inf), key
    with open(cfg.paths.per_class, newline="") as f:
        assert [row["class"] for row in csv.DictReader(f)] == ["a", "b", "c"]
