"""The tasks (base/tasks.py, model/tasks.py): the training losses on values worked out by hand,
then multilabel classification end to end: 480 8x8 images with 0-3 of 3 tags listed in
metadata.csv, `data.task: multilabel`, one `dvc repro` shared by the module's tests; the metrics,
a SIGKILLed training resumed, the export behind the parity gate, an upload to S3 and predict in
an empty folder, which must give an image all of its tags. (The generated project's own
tests/test_tasks.py checks the reports, thresholds and mistakes.)"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.session
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from helpers import (
    MODULE,
    MULTILABEL_TAGS,
    NAME,
    env,
    free_port,
    git,
    run,
    set_params,
    write_multilabel_pngs,
)
from mlt_project.model.tasks import Multiclass, Multilabel
from serving import call, post_image, stop, wait_until_ready

MULTICLASS, MULTILABEL = Multiclass(), Multilabel()


def test_without_options_the_loss_is_plain_cross_entropy_bit_for_bit():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 5), torch.randint(0, 5, (16,))
    assert torch.equal(MULTICLASS.training_loss(5)(logits, labels), F.cross_entropy(logits, labels))


def test_soft_targets_agree_with_class_indices_with_smoothing_and_weights():
    torch.manual_seed(0)
    logits, labels = torch.randn(32, 4), torch.randint(0, 4, (32,))
    one_hot = F.one_hot(labels, 4).float()
    smoothed = MULTICLASS.training_loss(4, label_smoothing=0.1)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(smoothed(logits, one_hot), expected)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    weighted = MULTICLASS.training_loss(4, weights=weights)
    expected = F.cross_entropy(logits, labels, weight=weights)
    torch.testing.assert_close(weighted(logits, labels), expected)
    torch.testing.assert_close(weighted(logits, one_hot), expected)


def test_a_mixed_target_costs_the_mix_of_its_two_labels_costs():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    mixed = torch.tensor([[0.3, 0.7, 0.0]])
    loss = MULTICLASS.training_loss(3)(logits, mixed)
    log_p = F.log_softmax(logits, dim=1)[0]
    torch.testing.assert_close(loss, -(0.3 * log_p[0] + 0.7 * log_p[1]))


def test_class_weights_are_inverse_frequency_with_mean_one_over_images():
    weights = torch.from_numpy(MULTICLASS.class_weights(np.array([10, 30, 60, 0]), 100))
    # n / (C * n_c): 100 / (4 * 10), 100 / (4 * 30), 100 / (4 * 60); an empty class weighs 0.
    torch.testing.assert_close(weights, torch.tensor([2.5, 100 / 120, 100 / 240, 0.0]))


def test_multilabel_loss_smooths_towards_one_half_and_weighs_positives():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    plain = MULTILABEL.training_loss(3)(logits, targets)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(logits, targets))
    smoothed = MULTILABEL.training_loss(3, label_smoothing=0.2)(logits, targets)
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([[0.9, 0.1, 0.9]]))
    torch.testing.assert_close(smoothed, expected)
    # 100 images: a class on 10 of them gets positive weight 9, one on 50 weight 1, none 1.
    weights = torch.from_numpy(MULTILABEL.class_weights(np.array([10, 50, 0]), 100))
    torch.testing.assert_close(weights, torch.tensor([9.0, 1.0, 1.0]))
    weighted = MULTILABEL.training_loss(3, weights=weights)(logits, targets)
    by_hand = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    torch.testing.assert_close(weighted, by_hand)


def test_the_evaluation_report_agrees_with_torchmetrics():
    """The multiclass report computes precision/recall/F1 from a confusion matrix in numpy (no
    torchmetrics import: it pulls in torchvision and torch._dynamo, seconds of start-up)."""
    from torchmetrics.functional.classification import (
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    torch.manual_seed(0)
    labels = torch.randint(0, 5, (300,))
    logits = torch.randn(300, 6)  # class 5 is predicted but never true: a 0/0 recall
    logits[labels == 2, 2] += 3  # class 2 is easy
    names = [f"c{i}" for i in range(6)]
    report = MULTICLASS.report(logits.numpy(), labels.numpy(), names, None)
    preds = logits.argmax(1)
    expected = {
        "precision": multiclass_precision(preds, labels, 6, average=None, zero_division=0),
        "recall": multiclass_recall(preds, labels, 6, average=None, zero_division=0),
        "f1": multiclass_f1_score(preds, labels, 6, average=None, zero_division=0),
    }
    for metric, values in expected.items():
        got = [report["per_class"][name][metric] for name in names]
        np.testing.assert_allclose(got, values.numpy(), atol=1e-6, err_msg=metric)
    assert [report["per_class"][n]["support"] for n in names] == torch.bincount(
        labels, minlength=6
    ).tolist()
    assert report["accuracy"] == pytest.approx(float((preds == labels).float().mean()), abs=1e-6)
    macro = multiclass_f1_score(preds, labels, 6, average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(float(macro), abs=1e-6)


# ---------------------------------------------------------------- multilabel end to end

VERSION = "0.7.0"
BUCKET = "multilabel-releases"


@dataclass(frozen=True)
class Multilabel:
    root: Path
    tags: dict[str, list[str]]  # file_name -> its tags, as metadata.csv lists them
    repro_stderr: str
    seconds: float


def in_project(root: Path, *cmd: str, check: bool = True, **env: str):
    """A command in the project, importing the package from its own src/ (not the fixture's)."""
    return run(*cmd, cwd=root, check=check, PYTHONPATH=str(root / "src"), **env)


@pytest.fixture(scope="module")
def multilabel(trained_project, tmp_path_factory) -> Multilabel:
    root = tmp_path_factory.mktemp("multilabel") / NAME
    shutil.copytree(trained_project.root, root, symlinks=True)
    shutil.rmtree(root / "data" / "raw")
    tags = write_multilabel_pngs(root / "data" / "raw", images=480)
    set_params(root, data__task="multilabel", data__num_classes=3, training__max_epochs=10)
    start = time.perf_counter()
    repro = in_project(root, "dvc", "repro")
    return Multilabel(root, tags, repro.stderr, time.perf_counter() - start)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.e2e
def test_repro_trains_a_multilabel_model_that_finds_separable_tags(multilabel):
    root = multilabel.root
    print(f"\nmultilabel dvc repro: {multilabel.seconds:.1f}s")
    results = json.loads((root / "evaluation_results.json").read_text())
    assert set(results) == {
        "loss", "macro_f1", "micro_f1", "mean_average_precision", "exact_match", "num_samples",
        "accuracy",  # objective.metrics': the (image, class) decisions right at the thresholds
    }  # fmt: skip
    print(f"test set: {results}")
    assert results["macro_f1"] >= 0.8 and results["mean_average_precision"] >= 0.8
    test = pq.ParquetFile(root / "data/processed/test.parquet")
    assert results["num_samples"] == test.metadata.num_rows
    # Multi-hot labels, a byte per class, and the task in the file.
    assert test.schema_arrow.field("label").type == pa.binary(3)
    assert test.schema_arrow.metadata[b"task"] == b"multilabel"
    table = pq.read_table(root / "data/processed/train.parquet")
    hot = {
        name: [tag for tag, byte in zip(MULTILABEL_TAGS, label, strict=True) if byte]
        for name, label in zip(
            table.column("file_name").to_pylist(), table.column("label").to_pylist(), strict=True
        )
    }
    assert hot == {name: multilabel.tags[name] for name in hot}
    per_class = read_csv(root / "plots/per_class.csv")
    assert [row["class"] for row in per_class] == list(MULTILABEL_TAGS)
    assert set(per_class[0]) == {
        "class", "precision", "recall", "f1", "average_precision", "support"
    }  # fmt: skip
    assert all(float(row["f1"]) >= 0.8 for row in per_class)
    # A 2x2 block per class: one row per test image and class.
    confusion = read_csv(root / "plots/confusion.csv")
    assert len(confusion) == 3 * results["num_samples"]
    assert {row["actual"] for row in confusion} == {
        *MULTILABEL_TAGS, *(f"not {tag}" for tag in MULTILABEL_TAGS)
    }  # fmt: skip
    mistakes = (root / "reports/mistakes.csv").read_text().splitlines()
    assert mistakes[0] == "file_name,label,predicted,score"
    # The thresholds, chosen on the validation split, are in the checkpoint DVC tracks.
    saved = checkpoint(root / "models/model.ckpt")
    assert saved["hyper_parameters"]["task"] == "multilabel"
    assert len(saved["thresholds"]) == 3 and all(0 < t < 1 for t in saved["thresholds"])
    assert "thresholds chosen on the validation split" in multilabel.repro_stderr
    report = json.loads((root / "reports/data.json").read_text())
    assert sum(report["images"].values()) == 480
    assert report["per_class"]["sun"]["test"] == sum(
        "sun" in multilabel.tags[name] for name in test.read(["file_name"]).column(0).to_pylist()
    )
    # dvc plots still renders both plots of the evaluate stage.
    shown = json.loads(in_project(root, "dvc", "plots", "show", "--json").stdout)["data"]
    assert {"plots/per_class.csv", "plots/confusion.csv"} <= set(shown)
    (drawn,) = shown["plots/confusion.csv"]
    assert len(drawn["content"]["data"]["values"]) == 3 * results["num_samples"]


@pytest.mark.e2e
def test_sigkilled_streamed_training_resumes_to_the_same_model_and_thresholds(multilabel, tmp_path):
    """Streamed (row groups, 2 workers): the multi-hot targets come through the stream, and a
    SIGKILL mid-run resumes to the weights and thresholds of an uninterrupted streamed run."""
    root = tmp_path / NAME
    shutil.copytree(multilabel.root, root, symlinks=True)
    set_params(
        root,
        runtime__streaming=True,
        runtime__loader_workers=2,
        runtime__checkpoint_every_n_steps=7,  # 6 steps per epoch: mid-epoch checkpoints
    )
    model, resume = root / "models/model.ckpt", root / "checkpoints/last.ckpt"
    train = [sys.executable, "-m", f"{MODULE}.training.train"]
    in_project(root, *train)
    expected = checkpoint(model)
    model.unlink()
    training = subprocess.Popen(
        train,
        cwd=root,
        env=env(PYTHONPATH=str(root / "src")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not resume.exists():
        assert training.poll() is None, "training finished before a resume checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    training.kill()
    training.wait()
    assert training.returncode == -signal.SIGKILL, "training finished before the kill"
    step = checkpoint(resume)["global_step"]
    resumed = in_project(root, *train)
    assert f"step {step}" in resumed.stderr
    actual = checkpoint(model)
    assert actual["thresholds"] == expected["thresholds"]
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name


@pytest.mark.e2e
def test_export_gate_upload_and_predict_give_an_image_all_its_tags(
    multilabel, moto_endpoint, tmp_path
):
    root = tmp_path / NAME
    shutil.copytree(multilabel.root, root, symlinks=True)
    exported = in_project(
        root, "python", "-m", f"{MODULE}.scripts.release", "export-onnx", "--version", VERSION
    )
    assert "labels identical" in exported.stderr
    info = json.loads((root / "releases/model_info.json").read_text())
    saved = checkpoint(root / "models/model.ckpt")
    assert info["task"] == "multilabel" and info["class_names"] == list(MULTILABEL_TAGS)
    assert info["thresholds"] == saved["thresholds"]
    parity = info["parity"]
    print(f"\nparity: {parity}")
    assert parity["task"] == "multilabel" and parity["tolerance_used"] <= 1
    assert parity["ties_flipped"] <= parity["ties"]

    # The release as a user gets it: uploaded (the gate runs again on the exact file), then
    # predicted with in a folder that holds only model.onnx and model_info.json.
    boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)  # fmt: skip
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "multilabel", cwd=root)
    aws = {
        "MODEL_RELEASE_S3_URI": f"s3://{BUCKET}/models/{NAME}",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    in_project(
        root, "python", "-m", f"{MODULE}.scripts.release", "upload-s3", "--version", VERSION, **aws
    )
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    s3 = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    for name in ("model.onnx", "model_info.json"):
        s3.download_file(BUCKET, f"models/{NAME}/{VERSION}/{name}", str(downloaded / name))
    out = tmp_path / "predicted.csv"
    raw = root / "data" / "raw"
    run(
        sys.executable, "-m", f"{MODULE}.serve.predict", raw / "images", "--out", out,
        "--model", downloaded / "model.onnx", cwd=tmp_path,
    )  # fmt: skip
    rows = read_csv(out)
    assert len(rows) == 480
    assert list(rows[0]) == [
        "input", "predicted", "score", *(f"score_{tag}" for tag in MULTILABEL_TAGS)
    ]  # fmt: skip
    got = {Path(row["input"]).relative_to(raw).as_posix(): row for row in rows}
    right = sum(
        sorted(got[name]["predicted"].split()) == sorted(tags)
        for name, tags in multilabel.tags.items()
    )
    print(f"predict: {right}/480 images with exactly their tags")
    assert right >= 0.9 * 480
    # An image with all three tags gets all three, each with its score, most probable first.
    three = next(name for name, tags in multilabel.tags.items() if len(tags) == 3)
    predicted, scores = got[three]["predicted"].split(), got[three]["score"].split()
    assert sorted(predicted) == sorted(MULTILABEL_TAGS)
    assert [float(got[three][f"score_{tag}"]) for tag in predicted] == list(map(float, scores))
    assert list(map(float, scores)) == sorted(map(float, scores), reverse=True)
    none = next(name for name, tags in multilabel.tags.items() if not tags)
    assert got[none]["predicted"] == "" and got[none]["score"] == ""


@pytest.mark.e2e
def test_macro_f1_gates_a_multilabel_promotion_and_the_stage_serves_every_tag(
    multilabel, moto_endpoint, tmp_path
):
    """Two releases of the model, 0.1.0 and 0.2.0, to S3: 0.1.0 is the stage's first version,
    0.2.0 (the same weights) is not worse by macro F1, a difference of 0 on its released test
    split, and is promoted; served from the stage, an image with all three tags gets all three,
    with predict's probabilities."""
    root = tmp_path / NAME
    shutil.copytree(multilabel.root, root, symlinks=True)
    bucket = "multilabel-stages"
    botocore.session.get_session().create_client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)  # fmt: skip
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "multilabel releases", cwd=root)
    aws = {
        "MODEL_RELEASE_S3_URI": f"s3://{bucket}/models/{NAME}",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    release = ("python", "-m", f"{MODULE}.scripts.release")
    for version in ("0.1.0", "0.2.0"):
        in_project(root, *release, "export-onnx", "--version", version)
        in_project(root, *release, "upload-s3", "--version", version, **aws)
    first = in_project(root, *release, "promote", "0.1.0", **aws)
    assert "stage production is empty" in first.stdout
    second = in_project(root, *release, "promote", "0.2.0", **aws)
    assert "macro_f1 on 0.2.0's test split" in second.stdout
    assert "+0.0000  [+0.0000, +0.0000]" in second.stdout
    per_class = [line.split()[0] for line in second.stdout.splitlines() if line.startswith("  ")]
    assert set(MULTILABEL_TAGS) <= set(per_class)
    results = json.loads((root / "evaluation_results.json").read_text())
    stage = json.loads(
        botocore.session.get_session().create_client(
            "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        ).get_object(Bucket=bucket, Key=f"models/{NAME}/stages/production.json")["Body"].read()
    )  # fmt: skip
    comparison = stage["comparison"]
    assert stage["version"] == "0.2.0" and comparison["metric"] == "macro_f1"
    assert abs(comparison["candidate"] - results["macro_f1"]) < 1e-6

    three = next(name for name, tags in multilabel.tags.items() if len(tags) == 3)
    image = root / "data" / "raw" / three
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(image, folder / image.name)
    out = tmp_path / "predicted.csv"
    in_project(root, "python", "-m", f"{MODULE}.serve.predict", folder, "--out", out)
    (expected,) = read_csv(out)
    port = str(free_port())
    server = subprocess.Popen(
        ["python", "-m", f"{MODULE}.serve", "--stage", "production", "--port", port],
        cwd=root, env=env(PYTHONPATH=str(root / "src"), **aws), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_ready(int(port), server)
        answer = post_image(int(port), image.read_bytes()).json()
        assert call(int(port), "GET", "/metadata").json()["thresholds"] == stage_thresholds(root)
    finally:
        code, stderr, _ = stop(server)
    assert code == 0, stderr[-3000:]
    assert sorted(answer["predicted"]) == sorted(MULTILABEL_TAGS)
    assert answer["predicted"] == expected["predicted"].split()
    for tag, probability in answer["probabilities"].items():
        assert abs(probability - float(expected[f"score_{tag}"])) <= 1e-6


def stage_thresholds(root: Path) -> list[float]:
    return json.loads((root / "releases" / "model_info.json").read_text())["thresholds"]
