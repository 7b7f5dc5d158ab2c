"""Bake a project into a git repo that holds this template as a submodule, install it with pip,
and run what its users run: sample data, `dvc repro`, its own tests and ruff."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import MODULE, NAME, REPO, git, one_error_line, run, set_params, sh

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
    # A few numbers, whatever the class count: the per-class figures have a file of their own.
    assert set(results) == {"loss", "accuracy", "macro_f1", "num_samples"}
    per_class = read_csv(host / "plots" / "per_class.csv")
    assert [row["class"] for row in per_class] == [str(digit) for digit in range(10)]
    assert sum(int(row["support"]) for row in per_class) == results["num_samples"]
    for split in ("train", "val", "test"):
        assert (host / "data" / "processed" / f"{split}.parquet").is_file()
    report = json.loads((host / "reports" / "data.json").read_text())
    assert sum(report["images"].values()) == 1797 and report["image_sizes"] == {"8x8": 1797}
    # The test images it got wrong, by name, and each one's true label is its class folder's.
    mistakes = read_csv(host / "reports" / "mistakes.csv")
    confusion = read_csv(host / "plots" / "confusion.csv")
    assert len(mistakes) == sum(row["actual"] != row["predicted"] for row in confusion) > 0
    for row in mistakes:
        assert (host / "data" / "raw" / row["file_name"]).parent.name == row["label"]
    assert (host / "models" / "model.ckpt").is_file()
    (event_file,) = (host / "logs").rglob("events.out.tfevents.*")
    assert event_file.parent == host / "logs" / "train"
    reader = EventAccumulator(str(event_file))
    reader.Reload()
    tags = set(reader.Tags()["scalars"])
    assert {"lr-AdamW", "train/loss", "val/accuracy", "train/accuracy"} <= tags, tags
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
        ("channels_last", True),
    ],
)
def test_a_runtime_knob_reruns_nothing(project_copy, key, value):
    """runtime.* changes how fast stages run, not what they compute: no stage depends on it."""
    set_params(project_copy, **{f"runtime__{key}": value})
    assert json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=project_copy).stdout) == {}


def test_lr_find_suggests_a_rate_in_its_range_and_changes_no_file_of_the_project(project_copy):
    """The learning-rate finder on the sample digits: a rate within --min-lr..--max-lr, the curve
    as a CSV `dvc plots show` draws; params.yaml, DVC's outputs, the logs and a resume
    checkpoint as they were, and no scratch checkpoint left behind."""
    resume = project_copy / "checkpoints" / "last.ckpt"
    resume.parent.mkdir(exist_ok=True)
    resume.write_bytes(b"an interrupted run's state")
    kept = ["params.yaml", "models/model.ckpt", "plots/curves.csv", "checkpoints/last.ckpt"]
    before = {name: (project_copy / name).read_bytes() for name in kept}
    logs = sorted(p.relative_to(project_copy) for p in (project_copy / "logs").rglob("*"))

    found = sh(sys.executable, "-m", f"{MODULE}.training.lr_find", "--min-lr", "1e-5", "--max-lr", "1",
               cwd=project_copy)  # fmt: skip
    assert found.returncode == 0, found.stderr[-3000:]
    (line,) = [line for line in found.stdout.splitlines() if line.startswith("suggested lr: ")]
    lr = float(line.removeprefix("suggested lr: "))
    assert 1e-5 <= lr <= 1, line
    with (project_copy / "plots" / "lr_find.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "lr", "log10_lr", "loss"]
    rates = [float(row["lr"]) for row in rows]
    assert 20 <= len(rows) <= 100 and rates == sorted(rates), rates  # rising; early stop allowed
    assert rates[0] == pytest.approx(1e-5, rel=0.2) and min(rates) <= lr <= max(rates)

    assert {name: (project_copy / name).read_bytes() for name in kept} == before
    assert sorted(p.relative_to(project_copy) for p in (project_copy / "logs").rglob("*")) == logs
    assert sorted(project_copy.rglob("*.ckpt")) == [resume, project_copy / "models/model.ckpt"]
    assert json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=project_copy).stdout) == {}
    shown = run("dvc", "plots", "show", "plots/lr_find.csv", "-x", "log10_lr", "-y", "loss",
                "--json", cwd=project_copy)  # fmt: skip
    assert "plots/lr_find.csv" in shown.stdout


def test_replacing_the_weights_file_retrains_and_one_elsewhere_is_refused(project_copy):
    """DVC cannot depend on model.weights_file itself (it may be null): the folder it must be in,
    paths.weights, is a dependency of train, so `dvc status` sees a replaced file."""
    import torch

    from mlt_project.base.config import load_config
    from mlt_project.training.factories import create_model

    def save_weights(path: Path, seed: int) -> None:
        torch.manual_seed(seed)
        cfg = load_config(project_copy / "params.yaml")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights_file=None))
        torch.save(create_model(cfg).net.body.state_dict(), path)

    weights = project_copy / "weights" / "start.pt"
    save_weights(weights, seed=1)
    set_params(project_copy, model__weights_file="weights/start.pt")
    repro = sh("dvc", "repro", cwd=project_copy)
    assert repro.returncode == 0, repro.stderr[-3000:]
    assert "Running stage 'train'" in repro.stdout

    def status() -> dict:
        return json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=project_copy).stdout)

    assert status() == {}
    save_weights(weights, seed=2)  # the same path, other weights
    assert status() == {"train": [{"changed deps": {"weights": "modified"}}]}

    elsewhere = project_copy / "start.pt"
    weights.rename(elsewhere)
    set_params(project_copy, model__weights_file=str(elsewhere))
    refused = sh(sys.executable, "-m", f"{MODULE}.training.train", cwd=project_copy)
    one_error_line(refused, "model.weights_file", "is outside paths.weights (weights/)")


def test_serving_release_and_deploy_code_retrain_nothing_and_training_code_retrains(
    project_copy,
):
    """The stages depend on the folders of the layers they run (dvc.yaml), and the resume
    checkpoint's fingerprint covers the same code (training/resume.py's TRAINED_BY): a change to
    serving, release, deployment or command code reruns no stage and keeps a resume checkpoint
    valid; a change to training code reruns train and evaluate, and starts training afresh."""
    package = project_copy / "src" / MODULE
    fingerprint = (
        "from mlt_project.base.config import load_config; "
        "from mlt_project.training.resume import run_fingerprint; "
        "print(run_fingerprint(load_config('params.yaml')))"
    ).replace("mlt_project", MODULE)

    def state() -> tuple[dict, str]:
        status = json.loads(run("dvc", "status", "--json", "dvc.yaml", cwd=project_copy).stdout)
        printed = sh(sys.executable, "-c", fingerprint, cwd=project_copy)
        assert printed.returncode == 0, printed.stderr[-2000:]
        return status, printed.stdout.strip()

    status, before = state()
    assert status == {}
    for layer in ("serve", "release", "deploy", "scripts"):
        with (package / layer / "__init__.py").open("a") as f:
            f.write("# a change outside training\n")
    assert state() == ({}, before)
    with (package / "training" / "callbacks.py").open("a") as f:
        f.write("# a change to training\n")
    status, after = state()
    assert set(status) == {"train", "evaluate"}, status
    assert after != before


def test_metrics_and_plots_render(project):
    host, _ = project
    shown = run("dvc", "metrics", "show", cwd=host).stdout.splitlines()
    print("\n".join(["dvc metrics show:", *shown]))
    assert shown[0].split() == ["Path", "accuracy", "loss", "macro_f1", "num_samples"]
    assert shown[1].split()[0] == "evaluation_results.json"
    assert len(shown) == 2
    rows = (host / "plots" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted"
    results = json.loads((host / "evaluation_results.json").read_text())
    assert len(rows) - 1 == results["num_samples"]
    curves = read_csv(host / "plots" / "curves.csv")
    assert [int(row["epoch"]) for row in curves] == list(range(30))  # training.max_epochs
    assert float(curves[-1]["val_loss"]) < float(curves[0]["val_loss"])

    plots = json.loads(run("dvc", "plots", "show", "--json", cwd=host).stdout)
    assert set(plots["data"]) == {
        "loss",
        "accuracy",
        "plots/per_class.csv",
        "plots/confusion.csv",
    }
    rendered = {}
    for name, (entry,) in plots["data"].items():
        assert entry["type"] == "vega", name
        rendered[name] = entry["content"]["data"]["values"]
    assert len(rendered["plots/confusion.csv"]) == results["num_samples"]
    assert {"actual", "predicted"} <= set(rendered["plots/confusion.csv"][0])
    assert len(rendered["plots/per_class.csv"]) == 10
    assert {(point["field"], point["epoch"]) for point in rendered["loss"]} == {
        (field, str(epoch)) for field in ("train_loss", "val_loss") for epoch in range(30)
    }
    assert len(rendered["accuracy"]) == 30


def test_an_experiment_shows_the_summary_metrics_and_keeps_one_log_folder(project_copy):
    """`dvc exp run` as PROJECT.md shows it; its metrics are a few columns of `dvc exp show`."""
    git("add", "-A", cwd=project_copy)
    git("commit", "--quiet", "-m", "baseline", cwd=project_copy)
    # Fewer epochs than params.yaml's 30: this checks what an experiment records, in CI time.
    run(
        "dvc", "exp", "run", "-S", "model.mlp.hidden_size=64", "-S", "training.max_epochs=5",
        cwd=project_copy,
    )  # fmt: skip
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=project_copy).stdout)
    (experiment,) = [
        rev["data"]
        for commit in shown
        for exp in commit.get("experiments") or []
        for rev in exp["revs"]
    ]
    params = experiment["params"]["params.yaml"]["data"]
    assert params["model"]["mlp"]["hidden_size"] == 64
    metrics = experiment["metrics"]["evaluation_results.json"]["data"]
    assert set(metrics) == {"loss", "accuracy", "macro_f1", "num_samples"}  # no per-class column
    assert 0 < metrics["macro_f1"] <= 1 and 0 < metrics["accuracy"] <= 1 and metrics["loss"] > 0
    # The retrain replaced the first run's TensorBoard events instead of adding a version_1.
    logs = project_copy / "logs"
    files = sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file())
    assert len(files) == 2 and files[1] == "train/hparams.yaml", files
    assert files[0].startswith("train/events.out.tfevents.")
    assert len(read_csv(project_copy / "plots" / "curves.csv")) == 5


def test_generated_tests_pass_with_the_params_of_a_users_own_data(project_copy):
    """What PROJECT.md says to set for one's own images, then the project's own tests."""
    set_params(
        project_copy,
        data__image_size=[32, 32],
        data__channels=3,
        data__num_classes=4,
        model__name="cnn",
    )
    tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project_copy)
    assert re.search(r"\d+ passed", tests.stdout)
    assert "failed" not in tests.stdout and "warning" not in tests.stdout


def test_generated_tests_and_ruff_pass(project):
    host, _ = project
    tests = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=host)
    assert re.search(r"\d+ passed", tests.stdout)
    assert "failed" not in tests.stdout
    assert "warning" not in tests.stdout  # pytest config filters what no one can fix
    run("ruff", "check", ".", cwd=host)
    run("ruff", "format", "--check", ".", cwd=host)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


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
