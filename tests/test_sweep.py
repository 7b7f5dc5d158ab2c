"""Sweeps on AWS Batch (scripts.sweep), tried as a new user would: a committed and pushed project
with its AWS settings in .env, sweeps submitted to moto's Batch and S3, each array child run here
as the job's own command with AWS_BATCH_JOB_ARRAY_INDEX set (moto runs no job), one child stopped
by SIGTERM, then SIGKILLed, then resumed, one failing for good, and the experiments collected
into `dvc exp show`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch

from helpers import (
    FAKE_AWS,
    MODULE,
    NAME,
    NO_AWS,
    REPO,
    clean_env,
    copy_without_git,
    free_port,
    git,
    one_error_line,
    run,
    set_params,
    sh,
)
from mlt_project.base.errors import PipelineError
from mlt_project.deploy.aws.batch import child_state
from mlt_project.deploy.aws.ecr import image_digest
from mlt_project.deploy.sweep import expand, merge, require_size
from mlt_project.release.sweep import keep_gitlinks, limit_parallel
from mlt_project.release.sweep_child import reason

BUCKET = "sweep-dvc"
REMOTE = f"s3://{BUCKET}/{NAME}"
QUEUE = "sweeps"
# moto keeps Batch, ECR and EC2 per region: another one than test_batch.py's, which counts the
# revisions of the same job definition on the same server.
REGION = "us-west-2"
REPOSITORY = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{NAME}"
CHILD_COMMAND = ["python", "-m", f"{MODULE}.scripts.sweep", "child"]
# Imported at start-up from PYTHONPATH by every process of a child: training stops right after
# writing its first resume checkpoint, until the file STALL_RELEASE names exists, so that the test
# can stop the child there, and the child has time to upload that checkpoint.
STALL_HOOK = """\
import os, sys, time
if os.environ.get("STALL_RELEASE"):
    _replace, _stalled = os.replace, []
    def _replace_then_stall(src, dst, *args, **kwargs):
        result = _replace(src, dst, *args, **kwargs)
        if not _stalled and os.fsdecode(dst).endswith("last.ckpt") and sys.argv[0].endswith(
            "train.py"
        ):
            _stalled.append(True)
            deadline = time.monotonic() + 120
            while not os.path.exists(os.environ["STALL_RELEASE"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return result
    os.replace = _replace_then_stall
"""

pytestmark = pytest.mark.e2e


# --- without a project ---------------------------------------------------------------------------


def test_overrides_expand_with_dvcs_grammar_into_named_experiments():
    experiments = expand("lr", ["training.lr=0.01,0.003", "model.name=mlp,cnn"])
    assert [(e.name, e.describe()) for e in experiments] == [
        ("lr-1", "training.lr=0.01 model.name=mlp"),
        ("lr-2", "training.lr=0.01 model.name=cnn"),
        ("lr-3", "training.lr=0.003 model.name=mlp"),
        ("lr-4", "training.lr=0.003 model.name=cnn"),
    ]
    ranged = expand("e", ["training.max_epochs=range(1,7,2)", "other.yaml:a=1"])
    assert [e.set_params() for e in ranged] == [
        ["training.max_epochs=1", "other.yaml:a=1"],
        ["training.max_epochs=3", "other.yaml:a=1"],
        ["training.max_epochs=5", "other.yaml:a=1"],
    ]
    for name, overrides, message in [
        ("lr", ["model.name=glob(*)"], "Glob override 'model.name=glob(*)' is not supported"),
        ("lr", ["training.lr=range(1"], "-S training.lr=range(1:"),
        ("lr", [], "no -S given"),
        ("a b", ["training.lr=1"], "sweep name 'a b': use 1-64 letters"),
    ]:
        with pytest.raises(PipelineError, match=re.escape(message)):
            expand(name, overrides)
    with pytest.raises(PipelineError, match="4 experiments is more than --max-experiments 3"):
        require_size(experiments, 3)


def test_a_childs_state_merges_the_job_runner_and_its_own_word():
    ran = {"state": "succeeded", "attempt": 2, "metrics": {}}
    assert merge({"state": "failed", "attempts": 1}, ran) == ("succeeded", 2, "")
    failed = {"state": "failed", "attempt": 1, "reason": "error: model.name 'x' is neither"}
    assert merge({"state": "failed", "attempts": 1}, failed) == ("failed", 1, failed["reason"])
    assert merge(None, None) == ("pending", 0, "")
    assert merge({"state": "pending", "attempts": 0}, None) == ("pending", 0, "")
    reclaimed = {"state": "pending", "attempts": 1, "reason": "Host EC2 (instance i-1) terminated."}
    assert merge(reclaimed, {"state": "running", "attempt": 1}) == (
        "pending",
        1,
        "retrying after: Host EC2 (instance i-1) terminated.",
    )
    assert merge({"state": "running", "attempts": 1}, {"state": "interrupted", "attempt": 1}) == (
        "running",
        2,
        "",
    )
    oom = {"state": "failed", "attempts": 1, "reason": "OutOfMemoryError: Container killed"}
    assert merge(oom, {"state": "running", "attempt": 1}) == ("failed", 1, oom["reason"])
    assert merge(None, {"state": "running", "attempt": 1}) == ("running", 1, "")
    assert reason(["a", "error: the stage's own line", "ERROR: failed to reproduce"]) == (
        "error: the stage's own line"
    )
    # Batch's words for its children, as the job runner gives them.
    reclaim = {"statusReason": "Host EC2 (instance i-1) terminated.", "container": {}}
    assert child_state({"status": "RUNNABLE", "attempts": [reclaim]}) == {
        "state": "pending",
        "attempts": 1,
        "reason": "Host EC2 (instance i-1) terminated.",
    }
    killed = {"container": {"reason": "OutOfMemoryError: Container killed", "exitCode": 137}}
    assert child_state({"status": "FAILED", "attempts": [killed]})["reason"] == (
        "OutOfMemoryError: Container killed"
    )
    assert child_state({"status": "FAILED", "attempts": [{"container": {"exitCode": 1}}]}) == {
        "state": "failed",
        "attempts": 1,
        "reason": "exit code 1",
    }


def test_max_parallel_is_what_the_queue_allows_since_an_array_has_no_cap(caplog):
    limit_parallel("q", 8, at_once=2, max_parallel=2, size=4)  # the queue runs 2 at most
    limit_parallel("q", 8, at_once=8, max_parallel=3, size=3)  # never more than 3 children
    with pytest.raises(PipelineError, match=r"runs up to 8 children of 8 vCPUs at once, more "):
        limit_parallel("q", 8, at_once=8, max_parallel=2, size=4)
    limit_parallel("q", 8, at_once=None, max_parallel=2, size=4)  # an unmanaged environment
    assert "--max-parallel 2 is not enforced" in caplog.text


def test_an_experiment_commit_that_dropped_the_submodule_gets_it_back(tmp_path, monkeypatch):
    """DVC commits an experiment run in a clone as if the unchecked-out submodule were deleted."""
    link = "160000,13f0836f9e74b5f04e3ead3e88ccb8681665d3ff,.ml-aws-template"
    git("init", "--quiet", cwd=tmp_path)
    git("update-index", "--add", "--cacheinfo", link, cwd=tmp_path)
    git("commit", "--quiet", "-m", "baseline", cwd=tmp_path)
    baseline = git("rev-parse", "HEAD", cwd=tmp_path)
    git("rm", "--quiet", "--cached", ".ml-aws-template", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    git("add", "params.yaml", cwd=tmp_path)
    git("commit", "--quiet", "-m", "dvc: commit experiment 1a2b", cwd=tmp_path)
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/lr-1"
    git("update-ref", ref, "HEAD", cwd=tmp_path)
    before = git("log", "-1", "--format=%an %ae %aI %s %P", ref, cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    fixed = keep_gitlinks(ref, baseline)
    assert git("rev-parse", ref, cwd=tmp_path) == fixed
    assert git("ls-tree", "--name-only", ref, cwd=tmp_path).split() == [
        ".ml-aws-template",
        "params.yaml",
    ]
    assert git("log", "-1", "--format=%an %ae %aI %s %P", ref, cwd=tmp_path) == before
    assert keep_gitlinks(ref, baseline) == fixed  # nothing lost: left as it is


def test_ecr_digests_are_read_only_for_ecr_images():
    pinned = f"{REPOSITORY}@sha256:{'a' * 64}"
    assert image_digest(pinned) == f"sha256:{'a' * 64}"  # no request: the URI pins it
    assert image_digest("python:3.12-slim") is None


def test_the_child_imports_no_torch_before_its_experiment_runs():
    """The child receives Spot's SIGTERM: it passes it on at once, with no framework to load."""
    code = (
        "import sys, mlt_project.scripts.sweep, mlt_project.release.sweep_child, "
        "mlt_project.release.sweep, mlt_project.deploy.sweep, mlt_project.deploy.aws.batch; "
        "print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src_templates")),
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


# --- a project on moto's S3, ECR and Batch -------------------------------------------------------


@dataclass(frozen=True)
class Project:
    root: Path  # the user's repository
    image: Path  # the project as the image holds it: the children's working folder
    endpoint: str
    baseline: str
    image_uri: str
    digest: str
    hook: Path  # the folder of STALL_HOOK's sitecustomize.py


def clients(endpoint: str, *services: str):
    import boto3

    settings = {"endpoint_url": endpoint, "region_name": REGION, **FAKE_KEYS}
    return [boto3.client(service, **settings) for service in services]


FAKE_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def spot_queue(endpoint: str) -> None:
    """A Spot compute environment of 16 vCPUs (2 children of 8 at once) and its job queue."""
    batch, ec2, iam = clients(endpoint, "batch", "ec2", "iam")
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="sweeps", Description="s", VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName="sweeps-service", AssumeRolePolicyDocument="{}")["Role"]
    profile = iam.create_instance_profile(InstanceProfileName="sweeps-instance")
    environment = batch.create_compute_environment(
        computeEnvironmentName="sweeps-spot",
        type="MANAGED",
        state="ENABLED",
        serviceRole=role["Arn"],
        computeResources={
            "type": "SPOT",
            "minvCpus": 0,
            "maxvCpus": 16,
            "desiredvCpus": 0,
            "instanceTypes": ["c7i.2xlarge"],
            "subnets": [subnet],
            "securityGroupIds": [group],
            "instanceRole": profile["InstanceProfile"]["Arn"],
            "bidPercentage": 100,
            "spotIamFleetRole": role["Arn"],
        },
    )
    batch.create_job_queue(
        jobQueueName=QUEUE,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}
        ],
    )


def fill_in(env_file: Path, **values: str) -> None:
    """Set variables in a copy of .env.example as a user does: on their (maybe commented) lines."""
    lines = env_file.read_text().splitlines()
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if re.fullmatch(rf"#? ?{name}=.*", line)]
        assert found, f"{name} is not in {env_file}"
        lines[found[0]] = f"{name}={value}"
    env_file.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def project(trained_project, moto_endpoint, tmp_path_factory) -> Project:
    """The trained project committed with a tiny baseline (2 epochs, a narrow cnn, a resume
    checkpoint every 5 of the 20 steps an epoch), its data pushed, its image in ECR and its job
    definition registered: what PROJECT.md asks before a sweep."""
    tmp = tmp_path_factory.mktemp("sweep")
    root = tmp / NAME
    shutil.copytree(trained_project.root, root, symlinks=True)
    (s3,) = clients(moto_endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    spot_queue(moto_endpoint)
    shutil.copy(root / ".env.example", root / ".env")
    fill_in(
        root / ".env",
        DVC_S3_URI=REMOTE,
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        BATCH_JOB_QUEUE=QUEUE,
    )
    set_params(
        root,
        training__max_epochs=2,
        model__cnn__width=8,
        model__cnn__blocks=2,
        runtime__checkpoint_every_n_steps=5,
    )
    git("add", "-A", cwd=root)
    git("commit", "--quiet", "-m", "A tiny baseline to sweep", cwd=root)
    baseline = git("rev-parse", "HEAD", cwd=root)
    remote = sh(sys.executable, "-m", f"{MODULE}.scripts.dvc_remote", cwd=root, **NO_AWS)
    assert remote.returncode == 0, remote.stderr
    run("dvc", "push", "--quiet", cwd=root, **NO_AWS)
    # docker/build_and_push.sh tags the image with the commit; ECR gives it a digest.
    (ecr,) = clients(moto_endpoint, "ecr")
    ecr.create_repository(repositoryName=NAME)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"digest": f"sha256:{'1' * 64}"},
        "layers": [],
    }
    pushed = ecr.put_image(
        repositoryName=NAME, imageManifest=json.dumps(manifest), imageTag=baseline
    )
    image_uri = f"{REPOSITORY}:{baseline}"
    registered = sh(
        sys.executable, "-m", f"{MODULE}.scripts.batch", "register", "--image", image_uri,
        cwd=root, **NO_AWS,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_HOOK)
    image = copy_without_git(root, tmp / "image")
    (image / ".env").unlink()  # .dockerignore keeps it out of the image
    digest = pushed["image"]["imageId"]["imageDigest"]
    return Project(root, image, moto_endpoint, baseline, image_uri, digest, hook)


def sweep_cli(root: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The command as the user runs it in the project (AWS settings from .env only)."""
    return sh(sys.executable, "-m", f"{MODULE}.scripts.sweep", *args, cwd=root, **NO_AWS, **extra)


def submit(project: Project, name: str, *args: str, **extra: str) -> dict:
    """Submit; the Batch job moto recorded."""
    submitted = sweep_cli(project.root, "submit", "--name", name, *args, **extra)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"submitted sweep \S+ to \S+: job (\S+),", submitted.stdout)[1]
    (batch,) = clients(project.endpoint, "batch")
    (job,) = batch.describe_jobs(jobs=[job_id])["jobs"]
    return {**job, "stdout": submitted.stdout, "stderr": submitted.stderr}


def child_env(project: Project, job: dict, index: int, attempt: int, **extra: str) -> dict:
    """What Batch gives a child: the job's variables, its array index and attempt, a role's
    credentials (here moto's keys), and the image's PYTHONPATH (with the stall hook)."""
    given = {
        v["name"]: v["value"]
        for v in job["container"]["environment"]
        if not v["name"].startswith("AWS_BATCH_")  # moto adds every child's job id here
    }
    return clean_env(
        **{
            **FAKE_AWS,
            "AWS_DEFAULT_REGION": REGION,
            **given,
            "AWS_ENDPOINT_URL": project.endpoint,
            "AWS_BATCH_JOB_ARRAY_INDEX": str(index),
            "AWS_BATCH_JOB_ATTEMPT": str(attempt),
            "PYTHONPATH": f"{project.hook}{os.pathsep}{project.image / 'src'}",
            **extra,
        }
    )


@dataclass
class Child:
    """A child running as a subprocess; its output goes to files (a pipe nobody reads would fill
    up and stop it while the test waits for an upload)."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def output(self) -> tuple[str, str]:
        self.process.wait(timeout=600)
        return self.out.read_text(), self.err.read_text()


def start_child(
    project: Project, job: dict, index: int, attempt: int, workdir: Path, **extra: str
) -> Child:
    """The job's own command, as Batch runs it in the image's working folder."""
    logs = workdir.parent / f"{workdir.name}.out", workdir.parent / f"{workdir.name}.err"
    with logs[0].open("wb") as out, logs[1].open("wb") as err:
        process = subprocess.Popen(
            [*job["container"]["command"], "--workdir", str(workdir), "--sync-every", "0.2"],
            cwd=project.image,
            env=child_env(project, job, index, attempt, **extra),
            stdout=out,
            stderr=err,
        )
    return Child(process, *logs)


def run_child(project: Project, job: dict, index: int, attempt: int, tmp: Path):
    """Run a child to its end: (exit code, stdout, stderr)."""
    child = start_child(project, job, index, attempt, tmp / f"child-{index}-{attempt}")
    out, err = child.output()
    return child.process.returncode, out, err


def s3_object(project: Project, key: str) -> dict | None:
    (s3,) = clients(project.endpoint, "s3")
    try:
        return s3.head_object(Bucket=BUCKET, Key=f"{NAME}/{key}")
    except s3.exceptions.ClientError:
        return None


def wait_for_new_upload(project: Project, key: str, child: Child, before: str | None) -> None:
    deadline = time.monotonic() + 300
    while (s3_object(project, key) or {}).get("ETag") == before:
        code = child.process.poll()
        assert code is None, f"the child exited {code}: {child.err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{key} was not uploaded"
        time.sleep(0.1)


def kill_everything(child: Child) -> None:
    """A lost instance: the child, DVC and training (in a session of their own) at once."""
    pid = child.process.pid
    family = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    child.process.wait()


def read_s3_json(project: Project, key: str) -> dict:
    (s3,) = clients(project.endpoint, "s3")
    return json.loads(s3.get_object(Bucket=BUCKET, Key=f"{NAME}/{key}")["Body"].read())


def shown(project: Project) -> dict[str, dict]:
    """`dvc exp show --json`: {experiment name: {"params": params.yaml, "metrics": metrics}}."""
    listing = json.loads(run("dvc", "exp", "show", "--json", cwd=project.root, **NO_AWS).stdout)
    return {
        rev["name"]: {
            "params": rev["data"]["params"]["params.yaml"]["data"],
            "metrics": rev["data"]["metrics"]["evaluation_results.json"]["data"],
        }
        for baseline in listing
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
        if rev.get("name")
    }


def refs(project: Project) -> str:
    return git("for-each-ref", "--format=%(objectname) %(refname)", cwd=project.root)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def failing_sweep(project) -> dict:
    """A sweep of two, one of which names a network that does not exist."""
    return submit(project, "bad-net", "-S", "model.name=mlp,nosuchnet")


# --- submit refuses, each with one line ----------------------------------------------------------


@pytest.fixture
def in_project(project, monkeypatch, capsys):
    """scripts.sweep's main() run in this process, in the project, with .env's settings and no
    others (quicker than a process per case; the acceptance runs the command itself)."""
    from dotenv import dotenv_values

    from mlt_project.scripts.sweep import main

    for name in list(os.environ):
        if name.startswith(("AWS_", "BATCH_", "DVC_S3", "SWEEP_")):
            monkeypatch.delenv(name)
    for name, value in {**NO_AWS, **dotenv_values(project.root / ".env")}.items():
        monkeypatch.setenv(name, value or "")
    monkeypatch.chdir(project.root)

    def submit(*args: str, **env: str) -> str:
        """The one error line of a refused `submit`."""
        with monkeypatch.context() as changed:
            for name, value in env.items():
                changed.setenv(name, value)
            code = main(["submit", *args])
        err = capsys.readouterr().err
        assert code == 1, err
        return one_error_line(err, among_output=True)

    return submit


def test_submit_refuses_each_bad_case_in_one_line(project, failing_sweep, in_project):
    root = project.root
    assert "bad-net-2  model.name=nosuchnet" in failing_sweep["stdout"]
    cases = [
        (["-S", "training.lr=range(0,1,0.001)"], {}, "more than --max-experiments 32"),
        (["-S", "training.lr=1,2,3", "--max-experiments", "2"], {}, "pass --max-experiments 3"),
        (["-S", "model.name=glob(*)"], {}, "Glob override"),
        (["-S", "training.lr=1"], {"BATCH_JOB_QUEUE": ""}, "no job queue"),
        (["-S", "training.lr=1"], {"DVC_S3_URI": ""}, "DVC_S3_URI is not set"),
        (["-S", "training.lr=1", "--name", "bad-net"], {}, "sweep 'bad-net' exists already"),
        (["-S", "training.lr=1,2,3", "--max-parallel", "1"], {}, "runs up to 2 children"),
        (["-S", "training.lr=1"], {"DVC_S3_URI": f"s3://{BUCKET}/x"}, "no DVC remote points at"),
    ]
    for args, env, message in cases:
        assert message in in_project(*args, **env)
    (root / "notes.txt").write_text("uncommitted")
    try:
        assert "uncommitted changes (notes.txt)" in in_project("-S", "training.lr=1")
    finally:
        (root / "notes.txt").unlink()
    # A remote that lacks the baseline's data, which the children would pull.
    config = root / ".dvc" / "config.local"
    kept = config.read_text()
    empty = f"s3://{BUCKET}/empty"
    config.write_text(
        f"{kept}['remote \"empty\"']\n    url = {empty}\n    endpointurl = {project.endpoint}\n"
    )
    try:
        line = in_project("-S", "training.lr=1", DVC_S3_URI=empty)
        assert "is not all in the remote 'empty'" in line and "run `dvc push`" in line
    finally:
        config.write_text(kept)
    # No job definition registered (here: the one there was, deregistered).
    (batch,) = clients(project.endpoint, "batch")
    (definition,) = [
        d
        for d in batch.describe_job_definitions(jobDefinitionName=f"{NAME}-train")["jobDefinitions"]
        if d["status"] == "ACTIVE"
    ]
    batch.deregister_job_definition(jobDefinition=definition["jobDefinitionArn"])
    try:
        line = in_project("-S", "training.lr=1", "--name", "x")
        assert f"no job definition '{NAME}-train'" in line and "batch register" in line
    finally:
        from mlt_project.scripts.batch import main as batch_main

        assert batch_main(["register", "--image", project.image_uri]) == 0
    listed = sweep_cli(root, "list")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["bad-net"], listed.stderr
    assert git("status", "--porcelain", cwd=root) == ""


# --- a child that fails for good -----------------------------------------------------------------


def test_a_child_that_fails_for_good_is_reported_and_the_others_are_collected(
    project, failing_sweep, tmp_path
):
    code, _, stderr = run_child(project, failing_sweep, 1, 1, tmp_path)
    line = one_error_line(stderr, "experiment bad-net-2 failed", among_output=True)
    assert "error: model.name 'nosuchnet' is neither a network" in line
    assert code == 1  # not 75: the job definition's retry strategy does not retry it
    code, _, stderr = run_child(project, failing_sweep, 0, 1, tmp_path)
    assert code == 0, stderr[-3000:]

    status = sweep_cli(project.root, "status", "bad-net")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert "1 succeeded, 1 failed" in lines[0]
    assert re.search(r"bad-net-1 +succeeded +attempt 1 +model.name=mlp +loss=", lines[1])
    assert re.search(
        r"bad-net-2 +failed +attempt 1 +model.name=nosuchnet +error: model.name", lines[2]
    )
    # Batch out of reach (as for a user not allowed to describe jobs): the children's word alone.
    unreachable = f"http://127.0.0.1:{free_port()}"
    blind = sweep_cli(project.root, "status", "bad-net", AWS_ENDPOINT_URL_BATCH=unreachable)
    assert blind.returncode == 0, blind.stderr
    assert "the children's own records only" in blind.stderr
    assert blind.stdout.splitlines()[1:] == lines[1:]

    collected = sweep_cli(project.root, "collect", "bad-net")
    assert collected.returncode == 0, collected.stderr
    assert "bad-net-1  collected" in collected.stdout
    assert "bad-net-2  failed (attempt 1): error: model.name 'nosuchnet'" in collected.stdout
    experiments = shown(project)
    assert "bad-net-2" not in experiments
    assert experiments["bad-net-1"]["params"]["model"]["name"] == "mlp"
    assert 0.5 < experiments["bad-net-1"]["metrics"]["accuracy"] <= 1


# --- the acceptance: 2 learning rates x 2 networks -------------------------------------------------


def test_a_sweep_of_four_on_batch_survives_spot_and_comes_back_into_dvc_exp_show(project, tmp_path):
    root = project.root
    sweep = ["-S", "training.lr=0.01,0.003", "-S", "model.name=mlp,cnn"]
    dry = sweep_cli(root, "submit", "--name", "lr-net", *sweep, "--dry-run")
    assert "--dry-run: nothing submitted" in dry.stdout, dry.stderr
    assert s3_object(project, "sweeps/lr-net/sweep.json") is None

    job = submit(project, "lr-net", *sweep, "--max-parallel", "2")
    listed = [line.split(None, 1) for line in job["stdout"].splitlines() if line.startswith("  ")]
    assert listed == [
        ["lr-net-1", "training.lr=0.01 model.name=mlp"],
        ["lr-net-2", "training.lr=0.01 model.name=cnn"],
        ["lr-net-3", "training.lr=0.003 model.name=mlp"],
        ["lr-net-4", "training.lr=0.003 model.name=cnn"],
    ]
    # One array job of 4 on the project's job definition, running the child command.
    assert job["arrayProperties"]["size"] == 4
    assert re.search(rf"job-definition/{NAME}-train:\d+$", job["jobDefinition"])
    assert job["jobQueue"].endswith(f"job-queue/{QUEUE}")
    assert job["container"]["command"] == CHILD_COMMAND
    variables = {v["name"]: v["value"] for v in job["container"]["environment"]}
    assert variables["SWEEP_URI"] == f"{REMOTE}/sweeps/lr-net"
    assert variables["DVC_S3_URI"] == REMOTE
    record = read_s3_json(project, "sweeps/lr-net/sweep.json")
    assert record["baseline"] == project.baseline
    assert (record["image"], record["image_digest"]) == (project.image_uri, project.digest)
    assert record["job_id"] == job["jobId"]
    assert [e["params"] for e in record["experiments"]][1] == {
        "params.yaml": ["training.lr=0.01", "model.name=cnn"]
    }
    assert s3_object(project, "sweeps/lr-net/baseline.bundle")

    # The first child, then a collect while the others have not run.
    code, _, stderr = run_child(project, job, 0, 1, tmp_path)
    assert code == 0, stderr[-3000:]
    early = sweep_cli(root, "collect", "lr-net")
    assert "lr-net-1  collected" in early.stdout and "3 not finished" in early.stdout, early.stderr

    # The second child: a Spot reclaim's SIGTERM, then a lost instance, then a full run.
    checkpoint = "sweeps/lr-net/children/lr-net-2/last.ckpt"
    release = tmp_path / "release"
    child = start_child(project, job, 1, 1, tmp_path / "c1", STALL_RELEASE=str(release))
    wait_for_new_upload(project, checkpoint, child, None)
    child.process.send_signal(signal.SIGTERM)  # Batch signals the container's first process
    time.sleep(1)  # passed on to training, stalled after its step-5 checkpoint
    release.touch()
    out, err = child.output()
    assert child.process.returncode == 75, err[-3000:]
    stopped = int(re.search(r"SIGTERM: saved checkpoints/last.ckpt at epoch 0, step (\d+)", out)[1])
    state = read_s3_json(project, "sweeps/lr-net/results/lr-net-2/status.json")
    assert (state["state"], state["attempt"]) == ("interrupted", 1)
    before = s3_object(project, checkpoint)["ETag"]
    release.unlink()
    child = start_child(project, job, 1, 2, tmp_path / "c2", STALL_RELEASE=str(release))
    wait_for_new_upload(project, checkpoint, child, before)  # its next periodic checkpoint
    kill_everything(child)
    assert f"resuming from checkpoints/last.ckpt: epoch 0, step {stopped}" in child.output()[0]
    code, out, err = run_child(project, job, 1, 3, tmp_path)
    assert code == 0, err[-3000:]
    lost = int(re.search(r"resuming from checkpoints/last.ckpt: epoch 0, step (\d+)", out)[1])
    assert lost > stopped and lost % 5 == 0  # the periodic checkpoint uploaded before the kill
    assert s3_object(project, checkpoint) is None  # done: nothing left to resume

    # The last two at once, as Batch would run them.
    children = [start_child(project, job, i, 1, tmp_path / f"child-{i}-1") for i in (2, 3)]
    for child in children:
        _, err = child.output()
        assert child.process.returncode == 0, err[-3000:]

    status = sweep_cli(root, "status", "lr-net")
    assert "4 succeeded, 0 failed, 0 running" in status.stdout, status.stderr
    assert re.search(
        r"lr-net-2 +succeeded +attempt 3 +training.lr=0.01 model.name=cnn", status.stdout
    )

    # The uninterrupted run to compare the resumed child with: --local runs the same experiment.
    reference = ["--name", "ref", "-S", "training.lr=0.01", "-S", "model.name=cnn"]
    dry = sweep_cli(root, "submit", "--local", "--dry-run", *reference)
    assert "ref-1  training.lr=0.01 model.name=cnn" in dry.stdout, dry.stderr
    assert "--dry-run: nothing queued" in dry.stdout
    assert "ref-1" not in run("dvc", "queue", "status", cwd=root, **NO_AWS).stdout
    local = sweep_cli(root, "submit", "--local", *reference)
    assert local.returncode == 0, local.stderr[-3000:]
    assert "all 1 experiment(s) ran" in local.stdout
    run("dvc", "exp", "apply", "ref-1", cwd=root, **NO_AWS)
    expected = weights(root / "models" / "model.ckpt")

    # Collect the rest; the experiments' outputs come from the DVC remote into an empty cache.
    cache = root / ".dvc" / "cache"
    shutil.rmtree(cache)
    collected = sweep_cli(root, "collect", "lr-net")
    assert "collected 3 experiment(s) of sweep lr-net (1 already here)" in collected.stdout
    assert "file(s) of their outputs from the DVC remote" in collected.stdout, collected.stderr

    def state() -> tuple:
        files = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
        return refs(project), git("status", "--porcelain", cwd=root), files

    before = state()
    again = sweep_cli(root, "collect", "lr-net")
    assert "nothing new from sweep lr-net (4 already here)" in again.stdout, again.stderr
    assert "of their outputs" not in again.stdout
    assert state() == before

    listed = shown(project)
    experiments = {k: v for k, v in listed.items() if k.startswith("lr-net-")}
    assert {
        name: (e["params"]["training"]["lr"], e["params"]["model"]["name"])
        for name, e in experiments.items()
    } == {
        "lr-net-1": (0.01, "mlp"),
        "lr-net-2": (0.01, "cnn"),
        "lr-net-3": (0.003, "mlp"),
        "lr-net-4": (0.003, "cnn"),
    }
    accuracy = {name: e["metrics"]["accuracy"] for name, e in experiments.items()}
    print("\n" + run("dvc", "exp", "show", "--md", "--only-changed", cwd=root, **NO_AWS).stdout)
    assert all(0.5 < value <= 1 for value in accuracy.values()), accuracy
    for name in [*experiments, "ref-1"]:  # the template's submodule stays in every experiment
        ref = f"refs/exps/{project.baseline[:2]}/{project.baseline[2:]}/{name}"
        assert ".ml-aws-template" not in git("diff", "--name-only", project.baseline, ref, cwd=root)

    # The resumed child ended as the uninterrupted run did: metrics, and weights bit for bit.
    assert experiments["lr-net-2"]["metrics"] == listed["ref-1"]["metrics"]
    run("dvc", "exp", "apply", "lr-net-2", cwd=root, **NO_AWS)
    actual = weights(root / "models" / "model.ckpt")
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)

    # The best one, applied: its params.yaml, and outputs that match it (`dvc status` is clean).
    best = max(accuracy, key=accuracy.get)
    run("dvc", "exp", "apply", best, cwd=root, **NO_AWS)
    ref = f"refs/exps/{project.baseline[:2]}/{project.baseline[2:]}/{best}"
    assert (root / "params.yaml").read_text().strip() == git("show", f"{ref}:params.yaml", cwd=root)
    training = run("dvc", "status", "--json", "dvc.yaml", cwd=root, **NO_AWS)
    assert json.loads(training.stdout) == {}
