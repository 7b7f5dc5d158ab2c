"""Promotion: a released version into a stage (production, staging, ...), gated against the
version the stage serves now.

    python -m mlt_project.scripts.release promote 0.2.0 --stage production
    python -m mlt_project.scripts.release promote 0.2.0 --stage production --force --reason "..."

1. Both releases run with ONNX Runtime (no torch: promotion needs what serving needs) on the
   candidate's test split, the test.parquet released with it (checked against its manifest like
   every file), not the workspace's.
2. The task's primary metric (base/tasks.py: accuracy for multiclass, macro F1 for multilabel)
   of both, and of the difference candidate - production, with 95% percentile intervals from a
   paired bootstrap: BOOTSTRAP_RESAMPLES resamples of the test images with replacement, each
   scored for both releases (the same images), seeded, so a rerun prints the same figures.
3. Each class's F1 (the task's test report) for both, and the difference.
4. Refused when the difference is below -release.promote_tolerance, unless --force with a
   --reason, which the stage records. The rule reads the point estimate, the difference measured
   on the test set, not the interval's upper bound: the upper bound would let any candidate
   through whose drop is within the noise, and the noise is largest on small test sets, where a
   gate is needed most. A refusal shows the interval, so an owner can judge a small drop and
   promote it with --force and a reason that stays on record.

The first promotion to a stage has nothing to compare with. A version without a manifest (never
released, or its upload unfinished) is refused. release/stages.py records the promotion.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import PipelineError
from ..base.fileio import read_json
from ..base.tasks import OLDEST_TASK, Task
from ..base.tasks import task as task_named
from ..data.store import open_split, read_row_group, split_info
from ..serve.fetch import (
    TEST_SPLIT,
    fetch_file,
    fetch_model,
    read_manifest,
    read_stage,
    releases,
    stage_key,
    staged_version,
)
from ..serve.onnx_runtime import INFO_FILE, onnx_session, run_onnx
from .stages import committer, gto_version, record_stage, release_commit

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
CHUNK = 100  # resamples scored at once: (CHUNK, images) counts in memory
BATCH_SIZE = 256

log = logging.getLogger(__name__)


def release_logits(model_path: Path, split: Path) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) of a model over a Parquet split, a row group at a time."""
    session = onnx_session(model_path)
    logits, targets = [], []
    with open_split(split) as parquet:
        shape, _ = split_info(parquet, split)
        for group in range(parquet.num_row_groups):
            images, labels = read_row_group(parquet, group, shape)
            for start in range(0, len(images), BATCH_SIZE):
                logits.append(run_onnx(session, images[start : start + BATCH_SIZE]))
            targets.append(labels)
    return np.concatenate(logits), np.concatenate(targets)


def incomparable(candidate: dict, production: dict, split: Path) -> str | None:
    """Why the two releases cannot be scored on the candidate's split, or None."""
    with open_split(split) as parquet:
        shape, class_names = split_info(parquet, split)
    if candidate["class_names"] != class_names:
        return f"the candidate's {TEST_SPLIT} has other classes than its model_info.json"
    if list(candidate["input"]["shape"][1:]) != list(shape):
        return f"the candidate's {TEST_SPLIT} holds images of shape {shape}"
    differences = {
        "task": lambda info: info.get("task", OLDEST_TASK),
        "classes": lambda info: info["class_names"],
        "input shape": lambda info: info["input"]["shape"][1:],
    }
    for what, of in differences.items():
        if of(candidate) != of(production):
            return (
                f"the releases differ in their {what} ({of(production)} in production, "
                f"{of(candidate)} now)"
            )
    return None


def interval(values: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def paired_bootstrap(
    task: Task,
    candidate: tuple[np.ndarray, list[float] | None],
    production: tuple[np.ndarray, list[float] | None],
    targets: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """The primary metric of both (logits, thresholds) on the test set and on `resamples`
    resamples of its images, the same resamples for both; the difference's point estimate and
    the percentile intervals."""
    n = len(targets)
    whole = np.ones((1, n))
    scores = {
        name: task.primary_scores(logits, targets, thresholds, whole)[0]
        for name, (logits, thresholds) in (("candidate", candidate), ("production", production))
    }
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[np.ndarray]] = {"candidate": [], "production": []}
    for start in range(0, resamples, CHUNK):
        counts = rng.multinomial(n, np.full(n, 1 / n), size=min(CHUNK, resamples - start))
        counts = counts.astype(np.float64)
        for name, (logits, thresholds) in (("candidate", candidate), ("production", production)):
            drawn[name].append(task.primary_scores(logits, targets, thresholds, counts))
    candidate_scores = np.concatenate(drawn["candidate"])
    production_scores = np.concatenate(drawn["production"])
    return {
        "metric": task.primary_metric,
        "images": n,
        "candidate": float(scores["candidate"]),
        "production": float(scores["production"]),
        "difference": float(scores["candidate"] - scores["production"]),
        "candidate_interval": interval(candidate_scores),
        "production_interval": interval(production_scores),
        "difference_interval": interval(candidate_scores - production_scores),
        "level": LEVEL,
        "resamples": resamples,
        "seed": seed,
    }


def per_class_f1(
    task: Task, logits: np.ndarray, targets: np.ndarray, info: dict[str, Any]
) -> dict[str, float]:
    report = task.report(logits, targets, info["class_names"], info.get("thresholds"))
    return {name: figures["f1"] for name, figures in report["per_class"].items()}


def compare(
    candidate_model: Path, production_model: Path, split: Path
) -> tuple[dict[str, Any] | None, str | None]:
    """(the comparison, None), or (None, why the releases cannot be compared)."""
    candidate_info = read_json(candidate_model.with_name(INFO_FILE), "release it again")
    production_info = read_json(production_model.with_name(INFO_FILE), "release it again")
    problem = incomparable(candidate_info, production_info, split)
    if problem:
        return None, problem
    task = task_named(candidate_info.get("task", OLDEST_TASK))
    candidate_logits, targets = release_logits(candidate_model, split)
    production_logits, _ = release_logits(production_model, split)
    if not len(targets):
        return None, f"the candidate's {TEST_SPLIT} holds no image"
    comparison = paired_bootstrap(
        task,
        (candidate_logits, candidate_info.get("thresholds")),
        (production_logits, production_info.get("thresholds")),
        targets,
    )
    ours = per_class_f1(task, candidate_logits, targets, candidate_info)
    theirs = per_class_f1(task, production_logits, targets, production_info)
    comparison["per_class_f1"] = {
        name: {"production": theirs[name], "candidate": ours[name], "difference": ours[name] - theirs[name]}
        for name in ours
    }  # fmt: skip
    return comparison, None


def describe(comparison: dict[str, Any], candidate: str, production: str) -> str:
    """The comparison as the lines promote prints (and the stage's git tag keeps)."""
    c = comparison
    metric, level = c["metric"], round(c["level"] * 100)
    lines = [
        f"{metric} on {candidate}'s test split ({c['images']} images); {level}% intervals from a "
        f"paired bootstrap, {c['resamples']:,} resamples of the images (seed {c['seed']}):",
        f"  candidate  {candidate:<12} {c['candidate']:.4f}  [{c['candidate_interval'][0]:.4f}, "
        f"{c['candidate_interval'][1]:.4f}]",
        f"  production {production:<12} {c['production']:.4f}  [{c['production_interval'][0]:.4f}, "
        f"{c['production_interval'][1]:.4f}]",
        f"  difference {'':<12} {c['difference']:+.4f}  [{c['difference_interval'][0]:+.4f}, "
        f"{c['difference_interval'][1]:+.4f}]",
        f"per-class F1:  {'production':>10} {'candidate':>10} {'difference':>10}",
    ]
    for name, f1 in c["per_class_f1"].items():
        lines.append(
            f"  {name:<12} {f1['production']:>10.4f} {f1['candidate']:>10.4f} "
            f"{f1['difference']:>+10.4f}"
        )
    return "\n".join(lines)


def promote(
    version: str, stage: str, tolerance: float, force: bool = False, reason: str | None = None
) -> dict[str, Any]:
    """Gate `version` against the release `stage` serves, then record it as the stage's; return
    the stage record. Prints the comparison."""
    if force and not (reason or "").strip():
        raise PipelineError('--force needs --reason "..." (the stage records why)')
    gto_version(version)  # a version GTO cannot list is refused before any download
    store = releases()
    store.check()
    key = stage_key(stage)
    manifest, manifest_sha256 = read_manifest(store, version)
    current = read_stage(store, stage)
    if current and (current["version"], current["manifest_sha256"]) == (version, manifest_sha256):
        print(f"version {version} is already in stage {stage} ({store.uri(key)}): nothing to do")
        return current
    commit = release_commit(manifest, version)
    comparison, skipped = None, None
    if current is None:
        print(f"stage {stage} is empty ({store.uri(key)}): the first promotion, no comparison")
    else:
        with tempfile.TemporaryDirectory(prefix="promote-") as tmp:
            comparison, skipped = evaluate(store, version, manifest, stage, Path(tmp), force)
        if comparison is not None:
            print(describe(comparison, version, current["version"]))
            worse = comparison["difference"] < -tolerance
            if worse and not force:
                low, high = comparison["difference_interval"]
                raise PipelineError(
                    f"promotion refused: {version}'s {comparison['metric']} is "
                    f"{-comparison['difference']:.4f} below {current['version']}'s in {stage} "
                    f"({comparison['difference']:+.4f}, {round(comparison['level'] * 100)}% "
                    f"interval [{low:+.4f}, {high:+.4f}]), more than release.promote_tolerance "
                    f'{tolerance:g}: improve the model, or pass --force --reason "..."'
                )
        else:
            print(f"no comparison ({skipped}): promoted by --force")
    record = {
        "stage": stage,
        "version": version,
        "manifest_sha256": manifest_sha256,
        "release": f"{store.uri(version)}/",
        "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "promoted_by": committer(),
        "forced": force,
        "reason": reason,
        "tolerance": tolerance,
        "previous": None if current is None else {
            "version": current["version"], "manifest_sha256": current["manifest_sha256"]
        },
        "comparison": comparison,
        "comparison_skipped": skipped,
    }  # fmt: skip
    summary = summary_of(record)
    record = record_stage(store, record, commit, summary)
    print(f"promoted {version} to {stage}: {store.uri(key)}, git tag {record['git_tag']}")
    return record


def evaluate(
    store: Any, version: str, manifest: dict, stage: str, tmp: Path, force: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """Fetch both releases and the candidate's test split (checked), and compare them; where
    they cannot be compared, say why, which stops the promotion unless `force`."""
    try:
        production, production_manifest = staged_version(store, stage)
    except PipelineError as error:
        if not force:
            raise
        return None, str(error)
    candidate_model = fetch_model(store, version, tmp / "candidate", manifest)
    production_model = fetch_model(store, production, tmp / "production", production_manifest)
    if TEST_SPLIT not in manifest["objects"]:
        problem = f"release {version} has no {TEST_SPLIT} (released before promotion existed)"
    else:
        split = fetch_file(store, version, TEST_SPLIT, manifest, tmp / "candidate")
        comparison, problem = compare(candidate_model, production_model, split)
        if comparison is not None:
            return comparison, None
    if not force:
        raise PipelineError(
            f"cannot compare {version} with {production} in {stage}: {problem}; promote with "
            '--force --reason "..." if it should serve anyway'
        )
    return None, problem


def summary_of(record: dict[str, Any]) -> str:
    """The assignment tag's message body: the comparison, and who forced it why."""
    lines = []
    if record["comparison"] is not None:
        lines.append(
            describe(record["comparison"], record["version"], record["previous"]["version"])
        )
    elif record["previous"] is None:
        lines.append("the stage's first version: no comparison")
    else:
        lines.append(f"no comparison: {record['comparison_skipped']}")
    if record["forced"]:
        lines.append(f"forced by {record['promoted_by']}: {record['reason']}")
    return "\n".join(lines)
