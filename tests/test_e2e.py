"""Bake a project into a git repo that holds this template as a submodule, install it with pip,
and run what its users run: sample data, `dvc repro`, its own tests and ruff."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import MODULE, NAME, REPO, git, run, set_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(trained_project):
    return trained_project.root, trained_project


def test_record_names_the_submodule_commit(project):
    host, _ = project
    record = json.loads((host / ".ml-template.json").read_text())
    assert record["template_version"] == git("rev-parse", "HEAD", cwd=host / ".ml-aws-template")
    assert record["answers"] == {"project_name": NAME, "module_name": MODULE, "torch": "cpu"}


def test_pipeline_runs_all_stages_and_reaches_accuracy(project):
    host, trained = project
    print(f"first dvc repro: {trained.repro_seconds:.1f}s")
    for stage in ("preprocess", "train", "evaluate"):
        assert f"Running stage '{stage}'" in trained.repro_stdout
    results = json.loads((host / "evaluation_results.json").read_text())
    assert results["accuracy"] >= 0.90, results
    assert set(results["per_class"]) == {str(digit) for digit in range(10)}
    assert sum(c["support"] for c in results["per_class"].values()) == results["num_samples"]
    for split in ("train", "val", "test"):
        assert (host / "data" / "processed" / f"{split}.parquet").is_file()
    assert (host / "models" / "model.ckpt").is_file()
    events = list((host / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    tags = set()
    for event_file in events:
        reader = EventAccumulator(str(event_file))
        reader.Reload()
        tags |= set(reader.Tags()["scalars"])
    assert {"lr-AdamW", "train/loss", "val/acc", "train/acc"} <= tags, tags
    assert "hp_metric" not in tags  # no placeholder -1 in TensorBoard
    assert "saved models/model.ckpt" in trained.repro_stderr  # the stages' logs are here
    assert "Tip:" not in trained.repro_stderr  # and no advertisement in them


def test_second_repro_runs_nothing(project):
    host, _ = project
    start = time.perf_counter()
    again = run("dvc", "repro", cwd=host)
    print(f"no-op dvc repro: {time.perf_counter() - start:.2f}s")
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout


def test_a_param_change_reruns_only_the_stages_that_list_it(project):
    host, _ = project
    # dvc.yaml only: `dvc status` also lists release/dvc.yaml's stages until the first release.
    params = host / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("  max_epochs: 30", "  max_epochs: 29"))
        changed = json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=host).stdout)
        assert set(changed) == {"train"}, changed  # evaluate follows once train's output changes
        params.write_text(original.replace("  batch_size: 512", "  batch_size: 256"))
        changed = json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=host).stdout)
        assert set(changed) == {"evaluate"}, changed
    finally:
        params.write_text(original)
    assert json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=host).stdout) == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("preprocess_workers", 1),
        ("loader_workers", 2),
        ("pin_memory", False),
        ("persistent_workers", False),
        ("streaming", True),
        ("compile", True),
        ("checkpoint_every_n_steps", 7),
    ],
)
def test_a_runtime_knob_reruns_nothing(project_copy, key, value):
    """runtime.* changes how fast stages run, not what they compute: no stage depends on it."""
    set_params(project_copy, **{f"runtime__{key}": value})
    assert json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=project_copy).stdout) == {}


def test_train_depends_on_the_code_the_resume_fingerprint_hashes(project):
    host, _ = project
    from mlt_project.resume import TRAINING_CODE

    stages = yaml.safe_load((host / "dvc.yaml").read_text())["stages"]
    code = [dep for dep in stages["train"]["deps"] if dep.startswith(f"src/{MODULE}/")]
    assert sorted(dep.removeprefix(f"src/{MODULE}/") for dep in code) == sorted(TRAINING_CODE)


def test_metrics_and_confusion_plot_render(project):
    host, _ = project
    shown = run("dvc", "metrics", "show", "--json", cwd=host).stdout
    assert '"accuracy"' in shown
    rows = (host / "plots" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted"
    results = json.loads((host / "evaluation_results.json").read_text())
    assert len(rows) - 1 == results["num_samples"]
    plots = json.loads(run("dvc", "plots", "show", "--json", cwd=host).stdout)
    (entry,) = plots["data"]["plots/confusion.csv"]
    assert entry["type"] == "vega"
    rendered = entry["content"]["data"]["values"]
    assert len(rendered) == results["num_samples"]
    assert {"actual", "predicted"} <= set(rendered[0])


def test_generated_tests_and_ruff_pass(project):
    host, _ = project
    tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=host)
    assert re.search(r"\d+ passed", tests.stdout)
    assert "failed" not in tests.stdout
    run("ruff", "check", ".", cwd=host)
    run("ruff", "format", "--check", ".", cwd=host)


def test_generated_files_contain_no_placeholder(project):
    host, _ = project
    tracked = git("ls-files", "--others", "--exclude-standard", cwd=host).splitlines()
    assert "dvc.yaml" in tracked
    for name in tracked:
        if name.startswith(".ml-aws-template"):
            continue
        path = Path(host, name)
        assert "mlt_project" not in name and "mlt-project" not in name
        if path.suffix not in {".png", ".parquet", ".ckpt"}:
            text = path.read_text(errors="replace")
            assert "mlt_project" not in text and "mlt-project" not in text, name


def test_make_demo_script_runs_the_pipeline_and_prints_the_metrics(tmp_path):
    """tools/demo.sh, what `make demo` runs: the README's main command for a fresh machine."""
    demo = tmp_path / "demo"
    try:
        result = run("bash", REPO / "tools" / "demo.sh", cwd=tmp_path, DEMO_DIR=str(demo))
    finally:
        run(
            sys.executable,
            "-m",
            "pip",
            "uninstall",
            "--quiet",
            "--yes",
            "digits-demo",
            cwd=tmp_path,
        )
    assert "Running stage 'evaluate'" in result.stdout
    shown = result.stdout.split("Path", 1)[1]  # the table `dvc metrics show` prints last
    assert "evaluation_results.json" in shown and "accuracy" in shown
    assert json.loads((demo / "evaluation_results.json").read_text())["accuracy"] >= 0.90
