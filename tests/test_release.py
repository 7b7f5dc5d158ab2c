"""Releases: the release layer unit by unit (version, tag, DVC, upload, publish), then end to end
against real services on loopback: a moto S3 server, real git tags, DVC's S3 remote.

End to end, one copy of the trained project is released once (module fixture), by running the
commands of the project guide's (PROJECT.md) Releases section as written, with every AWS setting
in .env only; the tests then check what the bucket, git and the files hold, and that every bad
input stops with one line and exit 1, leaving no tag and no upload behind. Those tests are marked
e2e one by one: the unit tests above them are not.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import botocore.session
import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import FAKE_AWS, MODULE, NAME, REPO, free_port, git, one_error_line, run, set_params
from mlt_project.base.config import Config, load_config
from mlt_project.base.errors import PipelineError
from mlt_project.release.dvcrepo import dvc, require_fresh_pipeline, stale_stages
from mlt_project.release.publish import check
from mlt_project.release.tag import require_free_tag, tag_message
from mlt_project.release.upload import put_release, release_target
from mlt_project.release.version import resolve_version, tag_name

# === unit tests of the release layer (release/): fast, no trained project =====================

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # of b"abc"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # of b""
TEMPLATE_PARAMS = REPO / "template_configs" / "project" / "params.yaml"


def release_config(version: str) -> Config:
    cfg = load_config(TEMPLATE_PARAMS)
    return dataclasses.replace(cfg, release=dataclasses.replace(cfg.release, version=version))


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A git repository with one commit, as the current folder; git and DVC isolated from the
    user's configuration."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text("release:\n  version: 0.1.0\n")
    git("init", "--quiet", "--initial-branch=main", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "first", cwd=root)
    return root


def test_resolve_version_takes_the_override_then_params(repo):
    assert resolve_version(release_config("0.1.0")) == "0.1.0"
    assert resolve_version(release_config("0.1.0"), "2.0.0rc1") == "2.0.0rc1"
    assert (tag_name("0.1.0"), tag_name("v0.1.0")) == ("v0.1.0", "v0.1.0")


def test_resolve_version_describe_asks_git_for_the_nearest_v_tag(repo):
    cfg = release_config("describe")
    git("tag", "--annotate", "v0.3.0", "--message", "0.3.0", cwd=repo)
    git("tag", "other-9.9", cwd=repo)  # not a release tag: ignored
    assert resolve_version(cfg) == "0.3.0"
    (repo / "train.py").write_text("")
    git("add", "-A", cwd=repo)
    git("commit", "--quiet", "-m", "second", cwd=repo)
    head = git("rev-parse", "--short", "HEAD", cwd=repo)
    assert resolve_version(cfg) == f"0.3.0-1-g{head}"


def test_a_bad_version_or_describe_outside_git_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(PipelineError) as error:
        resolve_version(release_config("0.1.0"), "1.0 beta")
    assert str(error.value) == (
        "release version '1.0 beta' is not usable in a tag or an S3 key: use letters, digits and "
        "'._+-', e.g. 0.1.0"
    )
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as error:
        resolve_version(release_config("describe"))
    assert str(error.value) == "not a git repository: run `git init` and commit the project first"


def test_the_tag_message_holds_the_metrics_and_the_sha256s():
    info = {
        "metrics": {"accuracy": 0.9312, "loss": 0.2104, "macro_f1": 0.93},
        "onnx_sha256": ABC_SHA256,
        "checkpoint_sha256": EMPTY_SHA256,
    }
    assert tag_message("0.1.0", info) == (
        "mlt-project 0.1.0: accuracy 0.9312, loss 0.2104\n\n"
        f"onnx sha256 {ABC_SHA256}\ncheckpoint sha256 {EMPTY_SHA256}\n"
    )


def test_require_free_tag_on_this_commit_or_another(repo):
    first = git("rev-parse", "HEAD", cwd=repo)
    assert require_free_tag("v0.1.0", first) is True
    git("tag", "--annotate", "v0.1.0", "--message", "0.1.0", cwd=repo)
    assert require_free_tag("v0.1.0", first) is False  # a release that stopped after tagging
    (repo / "params.yaml").write_text("release:\n  version: 0.1.0  # same version, new commit\n")
    git("commit", "--quiet", "-am", "second", cwd=repo)
    with pytest.raises(PipelineError) as error:
        require_free_tag("v0.1.0", git("rev-parse", "HEAD", cwd=repo))
    assert str(error.value) == (
        f"tag v0.1.0 already exists (on {first[:12]}): bump release.version in params.yaml "
        "(or pass --version)"
    )


def test_a_failing_dvc_command_is_one_line(repo):
    with pytest.raises(PipelineError) as error:
        dvc("status", "--json", "dvc.yaml")
    message = str(error.value)
    assert message.startswith(
        "dvc status --json failed: ERROR: you are not inside of a DVC repository"
    ), message
    assert "\n" not in message


def test_stale_stages_are_those_dvc_lock_does_not_record(repo):
    (repo / ".dvc").mkdir()
    (repo / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")  # `dvc init --no-scm`
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  prepare:\n    cmd: cp a b\n    deps: [a]\n    outs: [b]\n"
        "  train:\n    cmd: cp b c\n    deps: [b]\n    outs: [c]\n"
    )
    (repo / "a").write_text("data\n")
    assert stale_stages() == ["prepare", "train"]
    with pytest.raises(PipelineError) as error:
        require_fresh_pipeline(False, "the release")
    assert str(error.value) == (
        "the training pipeline is not up to date (prepare, train changed, `dvc status`): the "
        "release would not match the code, params and data of this commit; run `dvc repro` and "
        "commit dvc.lock, or pass --allow-stale"
    )
    require_fresh_pipeline(True, "the release")  # allowed: DVC is not even asked


class Recorder:
    """An ObjectStore that records each call that reads or writes (method, key) and passes it on;
    `tamper`: keys whose upload sends another file's bytes, as a corrupted transfer would."""

    IO = ("check", "exists", "put", "get", "put_bytes", "get_bytes", "checksum", "delete", "keys")

    def __init__(self, store, tamper: dict[str, Path] | None = None) -> None:
        self.store, self.calls, self.tamper = store, [], tamper or {}

    def __getattr__(self, name):
        method = getattr(self.store, name)
        if name not in self.IO:
            return method

        def recorded(*args):
            key = args[0] if args else ""
            self.calls.append((name, key))
            if name == "put" and key in self.tamper:  # other bytes arrive than were sent
                return method(key, self.tamper[key], *args[2:])
            return method(*args)

        return recorded


@pytest.fixture
def release_bucket(moto_endpoint, monkeypatch) -> str:
    """MODEL_RELEASE_S3_URI=s3://<a new bucket>/models on the moto server, keys in the
    environment."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    bucket = f"unit-{uuid.uuid4().hex[:12]}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("MODEL_RELEASE_S3_URI", f"s3://{bucket}/models")
    return bucket


def test_put_release_uploads_verifies_then_writes_the_manifest_last(release_bucket, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    (tmp_path / "params.yaml").write_bytes(b"")
    files = {"model.onnx": tmp_path / "model.onnx", "params.yaml": tmp_path / "params.yaml"}
    git_state = {"git_commit": "c0ffee" * 6 + "c0ff", "git_dirty": False, "git_tag": "v0.1.0"}
    store = Recorder(release_target("0.1.0"))
    manifest = put_release(store, "0.1.0", files, git_state)
    assert store.calls == [
        ("delete", "0.1.0/manifest.json"),  # unreleased first
        ("put", "0.1.0/model.onnx"),
        ("put", "0.1.0/params.yaml"),
        ("checksum", "0.1.0/model.onnx"),
        ("checksum", "0.1.0/params.yaml"),
        ("put_bytes", "0.1.0/manifest.json"),
        ("get_bytes", "0.1.0/manifest.json"),  # read back as written
    ]
    created = manifest.pop("created")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", created), created
    assert manifest == {
        "project": "mlt-project",
        "version": "0.1.0",
        **git_state,
        "objects": {
            "model.onnx": {"sha256": ABC_SHA256, "size": 3},
            "params.yaml": {"sha256": EMPTY_SHA256, "size": 0},
        },
    }
    s3 = s3_client(os.environ["AWS_ENDPOINT_URL"])
    stored = s3.get_object(Bucket=release_bucket, Key="models/0.1.0/model.onnx")
    assert (stored["Body"].read(), stored["Metadata"]) == (b"abc", {"sha256": ABC_SHA256})
    written = s3.get_object(Bucket=release_bucket, Key="models/0.1.0/manifest.json")["Body"]
    assert json.loads(written.read()) == {**manifest, "created": created}


def test_a_file_that_arrives_changed_stops_the_release_before_its_manifest(
    release_bucket, tmp_path
):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    (tmp_path / "truncated").write_bytes(b"")
    store = Recorder(release_target("0.1.0"), tamper={"0.1.0/model.onnx": tmp_path / "truncated"})
    with pytest.raises(PipelineError) as error:
        put_release(store, "0.1.0", {"model.onnx": tmp_path / "model.onnx"}, {})
    assert str(error.value) == (
        f"s3://{release_bucket}/models/0.1.0/model.onnx does not match {tmp_path / 'model.onnx'} "
        f"after upload (sha256 {EMPTY_SHA256}): run the upload again"
    )
    assert ("put_bytes", "0.1.0/manifest.json") not in store.calls
    assert not release_target("0.1.0").exists("0.1.0/manifest.json")  # not released


def test_a_released_version_is_refused_unless_forced(release_bucket, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    put_release(release_target("0.1.0"), "0.1.0", {"model.onnx": tmp_path / "model.onnx"}, {})
    with pytest.raises(PipelineError) as error:
        release_target("0.1.0")
    assert str(error.value) == (
        f"version 0.1.0 is already released at s3://{release_bucket}/models/0.1.0/: bump "
        "release.version in params.yaml, or pass --force to replace it"
    )
    assert release_target("0.1.0", force=True).uri("0.1.0") == (
        f"s3://{release_bucket}/models/0.1.0"
    )
    assert release_target("0.1.1").uri() == f"s3://{release_bucket}/models"


def test_check_refuses_a_dirty_tree_before_anything_else(repo, monkeypatch):
    monkeypatch.delenv("MODEL_RELEASE_S3_URI", raising=False)  # checked later: not reached
    (repo / "params.yaml").write_text("release:\n  version: 0.2.0\n")
    with pytest.raises(PipelineError) as error:
        check(release_config("0.2.0"), "0.2.0")
    assert str(error.value) == (
        "the working tree has uncommitted changes (params.yaml): commit or stash them so the tag "
        "names what was released"
    )
    assert git("tag", "--list", cwd=repo) == ""


# === end to end: a trained project, released ===================================================

BUCKET = "releases"
MANIFEST = "manifest.json"
DVC_BUCKET = "dvc-store"
PREFIX = "models"
VERSION = "0.1.0"
RELEASE_STAGES = {"release/dvc.yaml:export_onnx"}
# The Releases section of the generated PROJECT.md, command by command (comments dropped).
README_RELEASE_STEPS = [
    "cp .env.example .env",
    'git add -A && git commit -m "Release 0.1.0"',
    f"poetry run python -m {MODULE}.scripts.release",
]
RELEASE_OBJECTS = {
    "model.onnx",
    "model.ckpt",
    "model_info.json",
    "evaluation_results.json",
    "params.yaml",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_client(endpoint: str):
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def release_uri(prefix: str = PREFIX) -> str:
    return f"s3://{BUCKET}/{prefix}/{NAME}"


def isolated_env(tmp: Path) -> dict[str, str | None]:
    """No AWS variable from the test runner (the project's .env holds them all), nothing from
    ~/.aws or the instance metadata service; a git identity for the tags and commits."""
    values: dict[str, str | None] = {name: None for name in os.environ if name.startswith("AWS_")}
    return values | {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp / "no-config"),
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }


def fill_in(env_file: Path, **values: str) -> None:
    """Set variables in a copy of .env.example as a user does: on their (maybe commented) lines."""
    lines = env_file.read_text().splitlines()
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if re.fullmatch(rf"#? ?{name}=.*", line)]
        assert found, f"{name} is not in {env_file}"
        lines[found[0]] = f"{name}={value}"
    env_file.write_text("\n".join(lines) + "\n")


def readme_release_steps(root: Path) -> list[str]:
    """The commands of the first code block of the project guide's Releases section."""
    section = (root / "PROJECT.md").read_text().split("\n## Releases\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert block, "no bash block in the Releases section"
    return [line.split("  #")[0].strip() for line in block[1].splitlines() if line.strip()]


def bash(command: str, root: Path, env: dict, check: bool = True):
    # The tests install the project with pip (test_poetry.py covers Poetry), so without
    # `poetry run`; everything else runs as written.
    return run("bash", "-c", command.removeprefix("poetry run "), cwd=root, check=check, **env)


@dataclass(frozen=True)
class Released:
    root: Path
    endpoint: str
    env: dict[str, str | None]
    output: str
    seconds: float
    plain_repro: str
    status_before: dict
    origin: Path


@pytest.fixture(scope="module")
def released(trained_project, moto_endpoint, tmp_path_factory) -> Released:
    """A copy of the trained project, released by PROJECT.md's Releases steps, AWS in .env."""
    tmp = tmp_path_factory.mktemp("release")
    root = tmp / NAME
    shutil.copytree(trained_project.root, root, symlinks=True)
    origin = tmp / "origin.git"
    run("git", "init", "--quiet", "--bare", origin, cwd=tmp)
    git("remote", "add", "origin", str(origin), cwd=root)
    s3_client(moto_endpoint).create_bucket(Bucket=BUCKET)
    variables = isolated_env(tmp)
    copy_env, commit, release_command = readme_release_steps(root)
    assert [copy_env, commit, release_command] == README_RELEASE_STEPS
    bash(copy_env, root, variables)
    fill_in(
        root / ".env",
        MODEL_RELEASE_S3_URI=release_uri(),
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    bash(commit, root, variables)
    plain_repro = run("dvc", "repro", cwd=root).stdout
    status_before = json.loads(run("dvc", "status", "--json", cwd=root).stdout)
    start = time.perf_counter()
    result = bash(release_command, root, variables)
    seconds = time.perf_counter() - start
    return Released(
        root, moto_endpoint, variables, result.stdout + result.stderr, seconds, plain_repro,
        status_before, origin,
    )  # fmt: skip


def release(r: Released, *args: str, check: bool = False, **overrides: str):
    return run(
        "python", "-m", f"{MODULE}.scripts.release", *args, cwd=r.root, check=check,
        **(r.env | overrides),
    )  # fmt: skip


def objects(r: Released, prefix: str) -> dict[str, dict]:
    listing = s3_client(r.endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix) :]: o for o in listing.get("Contents", [])}


def version_prefix(version: str = VERSION, prefix: str = PREFIX) -> str:
    return f"{prefix}/{NAME}/{version}/"


# --- the release flow ----------------------------------------------------------------------


@pytest.mark.e2e
def test_plain_repro_leaves_the_release_alone(released):
    assert "release" not in released.plain_repro
    assert "Data and pipelines are up to date." in released.plain_repro
    # `dvc status` lists the release stages until the first release, and nothing else.
    assert set(released.status_before) == RELEASE_STAGES
    assert json.loads(run("dvc", "status", "--json", cwd=released.root).stdout) == {}


@pytest.mark.e2e
def test_release_pipeline_uploads_every_object_with_its_sha256(released):
    r = released
    for stage in RELEASE_STAGES:
        assert f"Running stage '{stage}'" in r.output
    assert "Running stage 'train'" not in r.output
    assert "deprecated" not in r.output
    client = s3_client(r.endpoint)
    stored = objects(r, version_prefix())
    assert set(stored) == RELEASE_OBJECTS | {"manifest.json"}, "the real environment's bucket"
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key=version_prefix() + "manifest.json")["Body"].read()
    )
    assert set(manifest["objects"]) == RELEASE_OBJECTS
    head = git("rev-parse", "HEAD", cwd=r.root)
    assert (manifest["git_commit"], manifest["git_tag"], manifest["git_dirty"]) == (
        head,
        f"v{VERSION}",
        False,
    )
    local = {
        "model.onnx": "releases/model.onnx",
        "model.ckpt": "models/model.ckpt",
        "model_info.json": "releases/model_info.json",
        "evaluation_results.json": "evaluation_results.json",
        "params.yaml": "params.yaml",
    }
    for name, entry in manifest["objects"].items():
        response = client.get_object(Bucket=BUCKET, Key=version_prefix() + name)
        body = response["Body"].read()
        expected = sha256((r.root / local[name]).read_bytes())
        assert sha256(body) == entry["sha256"] == response["Metadata"]["sha256"] == expected
        assert entry["size"] == len(body)
    # The manifest is written last: a version is released only once all else is there.
    assert stored["manifest.json"]["LastModified"] >= max(
        o["LastModified"] for name, o in stored.items() if name != "manifest.json"
    )

    info = json.loads((r.root / "releases" / "model_info.json").read_text())
    assert info["version"] == VERSION
    assert "git_commit" not in info, "an export that names a commit is stale after the next one"
    assert info["class_names"] == [str(d) for d in range(10)]
    assert info["input"]["shape"] == ["batch", 1, 8, 8]
    assert info["metrics"] == json.loads((r.root / "evaluation_results.json").read_text())
    lock = (r.root / "dvc.lock").read_text()
    assert info["data"]["data/processed"] in lock
    parity = info["parity"]
    assert parity["classes_identical"] and parity["tolerance_used"] <= 1
    # Self-contained: the weights are inside model.onnx, no side file, no temporary left.
    assert sorted(p.name for p in (r.root / "releases").iterdir()) == [
        "model.onnx",
        "model_info.json",
    ]
    assert info["onnx_external_data"] == {}
    graph = onnx.load(r.root / "releases" / "model.onnx", load_external_data=False).graph
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in graph.initializer)
    model = onnx.load(r.root / "releases" / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value, "batch axis is not dynamic"

    timing = re.search(r"uploaded in ([\d.]+)s, verified in ([\d.]+)s", r.output)
    assert timing, r.output[-2000:]
    print(
        f"\nrelease pipeline {r.seconds:.1f}s; export {info['export_seconds']:.2f}s; parity max "
        f"abs diff {parity['max_abs_diff']:.2e} on {parity['samples']} images (logits up to "
        f"{parity['max_logit']:.3g}); upload {timing[1]}s, verify {timing[2]}s"
    )


@pytest.mark.e2e
def test_release_tag_and_model_registry(released):
    r = released
    root = r.root
    head = git("rev-parse", "HEAD", cwd=root)
    assert git("cat-file", "-t", f"v{VERSION}", cwd=root) == "tag"
    assert git("rev-list", "-n", "1", f"v{VERSION}", cwd=root) == head
    accuracy = json.loads((root / "evaluation_results.json").read_text())["accuracy"]
    assert f"accuracy {accuracy}" in git("tag", "-n1", f"v{VERSION}", cwd=root)
    one_error_line(release(r, "create-tag"), f"tag v{VERSION} already exists")
    # The release pushed the tag to origin.
    assert f"pushed tag v{VERSION} to origin" in r.output
    pushed = run("git", "ls-remote", "--tags", r.origin, cwd=root).stdout
    assert f"refs/tags/v{VERSION}" in pushed

    registry = ("python", "-m", f"{MODULE}.scripts.register_model")
    run(*registry, "--tag", "baseline", cwd=root, **r.env)
    name = f"model-baseline-{git('rev-parse', '--short', 'HEAD', cwd=root)}"
    assert git("cat-file", "-t", name, cwd=root) == "tag"
    assert git("rev-list", "-n", "1", name, cwd=root) == head
    message = git("tag", "-l", "--format=%(contents)", name, cwd=root)
    assert f"accuracy {accuracy}" in message and '"macro_f1"' in message
    listed = run(*registry, "list", cwd=root, **r.env).stdout
    assert listed.startswith(name)
    again = run(*registry, "--tag", "baseline", cwd=root, check=False, **r.env)
    one_error_line(again, f"already registered as {name}")


@pytest.mark.e2e
def test_dirty_tree_is_refused(released):
    r = released
    readme = r.root / "README.md"
    original = readme.read_text()
    try:
        readme.write_text(original + "\nan uncommitted line\n")
        one_error_line(
            release(r, "create-tag", "--version", "0.2.0"), "uncommitted changes (README.md)"
        )
        registry = ("python", "-m", f"{MODULE}.scripts.register_model", "--tag", "dirty")
        one_error_line(run(*registry, cwd=r.root, check=False, **r.env), "uncommitted changes")
    finally:
        readme.write_text(original)
    assert git("tag", "-l", "v0.2.0", "model-dirty-*", cwd=r.root) == ""


@pytest.mark.e2e
def test_stale_training_is_refused(released):
    """Metrics of a model the params no longer describe: neither registered nor released."""
    r = released
    params = r.root / "params.yaml"
    original = params.read_text()
    try:
        set_params(r.root, training__max_epochs=7)
        registry = ("python", "-m", f"{MODULE}.scripts.register_model", "--tag", "stale")
        stale = run(*registry, "--allow-dirty", cwd=r.root, check=False, **r.env)
        one_error_line(stale, "training pipeline is not up to date (train changed", "--allow-stale")
        one_error_line(release(r, "check"), "uncommitted changes (params.yaml)")
        registered = run(*registry, "--allow-dirty", "--allow-stale", cwd=r.root, **r.env)
        assert "registered model-stale-" in registered.stdout
    finally:
        params.write_text(original)
        for tag in git("tag", "-l", "model-stale-*", cwd=r.root).split():
            git("tag", "--delete", tag, cwd=r.root)


@pytest.mark.e2e
def test_a_failing_precondition_leaves_no_tag_and_no_upload(released, tmp_path):
    """The next version, exported before its commit: every failed check writes nothing; once
    fixed, the release uses that export as it is (the commit is not part of it), no training."""
    root = tmp_path / NAME
    shutil.copytree(released.root, root, symlinks=True)
    r = dataclasses.replace(released, root=root)
    version = "0.5.0"
    set_params(root, release__version=version)
    run("dvc", "repro", "release/dvc.yaml", cwd=root, **r.env)  # before the commit
    git("commit", "--quiet", "-am", f"Release {version}", cwd=root)
    exported = (root / "releases" / "model_info.json").read_bytes()
    lock = (root / "release" / "dvc.lock").read_bytes()
    (root / "notes.txt").write_text("not committed\n")
    failures = [
        ({}, "uncommitted changes (notes.txt)"),
        ({"MODEL_RELEASE_S3_URI": ""}, "MODEL_RELEASE_S3_URI is not set"),
        ({"MODEL_RELEASE_S3_URI": "s3://no-such-bucket/x"}, "bucket 'no-such-bucket' does not"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "no AWS credentials found"),
    ]
    for overrides, message in failures:
        one_error_line(release(r, **overrides), message)
        (root / "notes.txt").unlink(missing_ok=True)
        assert git("tag", "-l", f"v{version}", cwd=root) == "", message
        assert objects(r, version_prefix(version)) == {}, message
        assert (root / "releases" / "model_info.json").read_bytes() == exported, message
        assert (root / "release" / "dvc.lock").read_bytes() == lock, message
    done = release(r, check=True)
    output = done.stdout + done.stderr
    assert "Running stage" not in output, "exported or trained again"
    uploaded = (
        s3_client(r.endpoint)
        .get_object(Bucket=BUCKET, Key=version_prefix(version) + "model_info.json")["Body"]
        .read()
    )
    assert uploaded == exported
    assert git("rev-list", "-n", "1", f"v{version}", cwd=root) == git("rev-parse", "HEAD", cwd=root)
    # Once released, the same version stops at the checks.
    one_error_line(release(r), f"version {version} is already released")


@pytest.mark.e2e
def test_a_released_version_is_not_replaced(released):
    before = objects(released, version_prefix())
    one_error_line(release(released, "upload-s3"), f"version {VERSION} is already released")
    assert objects(released, version_prefix()) == before


@pytest.mark.e2e
def test_a_perturbed_onnx_file_is_stopped_before_any_upload(released):
    r = released
    path = r.root / "releases" / "model.onnx"
    info_file = r.root / "releases" / "model_info.json"
    original, original_info = path.read_bytes(), info_file.read_bytes()
    try:
        model = onnx.load(path)
        weights = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
        perturbed = onnx.numpy_helper.to_array(weights) + np.float32(0.05)
        weights.CopyFrom(onnx.numpy_helper.from_array(perturbed, weights.name))
        onnx.save(model, path)
        result = release(r, "upload-s3", MODEL_RELEASE_S3_URI=release_uri("perturbed"))
        one_error_line(result, f"{Path('releases/model.onnx')} is not the file export-onnx wrote")
        # With model_info.json claiming the new file, the parity gate still stops it.
        info = json.loads(original_info)
        info["onnx_sha256"] = sha256(path.read_bytes())
        info_file.write_text(json.dumps(info))
        result = release(r, "upload-s3", MODEL_RELEASE_S3_URI=release_uri("perturbed"))
        one_error_line(result, "parity gate failed", "predicts another class")
    finally:
        path.write_bytes(original)
        info_file.write_bytes(original_info)
    assert objects(r, "perturbed/") == {}


@pytest.mark.e2e
def test_benchmark_compares_pytorch_and_onnx_runtime(released, tmp_path):
    out = tmp_path / "benchmark.json"
    run(
        "python", "-m", f"{MODULE}.scripts.export_and_benchmark", "--batch-sizes", "1", "256",
        "--warmup", "10", "--iterations", "50", "--out", out, cwd=released.root,
    )  # fmt: skip
    results = json.loads(out.read_text())
    runs = {(row["runtime"], row["device"]) for row in results["runs"]}
    assert {("pytorch", "cpu"), ("onnxruntime", "cpu")} <= runs
    assert results["parity"]["tolerance_used"] <= 1
    ratios = results["ratios"]["cpu"]
    print(
        f"\nbenchmark (CPU): ORT/PyTorch p50 latency at batch 1 "
        f"{ratios['latency_p50_ort_over_pytorch']:.2f}, throughput at batch 256 "
        f"{ratios['throughput_ort_over_pytorch_at_256']:.2f}; export {results['export_seconds']:.2f}s"
    )


# --- a release works anywhere ---------------------------------------------------------------


def download(r: Released, prefix: str, dest: Path) -> dict:
    """Into the empty folder `dest`, exactly the objects the manifest lists, checked by SHA-256."""
    client = s3_client(r.endpoint)
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + MANIFEST)["Body"].read())
    dest.mkdir()
    for name, entry in manifest["objects"].items():
        body = client.get_object(Bucket=BUCKET, Key=prefix + name)["Body"].read()
        assert sha256(body) == entry["sha256"], f"{name} differs from the manifest"
        (dest / name).write_bytes(body)
    return manifest


def sample_pngs(root: Path, dest: Path, per_class: int = 3) -> Path:
    """A few raw digits of every class, flat in one folder."""
    dest.mkdir()
    for class_dir in sorted((root / "data" / "raw").iterdir()):
        for image in sorted(class_dir.glob("*.png"))[:per_class]:
            shutil.copy(image, dest / f"{class_dir.name}-{image.name}")
    return dest


def predictions_there(folder: Path, images: Path, model: str | None = None) -> str:
    """predict's CSV, run with `folder` as the working directory."""
    where = ["--model", model] if model else []
    out = folder / "predictions.csv"
    run("python", "-m", f"{MODULE}.serve.predict", images, *where, "--out", out, cwd=folder)
    return out.read_text()


@pytest.mark.e2e
def test_a_downloaded_release_predicts_as_the_local_export(released, tmp_path):
    r = released
    images = sample_pngs(r.root, tmp_path / "images")
    downloaded = tmp_path / "downloaded"
    manifest = download(r, version_prefix(), downloaded)
    assert "model.onnx" in manifest["objects"]
    local = predictions_there(r.root, images)
    assert len(local.splitlines()) == 1 + 10 * 3
    assert predictions_there(downloaded, images, "model.onnx") == local
    # model.onnx and model_info.json are all predict needs: no params.yaml, no project.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.onnx", "model_info.json"):
        shutil.copy(downloaded / name, bare / name)
    assert predictions_there(bare, images, "model.onnx") == local


@pytest.mark.e2e
def test_external_data_release_round_trip(released, tmp_path):
    """Weights over the size limit: data files named by content, in the manifest, downloaded."""
    r = released
    root = tmp_path / NAME
    shutil.copytree(r.root, root, symlinks=True)
    copy = dataclasses.replace(r, root=root)
    version = "0.3.0"
    release(copy, "export-onnx", "--version", version, "--max-inline-bytes", "1000", check=True)
    info = json.loads((root / "releases" / "model_info.json").read_text())
    (data_name,) = info["onnx_external_data"]
    data = root / "releases" / data_name
    assert data_name == f"model.{sha256(data.read_bytes())[:12]}.onnx.data"
    assert info["onnx_external_data"][data_name] == sha256(data.read_bytes())
    assert sorted(p.name for p in (root / "releases").iterdir()) == sorted(
        ["model.onnx", "model_info.json", data_name]
    )
    external = release_uri("external")
    release(copy, "upload-s3", "--version", version, check=True, MODEL_RELEASE_S3_URI=external)
    downloaded = tmp_path / "downloaded"
    manifest = download(copy, version_prefix(version, "external"), downloaded)
    assert set(manifest["objects"]) == RELEASE_OBJECTS | {data_name}
    images = sample_pngs(root, tmp_path / "images")
    local = predictions_there(root, images)
    assert predictions_there(downloaded, images, "model.onnx") == local
    # Without its data file the model is not usable: the file really carries the weights.
    (downloaded / data_name).unlink()
    failed = run(
        "python", "-m", f"{MODULE}.serve.predict", images, "--model", "model.onnx", "--out", "p.csv",
        cwd=downloaded, check=False,
    )  # fmt: skip
    one_error_line(failed, "ONNX Runtime cannot load model.onnx")


# --- DVC's S3 remote ----------------------------------------------------------------------


@pytest.mark.e2e
def test_dvc_push_then_pull_with_credentials_only_in_dot_env(released, tmp_path):
    """DVC does not read .env: dvc_remote writes the remote and .env's keys to config.local."""
    r = released
    root = r.root
    s3_client(r.endpoint).create_bucket(Bucket=DVC_BUCKET)
    with (root / ".env").open("a") as env_file:
        env_file.write(f"DVC_S3_URI=s3://{DVC_BUCKET}/{NAME}\n")
    # Not one AWS variable in the environment, and a HOME without ~/.aws.
    home = tmp_path / "home"
    home.mkdir()
    bare = {name: None for name, value in r.env.items() if name.startswith("AWS_")} | {
        "HOME": str(home)
    }
    bare |= {name: None for name in os.environ if name.startswith("AWS_")}
    made = run("python", "-m", f"{MODULE}.scripts.dvc_remote", cwd=root, **bare).stdout
    assert f"s3://{DVC_BUCKET}/{NAME}" in made and "secret_access_key" in made
    config = root / ".dvc" / "config.local"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert "secret_access_key = testing" in config.read_text()
    assert git("status", "--porcelain", "--", ".dvc", cwd=root) == "", "remote config committed"
    tracked = [root / "models" / "model.ckpt", *sorted((root / "data" / "processed").iterdir())]
    before = {p: sha256(p.read_bytes()) for p in tracked}
    start = time.perf_counter()
    run("dvc", "push", cwd=root, **bare)
    pushed = time.perf_counter() - start
    listing = s3_client(r.endpoint).list_objects_v2(Bucket=DVC_BUCKET, Prefix=f"{NAME}/")
    assert listing.get("KeyCount", 0) >= len(tracked)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "data" / "processed")
    (root / "models" / "model.ckpt").unlink()
    start = time.perf_counter()
    run("dvc", "pull", cwd=root, **bare)
    print(f"\ndvc push {pushed:.1f}s, pull {time.perf_counter() - start:.1f}s")
    assert {p: sha256(p.read_bytes()) for p in tracked} == before


# --- batch prediction -----------------------------------------------------------------------


def predict(r: Released, source: Path | str, out: Path, *args: str, check: bool = True):
    return run(
        "python", "-m", f"{MODULE}.serve.predict", source, "--out", out, *args, cwd=r.root, check=check
    )  # fmt: skip


def predicted(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(row["input"], row["predicted"]) for row in csv.DictReader(f)]


@pytest.mark.e2e
def test_predict_agrees_with_eval(released, tmp_path):
    r = released
    evaluated = [
        row["predicted"] for row in csv.DictReader((r.root / "plots/confusion.csv").open())
    ]
    out = tmp_path / "from-parquet.csv"
    predict(r, "data/processed/test.parquet", out)
    assert [label for _, label in predicted(out)] == evaluated
    # Batches smaller than a row group: the same rows, in the same order.
    small = tmp_path / "from-parquet-batches-of-7.csv"
    predict(r, "data/processed/test.parquet", small, "--batch-size", "7")
    assert small.read_text() == out.read_text()
    # The same test images as PNG files: the raw files the split's file_name column names.
    test_split = pq.read_table(r.root / "data/processed/test.parquet", columns=["file_name"])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(test_split.column("file_name").to_pylist()):
        shutil.copy(r.root / "data" / "raw" / name, folder / f"{i:04d}.png")
    out = tmp_path / "from-folder.csv"
    predict(r, folder, out)
    assert [label for _, label in predicted(out)] == evaluated


@pytest.mark.e2e
def test_predict_converts_images_as_training_does_and_names_an_unreadable_one(released, tmp_path):
    r = released
    gray = next((r.root / "data" / "raw" / "7").iterdir())
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(gray, folder / "a-gray.png")
    pixels = np.asarray(Image.open(gray))
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(folder / "b-rgb.png")
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).resize((32, 32)).save(folder / "c-big.jpg")
    out = tmp_path / "mixed.csv"
    predict(r, folder, out)
    rows = dict(predicted(out))
    assert len(rows) == 3
    assert rows[str(folder / "b-rgb.png")] == rows[str(folder / "a-gray.png")]

    (folder / "d-broken.png").write_bytes(b"not a png")
    (folder / "e-broken.jpg").write_bytes(b"")
    result = predict(r, folder, tmp_path / "broken.csv", check=False)
    one_error_line(result, f"cannot read image {folder / 'd-broken.png'}", "--skip-corrupt")
    assert not (tmp_path / "broken.csv").exists()
    # --skip-corrupt: the readable images get their rows, the others one warning with a count.
    skipping = predict(r, folder, tmp_path / "skipped.csv", "--skip-corrupt")
    assert dict(predicted(tmp_path / "skipped.csv")) == rows
    warnings = [line for line in skipping.stderr.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and "skipped 2 unreadable images" in warnings[0]
    assert (
        str(folder / "d-broken.png") in warnings[0] and str(folder / "e-broken.jpg") in warnings[0]
    )


@pytest.mark.e2e
def test_predict_streams_a_folder_larger_than_a_batch_in_order(released, tmp_path):
    r = released
    folder = tmp_path / "ten"
    folder.mkdir()
    raw = sorted((r.root / "data" / "raw").rglob("*.png"))[::37][:10]
    assert len(raw) == 10
    for i, image in enumerate(raw):
        shutil.copy(image, folder / f"{i:02d}.png")
    (folder / "._05.png").write_bytes(b"AppleDouble metadata, not an image")
    whole, batched = tmp_path / "whole.csv", tmp_path / "batched.csv"
    predict(r, folder, whole)
    predict(r, folder, batched, "--batch-size", "4")
    names = [name for name, _ in predicted(batched)]
    assert names == [str(folder / f"{i:02d}.png") for i in range(10)]
    assert batched.read_text() == whole.read_text()


# --- bad input: one line, exit 1, nothing lost ----------------------------------------------


@pytest.mark.e2e
def test_export_without_a_checkpoint(released):
    r = released
    checkpoint = r.root / "models" / "model.ckpt"
    aside = r.root / "model.ckpt.aside"
    checkpoint.rename(aside)
    try:
        one_error_line(release(r, "export-onnx"), "no checkpoint at models/model.ckpt", "dvc repro")
        assert (r.root / "releases" / "model.onnx").is_file(), "the previous export was lost"
    finally:
        aside.rename(checkpoint)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, ["no AWS credentials"]),
        (
            {"MODEL_RELEASE_S3_URI": "s3://no-such-bucket/problems"},
            ["bucket 'no-such-bucket' does not exist"],
        ),
        ({"AWS_ENDPOINT_URL": "closed"}, ["cannot reach S3", "after 3 attempts"]),
        ({"MODEL_RELEASE_S3_URI": ""}, ["MODEL_RELEASE_S3_URI is not set", ".env"]),
    ],
    ids=["no-credentials", "bucket-missing", "endpoint-unreachable", "no-bucket-variable"],
)
def test_upload_problems(released, overrides, fragments):
    if overrides.get("AWS_ENDPOINT_URL") == "closed":
        overrides = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}  # nothing listens
    start = time.perf_counter()
    # An empty variable in the environment still wins over the same name in .env.
    overrides = {"MODEL_RELEASE_S3_URI": release_uri("problems")} | overrides
    result = release(released, "upload-s3", **overrides)
    seconds = time.perf_counter() - start
    one_error_line(result, *fragments)
    assert seconds < 60, f"took {seconds:.0f}s"
    assert objects(released, "problems/") == {}


def write_rgb_pngs(raw: Path, classes: int, per_class: int, size: int) -> None:
    rng = np.random.default_rng(1)
    for label in range(classes):
        folder = raw / f"class-{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3))
            pixels[..., label % 3] += 120 + 30 * (label // 3)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.mark.e2e
def test_a_resnet18_on_own_rgb_images_is_released_and_predicts_anywhere(released, tmp_path):
    """A user's own data (3x32x32 RGB, 4 classes) and a torchvision network, set in params.yaml
    as PROJECT.md says: the pipeline, the project's own tests, a release to S3, and predict in
    an empty folder holding only what the manifest lists."""
    root = tmp_path / NAME
    shutil.copytree(released.root, root, symlinks=True)
    r = dataclasses.replace(released, root=root)
    shutil.rmtree(root / "data" / "raw")
    write_rgb_pngs(root / "data" / "raw", classes=4, per_class=30, size=32)
    set_params(
        root,
        data__image_size=[32, 32],
        data__channels=3,
        data__num_classes=4,
        model__name="resnet18",
        training__max_epochs=2,
        training__batch_size=16,
    )
    run("dvc", "repro", cwd=root)
    results = json.loads((root / "evaluation_results.json").read_text())
    assert (
        results["num_samples"]
        == pq.ParquetFile(root / "data/processed/test.parquet").metadata.num_rows
    )
    tests = run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=root)
    assert "passed" in tests.stdout and "failed" not in tests.stdout
    version = "0.4.0"
    exported = release(r, "export-onnx", "--version", version, check=True)
    assert "classes identical" in exported.stderr
    info = json.loads((root / "releases" / "model_info.json").read_text())
    assert info["parity"]["tolerance_used"] <= 1 and info["parity"]["max_logit"] > 10
    assert info["onnx_external_data"] == {}  # 44.7 MB of weights, inside model.onnx
    resnet = release_uri("resnet")
    release(r, "upload-s3", "--version", version, check=True, MODEL_RELEASE_S3_URI=resnet)
    downloaded = tmp_path / "downloaded"
    manifest = download(r, version_prefix(version, "resnet"), downloaded)
    assert set(manifest["objects"]) == RELEASE_OBJECTS
    images = sample_pngs(root, tmp_path / "images", per_class=5)
    local = predictions_there(root, images)
    assert len(local.splitlines()) == 1 + 4 * 5
    assert predictions_there(downloaded, images, "model.onnx") == local


@pytest.mark.e2e
def test_a_flat_folder_labelled_by_metadata_csv_trains_and_predicts_its_classes(released, tmp_path):
    """PROJECT.md's Bring your own labels: data/raw/images/ and data/raw/metadata.csv, 4 classes
    named in the CSV only; `dvc repro`, an export, and predict names those classes."""
    root = tmp_path / NAME
    shutil.copytree(released.root, root, symlinks=True)
    r = dataclasses.replace(released, root=root)
    raw = root / "data" / "raw"
    shutil.rmtree(raw)
    write_rgb_pngs(raw / "by-class", classes=4, per_class=30, size=8)
    (raw / "images").mkdir()
    names = ["heron", "kestrel", "osprey", "wren"]
    rows = ["file_name,label"]
    for i, path in enumerate(sorted((raw / "by-class").rglob("*.png"))):
        path.rename(raw / "images" / f"{i:04d}.png")
        rows.append(f"images/{i:04d}.png,{names[int(path.parent.name[-1])]}")
    shutil.rmtree(raw / "by-class")
    (raw / "metadata.csv").write_text("\n".join(rows) + "\n")
    set_params(root, data__channels=3, data__num_classes=4)
    run("dvc", "repro", cwd=root)
    per_class = [row["class"] for row in csv.DictReader((root / "plots/per_class.csv").open())]
    assert per_class == names
    assert json.loads((root / "evaluation_results.json").read_text())["accuracy"] >= 0.9
    report = json.loads((root / "reports" / "data.json").read_text())
    assert report["labels_from"] == "data/raw/metadata.csv"
    assert sum(report["images"].values()) == 120
    release(r, "export-onnx", "--version", "0.5.0", check=True)
    out = tmp_path / "predicted.csv"
    predict(r, raw / "images", out)
    labels = dict(row.split(",") for row in rows[1:])
    got = {Path(name).relative_to(raw).as_posix(): label for name, label in predicted(out)}
    assert set(got.values()) == set(names)
    assert sum(got[name] == label for name, label in labels.items()) >= 0.9 * len(labels)
