"""The deploy layer (deploy/), unit by unit, against a real moto server on 127.0.0.1: the object
store on S3, the S3 settings, the job runner on AWS Batch, the choice of store, and the resume
checkpoints that checkpoint_sync keeps there."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import botocore.session
import pytest

from helpers import FAKE_AWS, REPO, set_params
from mlt_project.base.config import load_config
from mlt_project.base.errors import PipelineError
from mlt_project.deploy import configured_store, job_runner, object_store
from mlt_project.deploy.aws.batch import BatchRunner, job_definition, read_definition
from mlt_project.deploy.aws.s3 import S3Store
from mlt_project.deploy.aws.settings import S3Location, require_credentials, s3_location
from mlt_project.scripts import checkpoint_sync

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # of b"abc"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # of b""
SETTINGS = ("DVC_S3_URI", "MODEL_RELEASE_S3_URI", "CHECKPOINT_S3_URI")
OLD_SETTINGS = ("DVC_S3_BUCKET_NAME", "MODEL_RELEASE_S3_BUCKET", "MODEL_RELEASE_S3_PREFIX")
TEMPLATES = REPO / "template_configs"


def no_aws(monkeypatch) -> None:
    """No AWS or S3 setting of the machine running the tests, no ~/.aws, no metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name in SETTINGS + OLD_SETTINGS:
            monkeypatch.delenv(name)
    for name, value in FAKE_AWS.items():
        if not name.startswith(("AWS_ACCESS", "AWS_SECRET")):
            monkeypatch.setenv(name, value)


@pytest.fixture
def aws(moto_endpoint, monkeypatch) -> str:
    """Every client of the package pointed at the moto server, with its fake keys."""
    no_aws(monkeypatch)
    for name, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    return moto_endpoint


def client(endpoint: str, service: str):
    return botocore.session.get_session().create_client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(aws) -> str:
    """A new, empty bucket (the moto server lives as long as the session)."""
    name = f"unit-{uuid.uuid4().hex[:12]}"
    client(aws, "s3").create_bucket(Bucket=name)
    return name


# ---------------------------------------------------------------- the S3 settings


def test_an_s3_setting_is_a_bucket_and_a_prefix(monkeypatch):
    no_aws(monkeypatch)
    monkeypatch.setenv("MODEL_RELEASE_S3_URI", "s3://releases/models/digits/")
    where = s3_location("MODEL_RELEASE_S3_URI", "where releases go")
    assert where == S3Location("releases", "models/digits", "MODEL_RELEASE_S3_URI")
    assert where.key("0.1.0", "model.onnx") == "models/digits/0.1.0/model.onnx"
    assert where.uri("0.1.0/") == "s3://releases/models/digits/0.1.0"
    monkeypatch.setenv("DVC_S3_URI", "s3://dvc-store")
    root = s3_location("DVC_S3_URI", "the DVC remote")
    assert root == S3Location("dvc-store", "", "DVC_S3_URI")
    assert (root.key("files", "md5"), root.uri()) == ("files/md5", "s3://dvc-store/")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gs://releases/models", "DVC_S3_URI='gs://releases/models' is not s3://bucket[/prefix]: fix it"),
        ("s3://", "DVC_S3_URI='s3://' is not s3://bucket[/prefix]: fix it"),
        ("", "DVC_S3_URI is not set (the DVC remote): set it in .env (see .env.example) or the "
             "environment, e.g. s3://my-bucket/mlt-project"),
    ],
    ids=["another-scheme", "no-bucket", "unset"],
)  # fmt: skip
def test_a_bad_or_missing_s3_setting_is_one_line(monkeypatch, value, message):
    no_aws(monkeypatch)
    monkeypatch.setenv("DVC_S3_URI", value)
    with pytest.raises(PipelineError) as error:
        s3_location("DVC_S3_URI", "the DVC remote")
    assert str(error.value) == message


def test_no_credentials_anywhere_is_one_line(monkeypatch):
    no_aws(monkeypatch)
    with pytest.raises(PipelineError) as error:
        require_credentials()
    assert str(error.value) == (
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in .env or the "
        "environment), or AWS_PROFILE, or run where an IAM role applies"
    )


# ---------------------------------------------------------------- which store


def test_object_store_picks_s3_for_an_s3_uri_and_refuses_other_schemes():
    store = object_store("s3://releases/models/digits", "MODEL_RELEASE_S3_URI")
    assert isinstance(store, S3Store)
    assert store.where == S3Location("releases", "models/digits", "MODEL_RELEASE_S3_URI")
    assert store.uri("0.1.0") == "s3://releases/models/digits/0.1.0"
    for uri in ("gs://releases/models", "s3:///models", "releases"):
        with pytest.raises(PipelineError) as error:
            object_store(uri, "MODEL_RELEASE_S3_URI")
        assert (
            str(error.value) == f"MODEL_RELEASE_S3_URI={uri!r} is not s3://bucket[/prefix]: fix it"
        )
    assert isinstance(job_runner(), BatchRunner)


def test_configured_store_with_the_setting_unset(monkeypatch):
    no_aws(monkeypatch)
    assert configured_store("CHECKPOINT_S3_URI", "resume checkpoints", required=False) is None
    with pytest.raises(PipelineError) as error:
        configured_store("CHECKPOINT_S3_URI", "resume checkpoints")
    assert str(error.value) == (
        "CHECKPOINT_S3_URI is not set (resume checkpoints): set it in .env (see .env.example) or "
        "the environment, e.g. s3://my-bucket/mlt-project"
    )
    monkeypatch.setenv("CHECKPOINT_S3_URI", "s3://runs/digits/checkpoints")
    store = configured_store("CHECKPOINT_S3_URI", "resume checkpoints")
    assert store.uri("last.ckpt") == "s3://runs/digits/checkpoints/last.ckpt"


# ---------------------------------------------------------------- S3Store against moto


def test_put_stores_the_sha256_with_the_object_and_checksum_compares_them(bucket, aws, tmp_path):
    store = object_store(f"s3://{bucket}/models/digits", "MODEL_RELEASE_S3_URI")
    store.check()
    (tmp_path / "model.onnx").write_bytes(b"abc")
    store.put("0.1.0/model.onnx", tmp_path / "model.onnx", ABC_SHA256)
    stored = client(aws, "s3").get_object(Bucket=bucket, Key="models/digits/0.1.0/model.onnx")
    assert stored["Body"].read() == b"abc"
    assert stored["Metadata"] == {"sha256": ABC_SHA256}
    assert store.exists("0.1.0/model.onnx")
    assert not store.exists("0.1.0/model.ckpt")
    assert store.checksum("0.1.0/model.onnx") == (ABC_SHA256, ABC_SHA256)
    # Bytes that changed on the way, or a claim that is wrong: the two differ.
    store.put("0.1.0/model.onnx", tmp_path / "model.onnx", EMPTY_SHA256)
    assert store.checksum("0.1.0/model.onnx") == (ABC_SHA256, EMPTY_SHA256)
    store.put_bytes("0.1.0/manifest.json", b"{}\n")
    assert store.get_bytes("0.1.0/manifest.json") == b"{}\n"
    assert store.checksum("0.1.0/manifest.json") == (
        "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356",  # of b"{}\n"
        "",
    )


def test_get_writes_the_whole_object_or_leaves_the_file_as_it_was(bucket, tmp_path):
    store = object_store(f"s3://{bucket}/checkpoints", "CHECKPOINT_S3_URI")
    (tmp_path / "up.ckpt").write_bytes(b"\1" * (3 << 20) + b"end")  # several chunks
    store.put("last.ckpt", tmp_path / "up.ckpt", "unused")
    down = tmp_path / "down" / "last.ckpt"
    store.get("last.ckpt", down)
    assert down.read_bytes() == b"\1" * (3 << 20) + b"end"
    down.write_bytes(b"the local checkpoint")
    with pytest.raises(PipelineError) as error:
        store.get("other.ckpt", down)
    assert str(error.value) == (
        f"S3 GetObject failed on bucket '{bucket}': NoSuchKey: The specified key does not exist."
    )
    assert down.read_bytes() == b"the local checkpoint"
    assert sorted(p.name for p in down.parent.iterdir()) == ["last.ckpt"]


def test_keys_are_those_under_the_stores_prefix_and_delete_removes_one(bucket, aws, tmp_path):
    s3 = client(aws, "s3")
    for key in ("models/0.1.0/a", "models/0.1.0/b", "models/0.2.0/a", "other/0.1.0/a"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = object_store(f"s3://{bucket}/models", "MODEL_RELEASE_S3_URI")
    assert store.keys() == ["0.1.0/a", "0.1.0/b", "0.2.0/a"]
    assert store.keys("0.1.0/") == ["0.1.0/a", "0.1.0/b"]
    assert store.keys("0.3.0/") == []
    store.delete("0.1.0/a")
    store.delete("0.1.0/never-there")  # as S3 does: nothing to delete is no error
    assert store.keys() == ["0.1.0/b", "0.2.0/a"]
    whole = object_store(f"s3://{bucket}", "MODEL_RELEASE_S3_URI")
    assert whole.keys() == ["models/0.1.0/b", "models/0.2.0/a", "other/0.1.0/a"]


def test_a_missing_bucket_is_one_line_naming_the_setting(aws, tmp_path):
    store = object_store("s3://no-such-bucket-here/runs", "CHECKPOINT_S3_URI")
    expected = (
        f"bucket 'no-such-bucket-here' does not exist at {aws}: create it, or fix CHECKPOINT_S3_URI"
    )
    (tmp_path / "last.ckpt").write_bytes(b"abc")
    for call in (
        store.check,
        lambda: store.exists("last.ckpt"),
        lambda: store.put("last.ckpt", tmp_path / "last.ckpt", ABC_SHA256),
        lambda: store.get_bytes("last.ckpt"),
        store.keys,
    ):
        with pytest.raises(PipelineError) as error:
            call()
        assert str(error.value) == expected


# ---------------------------------------------------------------- BatchRunner against moto


@pytest.fixture
def queue(aws) -> str:
    """A job queue on an unmanaged compute environment, as PROJECT.md's AWS setup makes one."""
    name = f"unit-{uuid.uuid4().hex[:12]}"
    iam, batch = client(aws, "iam"), client(aws, "batch")
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=name, type="UNMANAGED", state="ENABLED", serviceRole=role
    )["computeEnvironmentArn"]
    batch.create_job_queue(
        jobQueueName=name,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )
    return name


def test_register_submit_and_status_of_an_array_job(aws, queue):
    runner = BatchRunner()
    definition = {
        "jobDefinitionName": queue,
        "type": "container",
        "containerProperties": {
            "image": "busybox:1",
            "command": ["true"],
            "vcpus": 1,
            "memory": 128,
        },
    }
    first, second = runner.register(definition), runner.register(definition)
    arn = f"arn:aws:batch:us-east-1:123456789012:job-definition/{queue}"
    assert first == {"jobDefinitionName": queue, "revision": 1, "jobDefinitionArn": f"{arn}:1"}
    assert second == {"jobDefinitionName": queue, "revision": 2, "jobDefinitionArn": f"{arn}:2"}
    job_id = runner.submit(
        "shards", queue, queue, array_size=3, environment={"SHARDS": "3", "STAGE": "predict"}
    )
    batch = client(aws, "batch")
    (parent,) = batch.describe_jobs(jobs=[job_id])["jobs"]
    assert parent["arrayProperties"]["size"] == 3
    assert parent["jobDefinition"] == f"{arn}:2"  # the latest revision
    children = batch.describe_jobs(jobs=[f"{job_id}:{i}" for i in range(3)])["jobs"]
    assert sorted(child["jobId"] for child in children) == [f"{job_id}:{i}" for i in range(3)]
    for child in children:
        variables = child["container"]["environment"]
        assert {"name": "SHARDS", "value": "3"} in variables
        assert {"name": "STAGE", "value": "predict"} in variables
    status = runner.status(job_id)
    assert set(status) == {"jobName", "jobId", "status", "statusReason"}
    assert (status["jobName"], status["jobId"]) == ("shards", job_id)
    statuses = {"SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"}
    assert status["status"] in statuses
    single = runner.submit("one", queue, queue)
    (job,) = batch.describe_jobs(jobs=[single])["jobs"]
    assert "arrayProperties" not in job


def test_an_unknown_job_or_queue_is_one_line(aws, queue):
    runner = BatchRunner()
    with pytest.raises(PipelineError) as error:
        runner.status("no-such-job")
    assert str(error.value) == ("no job 'no-such-job' in this account and region: check the job id")
    with pytest.raises(PipelineError) as error:
        runner.submit("x", "no-such-queue", queue)
    assert str(error.value).startswith("AWS Batch SubmitJob failed: ClientException: ")
    assert "\n" not in str(error.value)


def test_job_definition_fills_in_the_image_the_role_and_the_settings_passed_on(
    monkeypatch, tmp_path
):
    no_aws(monkeypatch)
    shutil.copytree(TEMPLATES / "torch-cpu" / "aws", tmp_path / "aws")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHECKPOINT_S3_URI", "s3://runs/digits/checkpoints")
    written = json.loads((tmp_path / "aws" / "batch-job.json").read_text())
    request = job_definition(1, "123.dkr.ecr.us-east-1.amazonaws.com/digits:abc", "arn:role/job")
    container = request["containerProperties"]
    assert container["image"] == "123.dkr.ecr.us-east-1.amazonaws.com/digits:abc"
    assert container["jobRoleArn"] == "arn:role/job"
    assert container["environment"] == [
        *written["containerProperties"].get("environment", []),
        {"name": "CHECKPOINT_S3_URI", "value": "s3://runs/digits/checkpoints"},
    ]  # DVC_S3_URI is unset: not passed on
    multi = job_definition(4, "digits:abc", None)
    assert multi["nodeProperties"]["numNodes"] == 4
    for node in multi["nodeProperties"]["nodeRangeProperties"]:
        assert node["container"]["image"] == "digits:abc"
        assert "jobRoleArn" not in node["container"]


def test_a_missing_or_broken_job_definition_file_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as error:
        read_definition(1)
    assert str(error.value) == "aws/batch-job.json not found: run from the project root"
    (tmp_path / "aws").mkdir()
    (tmp_path / "aws" / "batch-job-multinode.json").write_text('{\n  "type": multinode\n}\n')
    with pytest.raises(PipelineError) as error:
        read_definition(2)
    assert str(error.value) == "aws/batch-job-multinode.json is not valid JSON at line 2: fix it"


# ---------------------------------------------------------------- checkpoint_sync


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """params.yaml with its checkpoints in tmp_path, as the current folder."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(TEMPLATES / "project" / "params.yaml", root / "params.yaml")
    set_params(root, paths__checkpoints=str(root / "checkpoints"))
    monkeypatch.chdir(root)
    return root


def test_without_the_setting_every_command_does_nothing(project, monkeypatch):
    no_aws(monkeypatch)
    cfg = load_config(project / "params.yaml")
    cfg.paths.resume_checkpoint.parent.mkdir()
    cfg.paths.resume_checkpoint.write_bytes(b"abc")
    assert checkpoint_sync.push(cfg) is False
    assert checkpoint_sync.pull(cfg) is False
    checkpoint_sync.clear(cfg)
    assert cfg.paths.resume_checkpoint.read_bytes() == b"abc"


def test_push_pull_clear_round_trip(project, bucket, aws, monkeypatch):
    monkeypatch.setenv("CHECKPOINT_S3_URI", f"s3://{bucket}/digits/checkpoints")
    cfg = load_config(project / "params.yaml")
    local = project / "checkpoints" / "last.ckpt"
    assert cfg.paths.resume_checkpoint == local
    assert checkpoint_sync.push(cfg) is False  # nothing to push yet
    assert checkpoint_sync.pull(cfg) is False  # nothing to pull yet
    local.parent.mkdir()
    local.write_bytes(b"abc")
    assert checkpoint_sync.push(cfg) is True
    s3 = client(aws, "s3")
    stored = s3.get_object(Bucket=bucket, Key="digits/checkpoints/last.ckpt")
    assert (stored["Body"].read(), stored["Metadata"]) == (b"abc", {"sha256": ABC_SHA256})
    local.unlink()
    # The command line, as docker/entrypoint.sh runs it on a retry.
    assert checkpoint_sync.main(["pull"]) == 0
    assert local.read_bytes() == b"abc"
    assert checkpoint_sync.main(["--params", str(project / "params.yaml"), "clear"]) == 0
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert checkpoint_sync.pull(cfg) is False
    assert local.read_bytes() == b"abc"  # a pull with nothing remote leaves the local one
