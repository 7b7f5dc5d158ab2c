"""The training image: the Dockerfile, .dockerignore, docker/build_and_push.sh and
docker/entrypoint.sh (run as a script, in copies laid out as in the image, without .git)."""

from __future__ import annotations

import importlib.util
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

from helpers import (
    GIT_IDENTITY,
    REPO,
    VENV_BIN,
    clean_env,
    copy_without_git,
    free_port,
    one_error_line,
    project_env,
    run,
    set_params,
    sh,
)

BATCH_VARS = {
    "AWS_BATCH_JOB_NODE_INDEX": "0",
    "AWS_BATCH_JOB_NUM_NODES": "2",
    "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
}


# --- Dockerfile ------------------------------------------------------------------------------
# One Dockerfile (template_configs/project/) for both --torch variants: each variant's base image
# is in docker/images.env (template_configs/torch-*/), which build_and_push.sh passes as
# BASE_IMAGE. They are checked as bootstrap writes them.

VARIANT_BASE = {
    "cu128": r"nvidia/cuda:12\.8\.\d+-cudnn-runtime-ubuntu\d+\.\d+",
    "cpu": r"python:3\.12-slim-\w+",
}


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> dict[str, Path]:
    """{variant: a project bootstrap wrote with --torch variant} (rendering only: seconds)."""
    import bootstrap

    projects = {}
    for variant in VARIANT_BASE:
        target = tmp_path_factory.mktemp(f"docker-{variant}") / "cats"
        target.mkdir()
        assert bootstrap.main(["--target", str(target), "--torch", variant]) == 0
        projects[variant] = target
    return projects


@pytest.mark.parametrize("variant", VARIANT_BASE)
def test_dockerfile_passes_hadolint(baked, variant):
    dockerfile = baked[variant] / "Dockerfile"
    # Exit 1 on a warning or an error, 0 otherwise; the JSON lists every finding (none is "[]").
    result = run(
        VENV_BIN / "hadolint", "-f", "json", "--failure-threshold", "warning", dockerfile,
        cwd=baked[variant], check=False,
    )  # fmt: skip
    findings = json.loads(result.stdout)
    assert isinstance(findings, list), result.stdout
    print(f"hadolint ({variant}): {len(findings)} finding(s): {findings}")
    assert [f for f in findings if f["level"] not in ("info", "style")] == []
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", VARIANT_BASE)
def test_dockerfile_is_multi_stage_on_its_variants_base_and_non_root(baked, variant):
    text = (baked[variant] / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM (\S+)(?: AS (\S+))?", text)
    assert [name for _, name in stages] == ["base", "builder", "runtime"]
    assert stages[0][0] == "${BASE_IMAGE}"
    # Without a build argument, a plain `docker build .`: Python, no CUDA.
    (default,) = re.findall(r"(?m)^ARG BASE_IMAGE=(\S+)$", text)
    assert re.fullmatch(VARIANT_BASE["cpu"], default)
    images = dict(
        line.split("=", 1)
        for line in (baked[variant] / "docker" / "images.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert re.fullmatch(VARIANT_BASE[variant], images["TRAIN_BASE_IMAGE"])
    if variant == "cpu":  # CPU-only torch: no CUDA image anywhere
        assert not re.search(r"(?i)cuda|nvidia", " ".join(images.values()))
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
    script = baked[variant] / entrypoint[0].removeprefix("/app/")
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR


def test_one_dockerfile_serves_both_variants():
    """No per-variant copy of a Dockerfile (training's, or serving's: tests/test_serve_container.py):
    the variants differ in docker/images.env only."""
    configs = REPO / "template_configs"
    assert sorted(p.relative_to(configs).as_posix() for p in configs.rglob("Dockerfile*")) == [
        "project/Dockerfile",
        "project/Dockerfile.serve",
    ]
    variants = [
        sorted(
            p.relative_to(configs / f"torch-{v}").as_posix()
            for p in (configs / f"torch-{v}").rglob("*")
            if p.is_file()
        )
        for v in ("cu128", "cpu")
    ]
    assert variants[0] == variants[1]
    assert "docker/images.env" in variants[0]


# --- bytecode, compiled in the builder --------------------------------------------------------


def compile_commands(dockerfile: Path) -> dict[str, str]:
    """{folder: the builder's `python3 -m compileall ...` command for it}."""
    builder = dockerfile.read_text().split("AS builder", 1)[1].split("AS runtime", 1)[0]
    found = re.findall(r"(python3 -m compileall [^\n]*?(/app/[\w.]+))", builder)
    return {folder: command for command, folder in found}


@pytest.mark.parametrize("variant", VARIANT_BASE)
def test_builder_compiles_the_environment_and_the_project_and_runtime_keeps_it(baked, variant):
    dockerfile = baked[variant] / "Dockerfile"
    text = dockerfile.read_text()
    assert "PYTHONDONTWRITEBYTECODE=1" in text  # the runtime never writes .pyc: the build must
    commands = compile_commands(dockerfile)
    assert set(commands) == {"/app/.venv", "/app/src"}
    # Each compiles what the RUN before it installed: the dependencies' layer keeps its bytecode.
    assert text.index("poetry install --only main") < text.index(commands["/app/.venv"])
    assert text.index("poetry install --only-root") < text.index(commands["/app/src"])
    runtime = text.split("AS runtime", 1)[1]
    # The context's src has no __pycache__ (.dockerignore): the builder's replaces it.
    copied = runtime.index("COPY --chown=10001:10001 . .")
    assert copied < runtime.index("COPY --from=builder --chown=10001:10001 /app/src ./src")
    assert "**/__pycache__" in (baked[variant] / ".dockerignore").read_text().splitlines()


def test_the_base_stage_compiles_the_standard_library(baked):
    """The Python images delete the standard library's .pyc and the runtime writes none: without
    this step every process of a job compiled the ~190 standard-library modules that `import
    lightning` loads (benchmarks/run.py P8c runs the command on a copy of the library). In the
    base stage, so that the runtime stage (FROM base) has it; no `|| true`: the library
    compiles whole, and a failure should stop the build."""
    text = (baked["cpu"] / "Dockerfile").read_text()
    base = text.split("AS builder", 1)[0]
    assert "FROM ${BASE_IMAGE} AS base" in base
    assert "\nFROM base AS runtime\n" in text
    (command,) = re.findall(r"python3 -m compileall [^\n]*", base)
    assert "sysconfig" in command and '"stdlib"' in command, command
    assert "|| true" not in command, command


def test_the_builders_compileall_makes_bytecode_that_a_changed_mtime_keeps(baked, tmp_path):
    """The Dockerfile's own command, run on a folder here: Python then imports the .pyc even after
    the source's mtime changed (as a COPY may change it), with PYTHONDONTWRITEBYTECODE=1."""
    app = tmp_path / "app"
    package = app / "src" / "probe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    command = compile_commands(baked["cpu"] / "Dockerfile")["/app/src"]
    argv = command.replace("python3", sys.executable, 1).replace("/app/src", str(app / "src"))
    subprocess.run(argv.split(), check=True)
    pyc = Path(importlib.util.cache_from_source(str(package / "__init__.py")))
    assert pyc.is_file()
    later = time.time() + 3600
    os.utime(package / "__init__.py", (later, later))
    probe = subprocess.run(
        [sys.executable, "-v", "-c", "import probe"],
        env={**clean_env(), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(app / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"code object from '{pyc}'" in probe.stderr, probe.stderr[-2000:]


@pytest.mark.e2e
def test_dockerignore_keeps_out_git_secrets_data_and_environments(trained_project):
    lines = (trained_project.root / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".env", "data/**", "models", "logs", ".venv", ".dvc/cache"):
        assert entry in lines, entry
    assert "!data/**/*.dvc" in lines  # the files that say which data to pull


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
    base = "python:3.12-slim-bookworm"  # the baked project is --torch cpu: docker/images.env
    assert calls[0] == f"docker build --build-arg BASE_IMAGE={base} --tag {repository}:{commit} ."
    # The two sides of `aws ecr get-login-password | docker login` run at the same time.
    assert sorted(calls[1:3]) == [
        "aws ecr get-login-password --region eu-west-1",
        "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ]
    assert calls[3:] == [f"docker push {repository}:{commit}"]

    missing = sh("docker/build_and_push.sh", cwd=project, PATH=path)
    assert "ECR_REPOSITORY_URI" in one_error_line(missing)


# --- the entrypoint, run as a script in copies without .git -----------------------------------


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
    set_params(
        project,
        training__accelerator="cpu",
        training__max_epochs=3,
        **{f"training__{key}": value for key, value in training.items()},
    )
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
