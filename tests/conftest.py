"""A project baked, installed and trained once per session, shared by the tests that need one.

Tests that change files in it work on a copy (`project_copy`), so they don't disturb each other.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import (
    MODULE,
    NAME,
    VENV_BIN,
    bootstrap,
    copy_without_git,
    free_port,
    make_host,
    make_template_repo,
    run,
)


@dataclass(frozen=True)
class TrainedProject:
    root: Path
    module: str
    repro_stdout: str
    repro_stderr: str  # the stages' logs
    repro_seconds: float


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This working tree as a one-commit git repo, to add as a submodule."""
    return make_template_repo(tmp_path_factory.mktemp("template") / "ml-aws-template")


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, template_repo):
    """Bootstrap from a real submodule, pip install, sample data, one `dvc repro`."""
    host = make_host(tmp_path_factory.mktemp("e2e") / NAME, template_repo)
    bootstrap(host, "--torch", "cpu")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "install", "--quiet", "--no-build-isolation", "-e", ".", cwd=host)
    run(sys.executable, "-m", f"{MODULE}.data.sample_data", cwd=host)
    start = time.perf_counter()
    repro = run("dvc", "repro", cwd=host)
    yield TrainedProject(host, MODULE, repro.stdout, repro.stderr, time.perf_counter() - start)
    run(*pip, "uninstall", "--quiet", "--yes", NAME, cwd=host.parent)


@pytest.fixture
def project_copy(trained_project: TrainedProject, tmp_path: Path) -> Path:
    """A private copy of the trained project (same installed package, own files and git repo).

    The package is installed in editable mode from the original, so edit code only there.
    """
    copy = tmp_path / NAME
    shutil.copytree(trained_project.root, copy, symlinks=True)
    return copy


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """moto_server (S3, ECR, Batch, IAM APIs) on a free port of 127.0.0.1, stopped by its PID."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen(
        [VENV_BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None, "moto_server exited at start"
                assert time.monotonic() < deadline, "moto_server did not start in 60 s"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="session")
def image_copy(trained_project, tmp_path_factory) -> Path:
    """The trained project laid out as in the image (no .git, no template submodule); for runs
    that stop before DVC does."""
    return copy_without_git(trained_project.root, tmp_path_factory.mktemp("image") / "app")
