"""A release served from S3 (serve/fetch.py) against the moto server on 127.0.0.1: --release and
--stage fetch the model, every file checked against the manifest first; what is missing, replaced
or tampered with is one line, and the server never starts on it."""

from __future__ import annotations

import hashlib
import json

import botocore.session
import pytest

from helpers import FAKE_AWS, free_port, one_error_line
from mlt_project.base.errors import PipelineError
from mlt_project.deploy import object_store
from mlt_project.serve.fetch import fetch_model, read_stage, stage_key, staged_version
from serving import call, serve_env, start_server, stop, tiny_release, wait_until_ready

BUCKET = "serve-fetch"
URI = f"s3://{BUCKET}/models/mlt-project"


def s3(endpoint: str):
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(moto_endpoint, tmp_path_factory):
    """Two tiny releases (0.1.0, 0.2.0) uploaded as upload-s3 lays them out, manifest last;
    stages/production.json names 0.1.0."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
            patch.setenv(name, value)
        s3(moto_endpoint).create_bucket(Bucket=BUCKET)
        releases = object_store(URI, "MODEL_RELEASE_S3_URI")
        for version in ("0.1.0", "0.2.0"):
            folder = tmp_path_factory.mktemp(version)
            tiny_release(folder, version=version)
            objects = {}
            for path in sorted(folder.iterdir()):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                releases.put(f"{version}/{path.name}", path, digest)
                objects[path.name] = {"sha256": digest, "size": path.stat().st_size}
            manifest = json.dumps({"version": version, "objects": objects}).encode()
            releases.put_bytes(f"{version}/manifest.json", manifest)
        first = releases.get_bytes("0.1.0/manifest.json")
        record = {"version": "0.1.0", "manifest_sha256": hashlib.sha256(first).hexdigest()}
        releases.put_bytes(stage_key("production"), json.dumps(record).encode())
        yield releases


def aws_env(endpoint: str, **extra: str) -> dict[str, str]:
    return serve_env(**FAKE_AWS, AWS_ENDPOINT_URL=endpoint, MODEL_RELEASE_S3_URI=URI, **extra)


def test_stage_and_release_start_the_server_on_the_version_they_name(
    store, moto_endpoint, tmp_path
):
    for args, version in (
        (["--stage", "production"], "0.1.0"),
        ([], "0.1.0"),  # MODEL_STAGE, as a SageMaker model's Environment says it
        (["--release", f"{URI}/0.2.0/"], "0.2.0"),
    ):
        port = free_port()
        env = aws_env(moto_endpoint, MODEL_STAGE="production")
        process = start_server(*args, cwd=tmp_path, port=port, env=env)
        try:
            wait_until_ready(port, process)
            assert call(port, "GET", "/metadata").json()["version"] == version, args
        finally:
            code, stderr, _ = stop(process)
        assert code == 0, stderr[-2000:]
        assert f"fetched release {version}" in stderr and "sha256 checked" in stderr


def test_what_is_missing_replaced_or_tampered_with_is_refused_in_one_line(
    store, moto_endpoint, tmp_path, monkeypatch
):
    for name, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    assert read_stage(store, "staging") is None
    with pytest.raises(PipelineError, match="no version is promoted to stage 'staging'"):
        staged_version(store, "staging")
    with pytest.raises(PipelineError, match=r"version 9\.9\.9 is not released"):
        fetch_model(store, "9.9.9", tmp_path / "none")
    with pytest.raises(PipelineError, match="is not a usable name"):
        stage_key("../production")
    # A version replaced after its promotion (upload-s3 --force): the stage's manifest sha256
    # no longer matches, and the stage is not served.
    second = store.get_bytes("0.2.0/manifest.json")
    stale = {"version": "0.2.0", "manifest_sha256": "0" * 64}
    store.put_bytes(stage_key("canary"), json.dumps(stale).encode())
    with pytest.raises(PipelineError, match="was replaced after its promotion"):
        staged_version(store, "canary")
    assert hashlib.sha256(second).hexdigest() != stale["manifest_sha256"]

    # A tampered object: the server refuses to start, with one line, and never listens.
    original = store.get_bytes("0.2.0/model.onnx")
    store.put_bytes("0.2.0/model.onnx", original[:-8] + b"tampered")
    try:
        port = free_port()
        process = start_server(
            "--release", f"{URI}/0.2.0", cwd=tmp_path, port=port, env=aws_env(moto_endpoint)
        )
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1
        one_error_line(stderr, f"{URI}/0.2.0/model.onnx has sha256", "refusing to load it")
        assert not list((tmp_path).glob("**/model.onnx")), "the tampered file was kept"
    finally:
        store.put_bytes("0.2.0/model.onnx", original)
    for args, words in (
        (["--release", "s3://serve-fetch/0.1.0"], "is not s3://bucket/prefix/<version>/"),
        (["--stage", "staging"], "no version is promoted to stage 'staging'"),
    ):
        process = start_server(*args, cwd=tmp_path, port=free_port(), env=aws_env(moto_endpoint))
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1
        one_error_line(stderr, words)
