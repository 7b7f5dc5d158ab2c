"""The promotion gate's numbers (base/tasks.py primary_scores, release/promote.py paired_bootstrap)
on logits built by hand: the primary metric is the report's, on the test set and on resampled
sets alike, and the paired interval behaves as a paired interval must."""

from __future__ import annotations

import numpy as np
import pytest

from mlt_project.base.tasks import Multiclass, Multilabel
from mlt_project.release.promote import describe, paired_bootstrap

MULTICLASS, MULTILABEL = Multiclass(), Multilabel()


def multiclass_case(n: int = 300, seed: int = 0, right: float = 0.8):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 4, n)
    logits = rng.normal(0, 1, (n, 4))
    hit = rng.random(n) < right
    logits[np.arange(n)[hit], targets[hit]] += 5
    return logits, targets


def multilabel_case(n: int = 300, seed: int = 0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < 0.4).astype(np.float64)
    targets[:, 2] = 0  # a class no image has: macro F1 averages only the classes seen
    logits = np.where(targets > 0, 2.0, -2.0) + rng.normal(0, noise, (n, 3))
    return logits, targets


@pytest.mark.parametrize(
    ("task", "case", "thresholds"),
    [(MULTICLASS, multiclass_case, None), (MULTILABEL, multilabel_case, [0.4, 0.5, 0.6])],
    ids=["multiclass-accuracy", "multilabel-macro-f1"],
)
def test_the_primary_metric_is_the_reports_on_the_whole_set_and_on_a_resample(
    task, case, thresholds
):
    logits, targets = case()
    names = [f"c{i}" for i in range(logits.shape[1])]
    whole = task.primary_scores(logits, targets, thresholds, np.ones((1, len(targets))))
    report = task.report(logits, targets, names, thresholds)
    assert whole[0] == pytest.approx(report[task.primary_metric], abs=1e-6)
    # A resample with counts is the report on the images repeated that many times.
    counts = np.random.default_rng(5).multinomial(
        len(targets), np.full(len(targets), 1 / len(targets))
    )
    picked = np.repeat(np.arange(len(targets)), counts)
    resampled = task.primary_scores(logits, targets, thresholds, counts[None].astype(float))
    expected = task.report(logits[picked], targets[picked], names, thresholds)[task.primary_metric]
    assert resampled[0] == pytest.approx(expected, abs=1e-6)


def test_identical_releases_differ_by_exactly_zero():
    logits, targets = multiclass_case()
    result = paired_bootstrap(MULTICLASS, (logits, None), (logits.copy(), None), targets)
    assert result["difference"] == 0 and result["difference_interval"] == [0.0, 0.0]
    assert result["candidate_interval"][0] < result["candidate"] < result["candidate_interval"][1]


def test_the_paired_interval_is_narrower_than_the_metrics_own_and_catches_a_worse_model():
    logits, targets = multiclass_case(right=0.9)
    worse = logits.copy()
    # 8% of the images the production model gets right, the candidate gets wrong.
    rng = np.random.default_rng(1)
    flipped = rng.choice(np.flatnonzero(logits.argmax(1) == targets), size=24, replace=False)
    worse[flipped, targets[flipped]] -= 20
    result = paired_bootstrap(MULTICLASS, (worse, None), (logits, None), targets, resamples=2000)
    low, high = result["difference_interval"]
    assert result["difference"] == pytest.approx(-24 / 300)
    assert low <= result["difference"] <= high < 0
    own = result["candidate_interval"][1] - result["candidate_interval"][0]
    assert high - low < own, "pairing removes the images' shared difficulty from the interval"
    # Seeded: the same figures every run, whatever the chunking of resamples.
    again = paired_bootstrap(MULTICLASS, (worse, None), (logits, None), targets, resamples=2000)
    assert again == result
    odd = paired_bootstrap(MULTICLASS, (worse, None), (logits, None), targets, resamples=1234)
    assert odd["resamples"] == 1234 and odd["difference"] == result["difference"]


def test_the_printed_comparison_names_the_metric_intervals_and_each_class():
    logits, targets = multilabel_case()
    result = paired_bootstrap(MULTILABEL, (logits, [0.5] * 3), (logits, [0.3] * 3), targets)
    result["per_class_f1"] = {
        "sun": {"production": 0.9, "candidate": 0.8, "difference": -0.1},
        "tree": {"production": 0.7, "candidate": 0.75, "difference": 0.05},
    }
    text = describe(result, "0.2.0", "0.1.0")
    assert text.startswith("macro_f1 on 0.2.0's test split (300 images); 95% intervals")
    assert "2,000 resamples of the images (seed 0)" in text
    assert "  sun              0.9000     0.8000    -0.1000" in text
    assert "  tree             0.7000     0.7500    +0.0500" in text
