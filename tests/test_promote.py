"""Promotion as a new user meets it: the trained project released to the moto S3 server on
127.0.0.1 (AWS settings in .env only), promoted to production, served from the stage; then a
second, worse release (one epoch) refused with the per-class deltas, and promoted only with
--force and a reason. The stage is read back where other tools read it: `gto show` (GTO, which
DVC installs) and stages/production.json in the bucket."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import botocore.session
import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import MODULE, NAME, VENV_BIN, free_port, git, one_error_line, run, set_params
from serving import call, post_image, stop, wait_until_ready

pytestmark = pytest.mark.e2e

BUCKET = "promotions"
URI = f"s3://{BUCKET}/models/{NAME}"
STAGE_KEY = f"models/{NAME}/stages/production.json"


@dataclass(frozen=True)
class Promoted:
    root: Path
    env: dict[str, str | None]
    endpoint: str
    first: str  # what the first promotion printed


def s3(endpoint: str):
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


def isolated(tmp: Path) -> dict[str, str | None]:
    """No AWS variable of the machine (the project's .env holds them), a git identity."""
    import os

    values: dict[str, str | None] = {
        n: None for n in os.environ if n.startswith(("AWS_", "MODEL_"))
    }
    return values | {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "none"),
        "AWS_CONFIG_FILE": str(tmp / "none"),
        "GIT_AUTHOR_NAME": "Release Manager",
        "GIT_AUTHOR_EMAIL": "rm@example.com",
        "GIT_COMMITTER_NAME": "Release Manager",
        "GIT_COMMITTER_EMAIL": "rm@example.com",
    }


def release_cmd(p: Promoted, *args: str, check: bool = False):
    return run("python", "-m", f"{MODULE}.scripts.release", *args, cwd=p.root, check=check, **p.env)


@pytest.fixture(scope="module")
def promoted(trained_project, moto_endpoint, tmp_path_factory) -> Promoted:
    tmp = tmp_path_factory.mktemp("promote")
    root = tmp / NAME
    shutil.copytree(trained_project.root, root, symlinks=True)
    s3(moto_endpoint).create_bucket(Bucket=BUCKET)
    lines = (root / ".env.example").read_text().splitlines()
    settings = {
        "MODEL_RELEASE_S3_URI": URI,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    for name, value in settings.items():
        (i,) = [n for n, line in enumerate(lines) if line.lstrip("# ").startswith(f"{name}=")]
        lines[i] = f"{name}={value}"
    (root / ".env").write_text("\n".join(lines) + "\n")
    p = Promoted(root, isolated(tmp), moto_endpoint, "")
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "Release 0.1.0", cwd=root)
    release_cmd(p, check=True)
    first = release_cmd(p, "promote", "0.1.0", "--stage", "production", check=True)
    return Promoted(root, p.env, moto_endpoint, first.stdout + first.stderr)


def stage_record(p: Promoted) -> dict:
    return json.loads(s3(p.endpoint).get_object(Bucket=BUCKET, Key=STAGE_KEY)["Body"].read())


def gto_show(p: Promoted) -> dict:
    return json.loads(run(VENV_BIN / "gto", "show", "--json", cwd=p.root).stdout)


def manifest_sha256(p: Promoted, version: str) -> str:
    key = f"models/{NAME}/{version}/manifest.json"
    return hashlib.sha256(
        s3(p.endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    ).hexdigest()


def test_the_first_promotion_records_the_stage_where_gto_and_the_server_read_it(promoted):
    p = promoted
    assert "stage production is empty" in p.first and "no comparison" in p.first
    # The release carries its test split, checksummed like the rest.
    manifest = json.loads(
        s3(p.endpoint)
        .get_object(Bucket=BUCKET, Key=f"models/{NAME}/0.1.0/manifest.json")["Body"]
        .read()
    )
    local = (p.root / "data" / "processed" / "test.parquet").read_bytes()
    assert manifest["objects"]["test.parquet"]["sha256"] == hashlib.sha256(local).hexdigest()
    record = stage_record(p)
    assert record["version"] == "0.1.0" and record["stage"] == "production"
    assert record["manifest_sha256"] == manifest_sha256(p, "0.1.0")
    assert record["promoted_by"] == "Release Manager <rm@example.com>"
    assert (record["comparison"], record["previous"], record["forced"]) == (None, None, False)
    # GTO's tags: registration on the release commit, then the assignment.
    commit = git("rev-parse", "v0.1.0^{commit}", cwd=p.root)
    assert git("rev-parse", f"{NAME}@v0.1.0^{{commit}}", cwd=p.root) == commit
    assert git("rev-parse", f"{NAME}#production#1^{{commit}}", cwd=p.root) == commit
    assert record["git_tag"] == f"{NAME}#production#1"
    shown = gto_show(p)[NAME]
    assert shown["version"] == "v0.1.0" and shown["stage"] == {"production": "v0.1.0"}
    # Promoting it again changes nothing.
    again = release_cmd(p, "promote", "0.1.0", check=True)
    assert "version 0.1.0 is already in stage production" in again.stdout
    assert again.stdout.rstrip().endswith("nothing to do")
    assert git("tag", "--list", f"{NAME}#*", cwd=p.root).split() == [f"{NAME}#production#1"]


def test_serve_stage_production_answers_a_test_image_as_predict_does(promoted, tmp_path):
    p = promoted
    names = pq.read_table(p.root / "data/processed/test.parquet", columns=["file_name"])
    image = p.root / "data" / "raw" / names.column("file_name")[0].as_py()
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(image, folder / image.name)
    out = tmp_path / "predicted.csv"
    run("python", "-m", f"{MODULE}.serve.predict", folder, "--out", out, cwd=p.root)
    with out.open(newline="") as f:
        (expected,) = csv.DictReader(f)
    port = free_port()
    from helpers import env as subprocess_env

    server = subprocess.Popen(
        ["python", "-m", f"{MODULE}.serve", "--stage", "production", "--port", str(port)],
        cwd=p.root, env=subprocess_env(**p.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_ready(port, server)
        answer = post_image(port, image.read_bytes()).json()
        assert call(port, "GET", "/metadata").json()["version"] == "0.1.0"
    finally:
        code, stderr, _ = stop(server)
    assert code == 0, stderr[-3000:]
    assert "fetched release 0.1.0" in stderr
    assert answer["predicted"] == [expected["predicted"]]
    for name, probability in answer["probabilities"].items():
        assert abs(probability - float(expected[f"score_{name}"])) <= 1e-6


def test_a_worse_release_is_refused_with_the_per_class_deltas_until_forced_with_a_reason(promoted):
    p = promoted
    before = stage_record(p)
    set_params(p.root, training__max_epochs=1, release__version="0.2.0")
    run("dvc", "repro", cwd=p.root)
    git("add", "-A", cwd=p.root)
    git("commit", "--quiet", "-m", "Release 0.2.0: one epoch", cwd=p.root)
    release_cmd(p, check=True)
    tags = git("tag", "--list", cwd=p.root)

    refused = release_cmd(p, "promote", "0.2.0", "--stage", "production")
    line = one_error_line(
        refused, "promotion refused: 0.2.0's accuracy is", "below 0.1.0's", among_output=True
    )
    assert "release.promote_tolerance 0" in line and '--force --reason "..."' in line
    out = refused.stdout
    assert "paired bootstrap, 2,000 resamples" in out and "(seed 0)" in out
    table = out.split("per-class F1:", 1)[1].splitlines()[1:]
    per_class = {row.split()[0]: [float(x) for x in row.split()[1:]] for row in table if row}
    assert sorted(per_class) == [str(d) for d in range(10)], out
    for production, candidate, difference in per_class.values():
        assert abs(candidate - production - difference) < 2e-4
    assert stage_record(p) == before and git("tag", "--list", cwd=p.root) == tags

    one_error_line(release_cmd(p, "promote", "0.2.0", "--force"), "--force needs --reason")
    forced = release_cmd(
        p, "promote", "0.2.0", "--force", "--reason", "hotfix: 0.1.0 mislabels night images"
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    record = stage_record(p)
    assert record["version"] == "0.2.0" and record["forced"] is True
    assert record["reason"] == "hotfix: 0.1.0 mislabels night images"
    assert record["previous"] == {"version": "0.1.0", "manifest_sha256": before["manifest_sha256"]}
    comparison = record["comparison"]
    metrics = {
        v: json.loads(git("show", f"v{v}:evaluation_results.json", cwd=p.root))["accuracy"]
        for v in ("0.1.0", "0.2.0")
    }
    # ONNX Runtime on the released split scores each release as evaluate scored it in training.
    assert abs(comparison["candidate"] - metrics["0.2.0"]) < 1e-6
    assert abs(comparison["production"] - metrics["0.1.0"]) < 1e-6
    low, high = comparison["difference_interval"]
    assert low <= comparison["difference"] <= high < 0
    assert (comparison["resamples"], comparison["level"], comparison["seed"]) == (2000, 0.95, 0)
    message = git("tag", "-l", "--format=%(contents)", record["git_tag"], cwd=p.root)
    assert "hotfix: 0.1.0 mislabels night images" in message and "per-class F1" in message
    assert record["git_tag"] == f"{NAME}#production#2"
    shown = gto_show(p)[NAME]
    assert shown["stage"] == {"production": "v0.2.0"} and shown["version"] == "v0.2.0"


def test_a_version_never_released_is_refused_in_one_line(promoted):
    result = release_cmd(promoted, "promote", "9.9.9", "--stage", "production")
    one_error_line(result, "version 9.9.9 is not released", f"{URI}/9.9.9/manifest.json")
    bad_stage = release_cmd(promoted, "promote", "0.1.0", "--stage", "prod uction")
    one_error_line(bad_stage, "stage 'prod uction' is not a usable name")
    assert np.isfinite(stage_record(promoted)["tolerance"])
