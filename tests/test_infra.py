"""The production side of a baked project: Docker, CircleCI, AWS Batch and multi-node DDP.

Nothing here reaches Docker or AWS. hadolint and the CircleCI schema check the files; a local
moto_server stands in for AWS Batch; the entrypoint runs as a script on this machine, in copies
of the trained project without .git, and DDP runs as real processes talking gloo on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import GIT_IDENTITY, MODULE, VENV_BIN, env, free_port, run
from mlt_project.distributed import node_env, require_rendezvous, shell_exports
from mlt_project.errors import PipelineError

BATCH_VARS = {
    "AWS_BATCH_JOB_NODE_INDEX": "0",
    "AWS_BATCH_JOB_NUM_NODES": "2",
    "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
}
# AWS settings for subprocesses: no real account, no metadata service, no ~/.aws files.
NO_AWS = {
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
FAKE_AWS = {
    **NO_AWS,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/digits-e2e:{'a' * 40}"


def clean_env(**extra: str) -> dict[str, str]:
    """helpers.env() without any AWS, Batch or rendezvous variable of the machine running this."""
    base = {
        key: value
        for key, value in env().items()
        if not key.startswith(("AWS_", "BATCH_"))
        and key not in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    return {**base, **extra}


def sh(*cmd: str | Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=project_env(cwd, **extra),
        capture_output=True,
        text=True,
    )


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """clean_env() importing the package from the project's own src/, as the image does: the
    same code as the installed one, and independent of other sessions sharing the venv."""
    return clean_env(PYTHONPATH=str(project / "src"), **extra)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def copy_without_git(source: Path, dest: Path) -> Path:
    """The project as the image holds it: no .git, no template submodule."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    shutil.rmtree(dest / ".ml-aws-template")
    return dest


def set_params(project: Path, **training: object) -> None:
    """Override `training.<key>` values in the project's params.yaml, keeping its comments."""
    params = project / "params.yaml"
    text = params.read_text()
    for key, value in training.items():
        text, count = re.subn(rf"(?m)^(  {key}:) *[^#\n]*", rf"\g<1> {value}  ", text)
        assert count == 1, key
    params.write_text(text)


# --- Dockerfile ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_dockerfile_passes_hadolint(trained_project):
    dockerfile = trained_project.root / "Dockerfile"
    result = run(
        VENV_BIN / "hadolint", "-f", "json", dockerfile, cwd=trained_project.root, check=False
    )
    findings = json.loads(result.stdout or "[]")
    print(f"hadolint: {len(findings)} finding(s): {findings}")
    assert [f for f in findings if f["level"] not in ("info", "style")] == []


@pytest.mark.e2e
def test_dockerfile_is_multi_stage_cuda_non_root(trained_project):
    text = (trained_project.root / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM (\S+)(?: AS (\S+))?", text)
    assert [name for _, name in stages] == ["base", "builder", "runtime"]
    assert re.fullmatch(r"nvidia/cuda:12\.8\.\d+-cudnn-runtime-ubuntu\d+\.\d+", stages[0][0])
    # Dependencies are installed before the source is copied, so code changes reuse that layer.
    assert text.index("COPY pyproject.toml poetry.lock* ./") < text.index(
        "poetry install --only main"
    )
    assert text.index("poetry install --only main") < text.index("COPY src ./src")
    runtime = text.split("AS runtime", 1)[1]
    user = re.findall(r"(?m)^USER (\S+)", runtime)
    assert user and not user[-1].startswith(("0", "root"))
    assert "COPY --from=builder /app/.venv /app/.venv" in runtime
    entrypoint = json.loads(re.search(r"(?m)^ENTRYPOINT (.+)$", runtime).group(1))
    script = trained_project.root / entrypoint[0].removeprefix("/app/")
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR


@pytest.mark.e2e
def test_dockerignore_keeps_out_git_secrets_data_and_environments(trained_project):
    lines = (trained_project.root / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".env", "data/**", "models", "logs", ".venv", ".dvc/cache"):
        assert entry in lines, entry
    assert "!data/**/*.dvc" in lines  # the files that say which data to pull


# --- CircleCI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def circleci(trained_project) -> tuple[Path, dict]:
    path = trained_project.root / ".circleci" / "config.yml"
    return path, yaml.safe_load(path.read_text())


@pytest.mark.e2e
def test_circleci_config_validates_against_the_schema(circleci):
    path, config = circleci
    assert config["version"] == 2.1
    result = run(
        VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.circle-ci", path,
        cwd=path.parent, check=False,
    )  # fmt: skip
    print(f"check-jsonschema vendor.circle-ci: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_circleci_jobs_run_in_order_and_deploy_only_from_main(circleci):
    _, config = circleci
    assert set(config["jobs"]) == {"test", "train", "build-and-push", "deploy"}
    (workflow,) = config["workflows"].values()
    entries = {}
    for item in workflow["jobs"]:
        name, options = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        entries[name] = options
    requires = {name: options.get("requires", []) for name, options in entries.items()}
    assert requires == {
        "test": [],
        "train": ["test"],
        "build-and-push": ["train"],
        "deploy": ["build-and-push"],
    }
    branches = {
        name: options.get("filters", {}).get("branches") for name, options in entries.items()
    }
    assert branches == {
        "test": None,
        "train": None,
        "build-and-push": None,
        "deploy": {"only": "main"},
    }
    # Only the jobs that need AWS get the context (and with it the OIDC token).
    contexts = {name for name, options in entries.items() if options.get("context")}
    assert contexts == {"train", "build-and-push", "deploy"}


@pytest.mark.e2e
def test_circleci_uses_oidc_and_holds_no_keys(circleci):
    path, config = circleci
    text = path.read_text()
    assert "CIRCLE_OIDC_TOKEN" in text and "AWS_WEB_IDENTITY_TOKEN_FILE" in text
    assert not re.search(r"AKIA[0-9A-Z]{16}|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY", text)
    jobs = config["jobs"]
    assert {"store_artifacts": {"path": "evaluation_results.json"}} in jobs["train"]["steps"]
    install = config["commands"]["install"]["steps"]
    cache_keys = next(step["restore_cache"]["keys"] for step in install if "restore_cache" in step)
    assert any('{{ checksum "poetry.lock" }}' in key for key in cache_keys)
    assert any("git submodule update --init" in json.dumps(step) for step in install)


@pytest.mark.e2e
def test_every_command_circleci_calls_exists_in_the_project(circleci, trained_project):
    _, config = circleci
    root = trained_project.root
    commands = [
        line.strip()
        for section in (config["jobs"], config["commands"])
        for body in section.values()
        for step in body["steps"]
        if isinstance(step, dict) and "run" in step
        for line in step["run"]["command"].splitlines()
    ]
    pyproject = (root / "pyproject.toml").read_text()
    checked = set()
    for line in commands:
        for module, sub in re.findall(r"python -m ([\w.]+)(?: (\w+))?", line):
            args = ["-m", module, *([sub] if sub else []), "--help"]
            assert run(sys.executable, *args, cwd=root, check=False).returncode == 0, line
            checked.add(f"{module} {sub}")
        for tool in re.findall(r"poetry run (\w+)", line):
            if tool != "python":
                assert re.search(rf'(?m)^\s*"?{tool}(\[\w+\])?\s*>?=', pyproject), tool
                checked.add(tool)
        for script in re.findall(r"(?:^|\s)((?:\.ml-aws-template|docker)/[\w./-]+)", line):
            path = root / script
            assert path.is_file(), script
            checked.add(script)
            if script.endswith(".sh"):
                assert path.stat().st_mode & stat.S_IXUSR, script
        if "bootstrap.py --check" in line:
            helped = run("python3", ".ml-aws-template/bootstrap.py", "--help", cwd=root)
            assert "--check" in helped.stdout
    assert {f"{MODULE}.scripts.batch register", f"{MODULE}.scripts.batch submit"} <= checked
    assert {"dvc", "ruff", "pytest", "docker/build_and_push.sh"} <= checked


# --- docker/build_and_push.sh, with docker and aws stubbed -----------------------------------


@pytest.mark.e2e
def test_build_script_tags_with_the_commit_logs_in_and_pushes(trained_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(trained_project.root, project, symlinks=True)
    run("git", *GIT_IDENTITY, "add", "-A", cwd=project)
    run("git", *GIT_IDENTITY, "commit", "--quiet", "-m", "baked", cwd=project)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("docker", "aws"):
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\ncat > /dev/null\n')
        stub.chmod(0o755)
    repository = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/digits-e2e"
    path = f"{stubs}{os.pathsep}{clean_env()['PATH']}"

    result = sh("docker/build_and_push.sh", cwd=project, PATH=path, ECR_REPOSITORY_URI=repository)
    assert result.returncode == 0, result.stderr
    commit = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    assert result.stdout == f"{repository}:{commit}\n"
    calls = log.read_text().splitlines()
    assert calls[0] == f"docker build --tag {repository}:{commit} ."
    # The two sides of `aws ecr get-login-password | docker login` run at the same time.
    assert sorted(calls[1:3]) == [
        "aws ecr get-login-password --region eu-west-1",
        "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ]
    assert calls[3:] == [f"docker push {repository}:{commit}"]

    missing = sh("docker/build_and_push.sh", cwd=project, PATH=path)
    assert "ECR_REPOSITORY_URI" in one_error_line(missing)


# --- the node mapping, unit by unit -----------------------------------------------------------


def test_single_machine_needs_no_rendezvous():
    assert node_env({}, num_nodes=1) == {}
    with pytest.raises(PipelineError, match=r"training\.num_nodes is 2 but this is not a node"):
        node_env({}, num_nodes=2)


def test_batch_nodes_map_to_lightning_rendezvous():
    main = node_env({**BATCH_VARS, "MASTER_PORT": "23456"}, num_nodes=2)
    assert main == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "23456", "NODE_RANK": "0"}
    child = {
        **BATCH_VARS,
        "AWS_BATCH_JOB_NODE_INDEX": "1",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.5",
    }
    assert node_env(child, num_nodes=2) == {
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29500",
        "NODE_RANK": "1",
    }
    # Batch may make any node the main one; Lightning's rank 0 must be that node.
    moved = {**child, "AWS_BATCH_JOB_NUM_NODES": "3", "AWS_BATCH_JOB_MAIN_NODE_INDEX": "1"}
    assert node_env({**moved, "AWS_BATCH_JOB_NODE_INDEX": "1"}, 3)["NODE_RANK"] == "0"
    assert node_env({**moved, "AWS_BATCH_JOB_NODE_INDEX": "2"}, 3)["NODE_RANK"] == "1"
    assert node_env({**moved, "AWS_BATCH_JOB_NODE_INDEX": "0"}, 3)["NODE_RANK"] == "2"
    assert shell_exports({"MASTER_ADDR": "a b"}) == "export MASTER_ADDR='a b'\n"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AWS_BATCH_JOB_NODE_INDEX": "0"}, "partly set"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NODE_INDEX": "1"}, "PRIVATE_IPV4_ADDRESS is not set"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NUM_NODES": "3"}, "Batch started 3 node(s) but"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NODE_INDEX": "two"}, "is not a number"),
        ({**BATCH_VARS, "AWS_BATCH_JOB_NODE_INDEX": "5"}, "must both be below"),
        ({**BATCH_VARS, "MASTER_PORT": "99999"}, "not a port number"),
    ],
)
def test_bad_node_variables_are_one_line_errors(environ, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        node_env(environ, num_nodes=2)


def test_trainer_uses_ddp_for_several_devices_and_refuses_nodes_without_rendezvous(monkeypatch):
    import dataclasses

    from mlt_project.config import load_config
    from mlt_project.factories import create_trainer

    base = load_config(Path(__file__).parent.parent / "template_configs/project/params.yaml")
    training = dataclasses.replace(base.training, accelerator="cpu", devices=2)
    trainer = create_trainer(dataclasses.replace(base, training=training), logger=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.strategy._get_process_group_backend() == "gloo"
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PipelineError, match="MASTER_ADDR, MASTER_PORT, NODE_RANK not set"):
        require_rendezvous(2)
    training = dataclasses.replace(training, devices=1, num_nodes=2)
    with pytest.raises(PipelineError, match=r"training\.num_nodes is 2"):
        create_trainer(dataclasses.replace(base, training=training), logger=False)


# --- the entrypoint, run as a script in copies without .git -----------------------------------


@pytest.fixture(scope="module")
def image_copy(trained_project, tmp_path_factory) -> Path:
    """The trained project laid out as in the image; for runs that stop before DVC does."""
    return copy_without_git(trained_project.root, tmp_path_factory.mktemp("image") / "app")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"AWS_BATCH_JOB_NUM_NODES": "2"}, "multi-node variables partly set"),
        (BATCH_VARS, "Batch started 2 node(s) but training.num_nodes is 1"),
    ],
)
def test_entrypoint_rejects_bad_node_variables_in_one_line(image_copy, variables, message):
    result = sh("docker/entrypoint.sh", cwd=image_copy, **variables)
    assert message in one_error_line(result)
    assert "Running stage" not in result.stdout


def run_entrypoint(project: Path, **extra: str) -> tuple[subprocess.Popen[str], float]:
    process = subprocess.Popen(
        ["docker/entrypoint.sh"],
        cwd=project,
        env=project_env(project, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hung run can be stopped whole
    )
    return process, time.perf_counter()


def finish(
    process: subprocess.Popen[str], started: float, timeout: float = 300
) -> tuple[str, float]:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(
            f"entrypoint still running after {timeout}s:\n{output[-4000:]}"
        ) from None
    seconds = time.perf_counter() - started
    assert process.returncode == 0, output[-6000:]
    return output, seconds


def training_copy(trained_project, dest: Path, **training: object) -> Path:
    """A copy without .git whose params train briefly on the CPU, and no checkpoint yet."""
    project = copy_without_git(trained_project.root, dest)
    set_params(project, accelerator="cpu", max_epochs=3, **training)
    (project / "models" / "model.ckpt").unlink()
    return project


def accuracy(project: Path) -> float:
    return json.loads((project / "evaluation_results.json").read_text())["accuracy"]


@pytest.mark.e2e
def test_entrypoint_trains_without_git_one_process_two_devices_two_nodes(trained_project, tmp_path):
    # One process, through a DVC remote (a local folder): pull, repro, push.
    single = training_copy(trained_project, tmp_path / "single", devices=1)
    remote = tmp_path / "dvc-remote"
    run("dvc", "remote", "add", "--default", "local", remote, cwd=single)
    output, one_process = finish(*run_entrypoint(single))
    assert (single / ".dvc" / "config.local").read_text().split() == [
        "[core]",
        "no_scm",
        "=",
        "true",
    ]
    assert "DVC remote 'local'" in output and "Running stage 'train'" in output
    assert "Running stage 'evaluate'" in output
    assert any(path.is_file() for path in remote.rglob("*")), "dvc push sent nothing"
    assert accuracy(single) > 0.5

    # One node, two CPU devices: Lightning starts the second process itself.
    devices = training_copy(trained_project, tmp_path / "devices", devices=2)
    output, two_devices = finish(*run_entrypoint(devices))
    assert "MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    assert accuracy(devices) > 0.5

    # Two Batch nodes: two copies, two entrypoints, one device each, meeting on 127.0.0.1.
    main = training_copy(trained_project, tmp_path / "main", devices=1, num_nodes=2)
    worker = training_copy(trained_project, tmp_path / "worker", devices=1, num_nodes=2)
    port = str(free_port())
    child = {
        **BATCH_VARS,
        "AWS_BATCH_JOB_NODE_INDEX": "1",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "127.0.0.1",
    }
    started_main = run_entrypoint(main, **BATCH_VARS, MASTER_PORT=port)
    started_worker = run_entrypoint(worker, **child, MASTER_PORT=port)
    try:
        worker_output, _ = finish(*started_worker)
        main_output, two_nodes = finish(*started_main)
    finally:
        for process, _ in (started_main, started_worker):
            if process.poll() is None:  # one node failed: the other would wait for it
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    assert "distributed_backend=gloo" in main_output and "MEMBER: 1/2" in main_output
    assert "MEMBER: 2/2" in worker_output
    assert "Running stage 'evaluate'" in main_output
    assert (main / "models" / "model.ckpt").is_file()
    assert not (worker / "models" / "model.ckpt").exists()  # only global rank 0 writes
    assert accuracy(main) > 0.5

    print(
        f"entrypoint (dvc repro: train 3 epochs on the CPU + evaluate), same data: "
        f"1 process {one_process:.1f}s, 1 node x 2 devices {two_devices:.1f}s, "
        f"2 nodes x 1 device {two_nodes:.1f}s"
    )


# --- scripts.batch against moto_server ------------------------------------------------------


@pytest.fixture(scope="module")
def aws(moto_endpoint) -> dict[str, str]:
    """What the user sets up once in AWS (README: AWS setup): a compute environment and queue."""
    import boto3

    settings = {"endpoint_url": moto_endpoint, "region_name": "us-east-1"}
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    iam = boto3.client("iam", **settings, **keys)
    batch = boto3.client("batch", **settings, **keys)
    role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(
        computeEnvironmentName="gpu-ce", type="UNMANAGED", state="ENABLED", serviceRole=role
    )
    batch.create_job_queue(
        jobQueueName="training",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}
        ],
    )
    return {**FAKE_AWS, "AWS_ENDPOINT_URL": moto_endpoint, "BATCH_JOB_QUEUE": "training"}


def batch_cli(project: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return sh(sys.executable, "-m", f"{MODULE}.scripts.batch", *args, cwd=project, **extra)


@pytest.mark.e2e
def test_batch_register_submit_status_single_and_multi_node(aws, image_copy, tmp_path):
    import boto3

    project = tmp_path / "project"
    shutil.copytree(image_copy, project, symlinks=True)
    client = boto3.client(
        "batch",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    registered = batch_cli(project, "register", "--image", IMAGE, **aws)
    assert registered.returncode == 0, registered.stderr
    assert "job-definition/digits-e2e-train:1" in registered.stdout
    checkpoints = "s3://dvc-bucket/digits-e2e/checkpoints"
    again = batch_cli(
        project, "register", **aws, BATCH_IMAGE_URI=IMAGE, DVC_S3_URI="s3://dvc-bucket/x",
        CHECKPOINT_S3_URI=checkpoints,
    )  # fmt: skip
    assert "job-definition/digits-e2e-train:2" in again.stdout
    revisions = client.describe_job_definitions(jobDefinitionName="digits-e2e-train")
    definition = max(revisions["jobDefinitions"], key=lambda d: d["revision"])
    assert definition["revision"] == 2
    assert definition["containerProperties"]["image"] == IMAGE
    variables = definition["containerProperties"]["environment"]
    assert {"name": "DVC_S3_URI", "value": "s3://dvc-bucket/x"} in variables
    assert {"name": "CHECKPOINT_S3_URI", "value": checkpoints} in variables
    assert {"type": "GPU", "value": "1"} in definition["containerProperties"][
        "resourceRequirements"
    ]
    # moto stores the action in lower case, as AWS's API accepts either.
    retry = [
        {**rule, "action": rule["action"].upper()}
        for rule in definition["retryStrategy"]["evaluateOnExit"]
    ]
    assert retry[0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}  # spot reclaimed
    assert retry[-1] == {"onReason": "*", "action": "EXIT"}  # anything else, a code error: stop
    assert definition["timeout"]["attemptDurationSeconds"] > 0

    submitted = batch_cli(project, "submit", **aws)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"job id (\S+)", submitted.stdout).group(1)
    (job,) = client.describe_jobs(jobs=[job_id])["jobs"]
    assert job["jobQueue"].endswith("job-queue/training")
    assert job["jobDefinition"].endswith("job-definition/digits-e2e-train:2")
    shown = batch_cli(project, "status", job_id, **aws)
    assert shown.returncode == 0, shown.stderr
    assert re.match(rf"digits-e2e-train-\S+ \({job_id}\): [A-Z]+", shown.stdout)

    # training.num_nodes > 1: the multi-node definition, with numNodes from params.yaml.
    set_params(project, num_nodes=3)
    multi = batch_cli(project, "register", "--image", IMAGE, **aws)
    assert "job-definition/digits-e2e-train-multinode:1" in multi.stdout, multi.stderr
    (definition,) = client.describe_job_definitions(jobDefinitionName="digits-e2e-train-multinode")[
        "jobDefinitions"
    ]
    assert definition["type"] == "multinode"  # moto returns no nodeProperties: see the next test
    submitted = batch_cli(project, "submit", **aws)
    assert "submitted digits-e2e-train-multinode-" in submitted.stdout, submitted.stderr


@pytest.mark.e2e
def test_batch_bad_input_is_one_line(aws, image_copy):
    no_image = batch_cli(image_copy, "register", **aws)
    assert "no image URI: pass --image or set BATCH_IMAGE_URI" in one_error_line(no_image)
    no_queue = batch_cli(image_copy, "submit", **{**aws, "BATCH_JOB_QUEUE": ""})
    assert "no job queue: pass --queue or set BATCH_JOB_QUEUE" in one_error_line(no_queue)
    unknown_queue = batch_cli(image_copy, "submit", "--queue", "nope", **aws)
    assert "AWS Batch SubmitJob failed" in one_error_line(unknown_queue)
    no_credentials = batch_cli(image_copy, "register", "--image", IMAGE, **NO_AWS)
    assert "no AWS credentials found" in one_error_line(no_credentials)


# --- the project guide's AWS setup ---------------------------------------------------------


def test_readme_gives_the_policies_in_aws_iam_and_all_aws_files_parse():
    project = Path(__file__).resolve().parent.parent / "template_configs" / "project"
    policies = {
        path.name: json.loads(path.read_text()) for path in (project / "aws").rglob("*.json")
    }
    assert {"batch-job.json", "batch-job-multinode.json", "ci-role-policy.json"} <= set(policies)
    readme = (project / "PROJECT.md").read_text()
    shown = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.DOTALL)]
    assert shown == [policies["job-role-policy.json"], policies["ci-role-policy.json"]]
    for name in ("job-role-policy.json", "ci-role-policy.json", "job-trust-policy.json"):
        assert f"aws/iam/{name}" in readme


def test_multi_node_request_takes_num_nodes_from_params_and_the_image(monkeypatch):
    from mlt_project.scripts.batch import job_definition

    monkeypatch.chdir(Path(__file__).resolve().parent.parent / "template_configs" / "project")
    monkeypatch.delenv("DVC_S3_URI", raising=False)
    # The old name reaches the job as the new one.
    monkeypatch.setenv("DVC_S3_BUCKET_NAME", "dvc-bucket")
    request = job_definition(3, IMAGE, "arn:aws:iam::123456789012:role/job")
    assert request["type"] == "multinode"
    assert request["nodeProperties"]["numNodes"] == 3
    (nodes,) = request["nodeProperties"]["nodeRangeProperties"]
    assert nodes["container"]["image"] == IMAGE
    assert nodes["container"]["jobRoleArn"] == "arn:aws:iam::123456789012:role/job"
    assert {"name": "DVC_S3_URI", "value": "s3://dvc-bucket/mlt-project"} in nodes["container"][
        "environment"
    ]
    single = job_definition(1, IMAGE, None)
    assert single["type"] == "container" and "jobRoleArn" not in single["containerProperties"]
