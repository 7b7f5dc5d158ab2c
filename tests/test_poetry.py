"""The generated pyproject.toml with real Poetry: both variants pass `poetry check`, the cpu
variant's shipped lock is current, and `poetry install` gives an environment whose tests pass."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from helpers import REPO, run

pytestmark = pytest.mark.poetry

POETRY = os.environ.get("POETRY") or shutil.which("poetry")
# PyPI's JSON API, which Poetry reads by default, is not served on the machines these tests
# run on; the pypi-mirror plugin points Poetry at PyPI's simple index instead, without
# touching pyproject.toml or poetry.lock.
MIRROR = {"POETRY_PYPI_MIRROR_URL": "https://pypi.org/simple/"}


@pytest.fixture(scope="module")
def poetry() -> str:
    if not POETRY:
        if os.environ.get("CI"):
            pytest.fail("Poetry not found: set POETRY or run `make test`")
        pytest.skip("Poetry not found: set POETRY or run `make test`")
    return POETRY


def bake(target: Path, torch: str) -> Path:
    target.mkdir()
    run("python3", REPO / "bootstrap.py", "--target", target, "--name", "poetry-demo",
        "--torch", torch, cwd=target)  # fmt: skip
    return target


@pytest.mark.parametrize("torch", ["cpu", "cu128"])
def test_poetry_check_passes(poetry, tmp_path, torch):
    project = bake(tmp_path / "p", torch)
    result = run(poetry, "check", cwd=project, **MIRROR)
    assert "All set!" in result.stdout + result.stderr


def test_cu128_variant_takes_torch_from_the_cuda_index_on_linux_only(tmp_path):
    import tomllib

    project = bake(tmp_path / "p", "cu128")
    config = tomllib.loads((project / "pyproject.toml").read_text())
    (source,) = config["tool"]["poetry"]["source"]
    assert source == {
        "name": "pytorch-cu128",
        "url": "https://download.pytorch.org/whl/cu128",
        "priority": "explicit",
    }
    for package in ("torch", "torchvision"):
        linux, other = config["tool"]["poetry"]["dependencies"][package]
        assert linux["source"] == "pytorch-cu128"
        assert "platform_machine == 'x86_64'" in linux["markers"]
        assert "source" not in other


def test_cpu_variant_installs_from_its_lock_and_its_tests_pass(poetry, tmp_path):
    project = bake(tmp_path / "p", "cpu")
    run(poetry, "check", "--lock", cwd=project, **MIRROR)
    in_project = {"POETRY_VIRTUALENVS_IN_PROJECT": "true", **MIRROR}
    start = time.perf_counter()
    install = run(poetry, "install", "--no-interaction", cwd=project, **in_project)
    print(f"poetry install: {time.perf_counter() - start:.0f}s")
    assert "Writing lock file" not in install.stdout, "install re-locked: the shipped lock is stale"
    assert (project / ".venv").is_dir()
    # One version of each package: the generated poetry.toml makes Poetry re-resolve the lock
    # for this machine (two nvidia-cublas versions installed side by side crashed `import torch`).
    versions = run(poetry, "run", "python", "-c",
                   "import torch, lightning, dvc.version; print(torch.__version__)",
                   cwd=project, **in_project)  # fmt: skip
    assert versions.stdout.startswith("2.")
    tests = run(poetry, "run", "pytest", "-q", "-p", "no:cacheprovider", cwd=project, **in_project)
    assert re.search(r"\d+ passed", tests.stdout)
    run(poetry, "run", "ruff", "check", ".", cwd=project, **in_project)
