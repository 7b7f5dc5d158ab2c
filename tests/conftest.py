"""A project baked, installed and trained once per session, shared by the tests that need one.

Tests that change files in it work on a copy (`project_copy`), so they don't disturb each other.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import MODULE, NAME, bootstrap, make_host, make_template_repo, run


@dataclass(frozen=True)
class TrainedProject:
    root: Path
    module: str
    repro_stdout: str
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
    yield TrainedProject(host, MODULE, repro.stdout, time.perf_counter() - start)
    run(*pip, "uninstall", "--quiet", "--yes", NAME, cwd=host.parent)


@pytest.fixture
def project_copy(trained_project: TrainedProject, tmp_path: Path) -> Path:
    """A private copy of the trained project (same installed package, own files and git repo).

    The package is installed in editable mode from the original, so edit code only there.
    """
    copy = tmp_path / NAME
    shutil.copytree(trained_project.root, copy, symlinks=True)
    return copy
