"""What a model's outputs mean, one class per `data.task`: the half every layer needs, in numpy.

    multiclass  one class an image: softmax over the logits, the top class
    multilabel  zero or more: a sigmoid per class, each class whose probability reaches its
                threshold (chosen on the validation split after training, see
                Multilabel.fit_thresholds; 0.5 while training)

`task(cfg.data.task)` picks the class once; preprocess (the label format), evaluation (the
report, the mistakes, the confusion rows), the export's parity gate, predict and the server all
ask it, and none of them checks which task it is. The training half (the losses and the
metrics, in torch) is model/tasks.py, whose classes extend these: a new task is a subclass of
Task here, added to TASKS, and its subclass there.

This module imports numpy only: predict and the server, which run without torch, decide
exactly as evaluation does, and a change to the training half reruns no preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

DEFAULT_THRESHOLD = 0.5  # a class no validation image has: nothing to choose from
OLDEST_TASK = "multiclass"  # the task of files written before data.task existed

Row = tuple[str, str, str, float]  # (file name, true labels, predicted labels, score)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom, 0 where bottom is 0."""
    top, bottom = np.asarray(top, dtype=np.float64), np.asarray(bottom, dtype=np.float64)
    return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)


def _f1(tp: np.ndarray, claimed: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall and F1 (0 where a ratio is 0/0)."""
    precision, recall = _ratio(tp, claimed), _ratio(tp, support)
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def _rounded(values: dict[str, np.ndarray], i: int) -> dict[str, float | None]:
    return {k: None if np.isnan(v[i]) else round(float(v[i]), 6) for k, v in values.items()}


class Task:
    """The interface every task implements; see Multiclass and Multilabel."""

    name: ClassVar[str]
    multi_hot: ClassVar[bool]  # labels: multi-hot rows (several an image), else class indices
    # The per-class figures of the test report, in plots/per_class.csv's column order.
    per_class_columns: ClassVar[tuple[str, ...]]
    # The report's figure that `release promote` compares two releases on (primary_scores).
    primary_metric: ClassVar[str]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decide(self, probs: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
        """Decisions from probabilities (N, C): the task's own form (see the subclasses)."""
        raise NotImplementedError

    def chosen(self, probs: np.ndarray, thresholds: list[float] | None) -> list[list[int]]:
        """Per image, the classes it is given, most probable first (predict, the server)."""
        raise NotImplementedError

    def fit_thresholds(
        self, validation: Callable[[], tuple[np.ndarray, np.ndarray]]
    ) -> list[float] | None:
        """Decision thresholds chosen after training from (logits, targets) of the validation
        split, which `validation` computes only for a task that has thresholds."""
        return None

    def valid_thresholds(self, thresholds: list[float] | None, num_classes: int) -> bool:
        """Whether a checkpoint's or a release's thresholds are what this task decides with."""
        return thresholds is None

    def report(
        self,
        logits: np.ndarray,
        targets: np.ndarray,
        class_names: list[str],
        thresholds: list[float] | None,
    ) -> dict[str, Any]:
        """The test report's figures and `per_class` (per_class_columns per class name)."""
        raise NotImplementedError

    def mistakes(
        self,
        logits: np.ndarray,
        targets: np.ndarray,
        class_names: list[str],
        thresholds: list[float] | None,
        file_names: list[str],
    ) -> list[Row]:
        """Every wrongly predicted image, most confident first: (file name, labels, predicted,
        score). Ties keep file order, so reruns write the same file."""
        raise NotImplementedError

    def confusion(
        self,
        logits: np.ndarray,
        targets: np.ndarray,
        class_names: list[str],
        thresholds: list[float] | None,
    ) -> list[tuple[str, str]]:
        """(actual, predicted) rows that `dvc plots` draws as a confusion matrix."""
        raise NotImplementedError

    def summary(self, results: dict[str, Any]) -> str:
        """The test report in one log line."""
        raise NotImplementedError

    def primary_scores(
        self,
        logits: np.ndarray,
        targets: np.ndarray,
        thresholds: list[float] | None,
        counts: np.ndarray,
    ) -> np.ndarray:
        """primary_metric of resampled test sets, as report() computes it on the whole set:
        `counts` (B, N) says how often each of the N images is in each of B resamples (a row of
        ones is the test set itself); one value per row. The paired bootstrap of `release
        promote` gives two releases the same rows."""
        raise NotImplementedError

    def parity(
        self,
        expected: np.ndarray,
        actual: np.ndarray,
        bounds: np.ndarray,
        thresholds: list[float] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(clear, flipped) for the export's parity gate: which decisions PyTorch's and ONNX
        Runtime's logits may not change (they are no tie within `bounds`, see
        serve/onnx_export.py), and which they made differently."""
        raise NotImplementedError

    # The gate's words, formatted with `ties` (a passed gate) or `changed` (a failed one).
    parity_passed: ClassVar[str]
    parity_changed: ClassVar[str]

    def class_weights(self, counts: np.ndarray, images: int) -> np.ndarray:
        """Per-class loss weights (training.class_balance: loss) from the training split:
        `counts` images per class of `images`."""
        raise NotImplementedError


class Multiclass(Task):
    """One class an image: softmax over the logits; decisions are the top class (N,)."""

    name = "multiclass"
    multi_hot = False
    per_class_columns = ("precision", "recall", "f1", "support")
    primary_metric = "accuracy"
    parity_passed = "classes identical ({ties} tie(s) not compared)"
    parity_changed = "predicts another class for {changed} image(s) that are no tie"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def decide(self, probs: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
        return probs.argmax(axis=1)

    def chosen(self, probs: np.ndarray, thresholds: list[float] | None) -> list[list[int]]:
        return [[int(c)] for c in probs.argmax(axis=1)]

    def report(self, logits, targets, class_names, thresholds):
        """Accuracy, macro F1 (the mean F1 of the classes that occur in the labels or the
        predictions) and per-class precision/recall/F1/support."""
        n = len(class_names)
        predicted = logits.argmax(axis=1)
        confusion = np.bincount(targets * n + predicted, minlength=n * n).reshape(n, n)
        hits, support, claimed = confusion.diagonal(), confusion.sum(axis=1), confusion.sum(axis=0)
        precision, recall, f1 = _f1(hits, claimed, support)
        figures = {"precision": precision, "recall": recall, "f1": f1}
        seen = (support + claimed) > 0
        return {
            "accuracy": round(float((predicted == targets).mean()), 6),
            "macro_f1": round(float(f1[seen].mean()), 6),
            "num_samples": len(targets),
            "per_class": {
                name: _rounded(figures, i) | {"support": int(support[i])}
                for i, name in enumerate(class_names)
            },
        }

    def mistakes(self, logits, targets, class_names, thresholds, file_names):
        """The probability of the predicted class is the score: the most confident mistakes
        are the likeliest label errors, and the costliest."""
        probs = self.probabilities(logits)
        predicted = probs.argmax(axis=1)
        scores = probs[np.arange(len(probs)), predicted]
        wrong = np.flatnonzero(predicted != targets)
        order = wrong[np.argsort(-scores[wrong], kind="stable")]
        return [
            (file_names[i], class_names[targets[i]], class_names[predicted[i]], round(float(scores[i]), 6))
            for i in order.tolist()
        ]  # fmt: skip

    def confusion(self, logits, targets, class_names, thresholds):
        predicted = logits.argmax(axis=1)
        return [(class_names[a], class_names[p]) for a, p in zip(targets, predicted, strict=True)]

    def summary(self, results):
        return (
            f"test accuracy {results['accuracy']:.4f}, macro F1 {results['macro_f1']:.4f}, "
            f"loss {results['loss']:.4f}"
        )

    def primary_scores(self, logits, targets, thresholds, counts):
        """Accuracy: the share of (resampled) images whose top class is their label."""
        right = (logits.argmax(axis=1) == targets).astype(np.float64)
        return _ratio(counts @ right, counts.sum(axis=1))

    def parity(self, expected, actual, bounds, thresholds):
        """An image's class is clear where its top two logits are further apart than both may
        move; closer than that, either runtime may break the tie."""
        if expected.shape[1] < 2:
            clear = np.ones(len(expected), dtype=bool)
        else:
            top2 = np.sort(expected, axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 2 * bounds[:, 0]
        return clear, expected.argmax(axis=1) != actual.argmax(axis=1)

    def class_weights(self, counts, images):
        """Inverse class frequency, n / (C * n_c), as scikit-learn's "balanced": a class of
        average size weighs 1 and the mean weight over the training images is 1; a class without
        training images weighs 0 (no image has its label)."""
        counts = np.asarray(counts, dtype=np.float64)
        weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
        return np.where(counts > 0, weights, 0.0).astype(np.float32)


class Multilabel(Task):
    """Zero or more classes an image: a sigmoid per class; decisions are (N, C) booleans, each
    class at or above its threshold."""

    name = "multilabel"
    multi_hot = True
    per_class_columns = ("precision", "recall", "f1", "average_precision", "support")
    primary_metric = "macro_f1"
    parity_passed = "labels identical ({ties} near-threshold label(s) not compared)"
    parity_changed = "decides {changed} label(s) otherwise that are not near their threshold"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        # In float64 and from |x|: no overflow warning for a logit of -1000.
        x = np.asarray(logits, dtype=np.float64)
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def decide(self, probs, thresholds):
        return probs >= (DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds))

    def chosen(self, probs, thresholds):
        decided = self.decide(probs, thresholds)
        return [
            [int(c) for c in np.argsort(-row, kind="stable") if hits[c]]
            for row, hits in zip(probs, decided, strict=True)
        ]

    def fit_thresholds(self, validation):
        """Per class, the threshold that maximises that class's F1 on the validation split,
        placed midway between the lowest probability it accepts and the highest it rejects (not
        at an image's own probability, which a rounding difference would flip); the highest such
        threshold where several give the best F1; DEFAULT_THRESHOLD for a class no image has."""
        logits, targets = validation()
        probs = self.probabilities(logits)
        thresholds = []
        for column in range(probs.shape[1]):
            p, positive = probs[:, column], targets[:, column] >= 0.5
            if not positive.any():
                thresholds.append(DEFAULT_THRESHOLD)
                continue
            order = np.argsort(-p, kind="stable")
            p, positive = p[order], positive[order]
            hits = np.cumsum(positive)  # true positives when the first k + 1 images are accepted
            f1 = 2 * hits / (np.arange(1, len(p) + 1) + positive.sum())
            # A cut only where the probability drops: equal probabilities are accepted together.
            f1[np.r_[p[:-1] <= p[1:], False]] = -1
            best = int(np.argmax(f1))
            below = p[best + 1] if best + 1 < len(p) else 0.0
            thresholds.append(round(float((p[best] + below) / 2), 6))
        return thresholds

    def valid_thresholds(self, thresholds, num_classes):
        return thresholds is not None and len(thresholds) == num_classes

    def report(self, logits, targets, class_names, thresholds):
        """Macro and micro F1, mAP, exact match and per-class precision/recall/F1/AP/support,
        each class decided at its threshold. Macro F1 is the mean F1 of the classes that occur
        in the labels or the predictions; mAP (threshold-free) the mean average precision of the
        classes with a positive test image; exact match the share of images whose predicted set
        of labels is exactly right."""
        probs, actual = self.probabilities(logits), targets >= 0.5
        predicted = self.decide(probs, thresholds)
        tp = (predicted & actual).sum(axis=0)
        support, claimed = actual.sum(axis=0), predicted.sum(axis=0)
        precision, recall, f1 = _f1(tp, claimed, support)
        ap = np.array([average_precision(probs[:, c], actual[:, c]) for c in range(len(f1))])
        figures = {"precision": precision, "recall": recall, "f1": f1, "average_precision": ap}
        seen = (support + claimed) > 0
        micro = _ratio(2 * tp.sum(), support.sum() + claimed.sum())
        return {
            "macro_f1": round(float(f1[seen].mean()) if seen.any() else 0.0, 6),
            "micro_f1": round(float(micro), 6),
            "mean_average_precision": round(
                float(np.nanmean(ap)) if (support > 0).any() else 0.0, 6
            ),
            "exact_match": round(float((predicted == actual).all(axis=1).mean()), 6),
            "num_samples": len(actual),
            "per_class": {
                name: _rounded(figures, i) | {"support": int(support[i])}
                for i, name in enumerate(class_names)
            },
        }

    def mistakes(self, logits, targets, class_names, thresholds, file_names):
        """Every image whose predicted set of labels is not its true one, labels separated by
        spaces; the score is the probability the model gave its most confident wrong decision
        (p of a wrong label, 1 - p of a missed one)."""
        probs, actual = self.probabilities(logits), targets >= 0.5
        predicted = self.decide(probs, thresholds)
        wrong = predicted != actual
        confidence = np.where(wrong, np.where(predicted, probs, 1 - probs), -1.0).max(axis=1)
        rows = np.flatnonzero(wrong.any(axis=1))
        order = rows[np.argsort(-confidence[rows], kind="stable")]

        def names(row: np.ndarray) -> str:
            return " ".join(class_names[c] for c in np.flatnonzero(row))

        return [
            (file_names[i], names(actual[i]), names(predicted[i]), round(float(confidence[i]), 6))
            for i in order.tolist()
        ]

    def confusion(self, logits, targets, class_names, thresholds):
        """(actual, predicted) per image and class, as `<class>` or `not <class>`: the plot shows
        each class's 2x2 block (a multilabel image is no single cell of one matrix)."""
        actual = targets >= 0.5
        predicted = self.decide(self.probabilities(logits), thresholds)

        def cell(name: str, present: bool) -> str:
            return name if present else f"not {name}"

        return [
            (cell(name, bool(actual[i, c])), cell(name, bool(predicted[i, c])))
            for i in range(len(actual))
            for c, name in enumerate(class_names)
        ]

    def primary_scores(self, logits, targets, thresholds, counts):
        """Macro F1 at the thresholds: per resample, each class's true positives, claims and
        support are the images' counts summed, and the F1 of the classes seen are averaged."""
        actual = targets >= 0.5
        predicted = self.decide(self.probabilities(logits), thresholds)
        tp = counts @ (predicted & actual).astype(np.float64)
        claimed = counts @ predicted.astype(np.float64)
        support = counts @ actual.astype(np.float64)
        f1 = _f1(tp, claimed, support)[2]
        seen = (support + claimed) > 0
        return _ratio((f1 * seen).sum(axis=1), seen.sum(axis=1))

    def summary(self, results):
        return (
            f"test macro F1 {results['macro_f1']:.4f}, micro F1 {results['micro_f1']:.4f}, "
            f"mAP {results['mean_average_precision']:.4f}, exact match "
            f"{results['exact_match']:.4f}, loss {results['loss']:.4f}"
        )

    def parity(self, expected, actual, bounds, thresholds):
        """Each (image, label) is clear where its logit is further from its threshold's logit
        (where the sigmoid reaches the threshold) than it may move."""
        p = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-7, 1 - 1e-7)
        cut = np.log(p / (1 - p))
        return np.abs(expected - cut) > bounds, (expected >= cut) != (actual >= cut)

    def class_weights(self, counts, images):
        """BCE's positive weight, (n - n_c) / n_c, so a class's positives weigh as much as its
        negatives; 1 for a class without positives (there is nothing to weigh)."""
        counts = np.asarray(counts, dtype=np.float64)
        return np.where(counts > 0, (images - counts) / np.maximum(counts, 1), 1.0).astype(
            np.float32
        )


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (scikit-learn's
    average_precision_score); NaN for a class with no positive image."""
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    hits = np.cumsum(positive)
    last = np.r_[scores[1:] != scores[:-1], True]  # the end of each run of equal scores
    precision = hits[last] / np.arange(1, len(scores) + 1)[last]
    recall = hits[last] / positive.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


TASKS: dict[str, Task] = {task.name: task for task in (Multiclass(), Multilabel())}


def task(name: str) -> Task:
    """The task `data.task` names (config.py has checked the name)."""
    return TASKS[name]
