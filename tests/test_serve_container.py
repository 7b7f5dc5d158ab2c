"""The serving image: Dockerfile.serve, docker/serve.sh and `docker/build_and_push.sh serve`, as
bootstrap writes them for each variant. No Docker engine runs here: the Dockerfile is linted and
read, the entrypoint runs as a script from a baked copy, the build script with docker and aws
stubbed (as tests/test_docker.py does for the training image)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from helpers import GIT_IDENTITY, REPO, VENV_BIN, clean_env, free_port, one_error_line, run
from serving import call, png, post_image, stop, tiny_release, wait_until_ready

SERVE_BASE = {
    "cu128": r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+",
    "cpu": r"python:3\.12-slim-\w+",
}
REPOSITORY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/cats"


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> dict[str, Path]:
    """{variant: a project bootstrap wrote with --torch variant, committed to git}."""
    import bootstrap

    projects = {}
    for variant in SERVE_BASE:
        target = tmp_path_factory.mktemp(f"serve-{variant}") / "cats"
        target.mkdir()
        assert bootstrap.main(["--target", str(target), "--torch", variant]) == 0
        run("git", "init", "--quiet", cwd=target)
        run("git", *GIT_IDENTITY, "add", "-A", cwd=target)
        run("git", *GIT_IDENTITY, "commit", "--quiet", "-m", "baked", cwd=target)
        projects[variant] = target
    return projects


def images_env(project: Path) -> dict[str, str]:
    lines = (project / "docker" / "images.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("variant", SERVE_BASE)
def test_serve_dockerfile_passes_hadolint(baked, variant):
    dockerfile = baked[variant] / "Dockerfile.serve"
    result = run(
        VENV_BIN / "hadolint", "-f", "json", "--failure-threshold", "warning", dockerfile,
        cwd=baked[variant], check=False,
    )  # fmt: skip
    findings = json.loads(result.stdout)
    print(f"hadolint Dockerfile.serve ({variant}): {findings}")
    assert [f for f in findings if f["level"] not in ("info", "style")] == []
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", SERVE_BASE)
def test_serve_image_holds_only_the_lean_install_runs_as_non_root_and_exposes_8080(baked, variant):
    project = baked[variant]
    text = (project / "Dockerfile.serve").read_text()
    stages = re.findall(r"(?m)^FROM (\S+)(?: AS (\S+))?", text)
    assert [name for _, name in stages] == ["base", "builder", "runtime"]
    assert stages[0][0] == "${BASE_IMAGE}"
    (default,) = re.findall(r"(?m)^ARG BASE_IMAGE=(\S+)$", text)
    assert re.fullmatch(SERVE_BASE["cpu"], default)
    base = images_env(project)["SERVE_BASE_IMAGE"]
    assert re.fullmatch(SERVE_BASE[variant], base), base
    if variant == "cpu":
        assert not re.search(r"(?i)cuda|nvidia", base)
    # Only requirements-serve.txt, then the package without its (training) dependencies.
    copies = re.findall(r"(?m)^COPY (?!--from)(.+)$", text)
    assert copies == [
        "requirements-serve.txt ./",
        "pyproject.toml README.md ./",
        "src ./src",
        "docker/serve.sh /usr/local/bin/serve.sh",
    ]
    installs = re.findall(r"pip install [^\n\\]*", text)
    assert installs == [
        "pip install --no-cache-dir --requirement requirements-serve.txt ",
        "pip install --no-cache-dir --no-deps . ",
    ]
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "poetry" not in instructions.lower() and "torch" not in instructions
    builder = text.split("AS builder", 1)[1].split("AS runtime", 1)[0]
    assert builder.count("python3 -m compileall") == 2 and "PYTHONDONTWRITEBYTECODE=1" in text
    runtime = text.split("AS runtime", 1)[1]
    (user,) = re.findall(r"(?m)^USER (\S+)$", runtime)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user  # numeric, not root
    assert re.findall(r"(?m)^EXPOSE (\S+)$", runtime) == ["8080"]
    assert re.findall(r"(?m)^COPY --from=builder (.+)$", runtime) == ["/opt/venv /opt/venv"]
    entrypoint = json.loads(re.search(r"(?m)^ENTRYPOINT (.+)$", runtime).group(1))
    assert entrypoint == ["/usr/local/bin/serve.sh"]
    assert json.loads(re.search(r"(?m)^CMD (.+)$", runtime).group(1)) == ["serve"]
    script = project / "docker" / "serve.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    # What the build copies reaches the context: .dockerignore keeps none of it out.
    ignored = (project / ".dockerignore").read_text().splitlines()
    for name in ("requirements-serve.txt", "pyproject.toml", "README.md", "src", "docker"):
        assert name not in ignored, name


def test_build_script_builds_and_pushes_the_serving_image_on_its_base(baked, tmp_path):
    project = baked["cpu"]
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("docker", "aws"):
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\ncat > /dev/null\n')
        stub.chmod(0o755)
    env = clean_env(PATH=f"{stubs}{os.pathsep}{clean_env()['PATH']}", ECR_REPOSITORY_URI=REPOSITORY)
    result = run("docker/build_and_push.sh", "serve", cwd=project, check=False, **env)
    assert result.returncode == 0, result.stderr
    commit = run("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    image = f"{REPOSITORY}:{commit}-serve"
    assert result.stdout == f"{image}\n"
    calls = log.read_text().splitlines()
    base = images_env(project)["SERVE_BASE_IMAGE"]
    assert (
        calls[0]
        == f"docker build --file Dockerfile.serve --build-arg BASE_IMAGE={base} --tag {image} ."
    )
    assert calls[-1] == f"docker push {image}"
    wrong = run("docker/build_and_push.sh", "deploy", cwd=project, check=False, **env)
    assert "takes train (the default) or serve" in one_error_line(wrong)


def test_docker_run_image_serve_starts_the_server_and_sigterm_exits_0(baked, tmp_path):
    """docker/serve.sh as the image runs it: `serve` and flags -> the server on 0.0.0.0:$PORT;
    anything else runs as given."""
    project = baked["cpu"]
    model = tiny_release(tmp_path / "release")
    port = free_port()
    env = {**clean_env(), "PYTHONPATH": str(REPO / "src_templates"), "PORT": str(port)}
    # The baked script names the baked module; here the template's package stands in for it.
    script = tmp_path / "serve.sh"
    shutil.copy(project / "docker" / "serve.sh", script)
    script.write_text(script.read_text().replace("cats.serve", "mlt_project.serve"))
    import subprocess

    process = subprocess.Popen(
        [str(script), "serve", "--model", str(model.parent)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_ready(port, process)
        assert call(port, "GET", "/metadata").json()["version"] == "0.1.0"
        assert post_image(port, png(np.zeros((8, 8), np.uint8))).status == 200
    finally:
        code, stderr, _ = stop(process)
    assert code == 0, stderr[-3000:]
    assert f"Uvicorn running on http://0.0.0.0:{port}" in stderr
    other = run(str(script), "python", "-c", "print('as given')", cwd=tmp_path, **env)
    assert other.stdout == "as given\n"
