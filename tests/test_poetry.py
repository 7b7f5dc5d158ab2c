"""The generated pyproject.toml with real Poetry: both variants pass `poetry check`, and each one
locks and installs, taking torch and torchvision from its PyTorch index on Linux.

download.pytorch.org cannot be reached where these tests run, so `pytorch_index` serves a local
PEP 503 index on 127.0.0.1 with the paths of the real one (`/whl/cpu/`, `/whl/cu128/`), holding
the torch wheels on this machine's disk; each test copy's pyproject.toml gets that host in place of
download.pytorch.org (the shipped templates keep the real URL). Everything else comes from PyPI.

What this proves: Poetry locks each variant for every platform (the PyPI branch for macOS
included), takes torch and torchvision from the explicit source on Linux and only there, installs
that build, nothing else comes from the PyTorch source, and the cu128 variant locks the CUDA 12
line of onnxruntime-gpu. Both paths serve the real CPU build of torch on this disk (2.13.0+cpu):
for cpu it is the real thing (the environment holds no NVIDIA library, and its size is close to
a real one); for cu128 it stands in for the `+cu128` builds, which are not on this disk (PyPI's
CUDA 13 torch, the only CUDA build here, declares its NVIDIA libraries through cuda-toolkit's
extras, and Poetry did not finish locking it in 30 minutes). What it cannot prove: what the real
indexes list and how those builds work together, and the CUDA libraries of a cu128 environment.
The only torchvision wheels here are PyPI's, built against CUDA torch, so neither environment
can import torchvision and the projects' own tests cannot run in them here.
"""

from __future__ import annotations

import functools
import hashlib
import html
import http.server
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from helpers import REPO, run

pytestmark = pytest.mark.poetry

POETRY = os.environ.get("POETRY") or shutil.which("poetry")
# PyPI's JSON API, which Poetry reads by default, is not served on the machines these tests
# run on; the pypi-mirror plugin points Poetry at PyPI's simple index instead, without
# touching pyproject.toml or poetry.lock.
MIRROR = {"POETRY_PYPI_MIRROR_URL": "https://pypi.org/simple/"}
PYTORCH_HOST = "https://download.pytorch.org"
# The wheels each index path serves: the real CPU build, as itself and as the stand-in for cu128
# (see the module docstring). torchvision is PyPI's build: 0.28.0 pins torch==2.13.0.
CPU_WHEELS = [
    Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"),
    Path("/opt/pypi-more/files/torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
]
INDEX_WHEELS = {"cpu": CPU_WHEELS, "cu128": CPU_WHEELS}
TORCH_VERSION = {"cpu": "2.13.0+cpu", "cu128": "2.13.0+cpu"}


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def poetry() -> str:
    if not POETRY:
        skip_or_fail("Poetry not found: set POETRY or run `make test`")
    return POETRY


def bake(target: Path, torch: str) -> Path:
    target.mkdir()
    run("python3", REPO / "bootstrap.py", "--target", target, "--name", "poetry-demo",
        "--torch", torch, cwd=target)  # fmt: skip
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_simple_index(root: Path, wheels: dict[str, list[Path]]) -> None:
    """`root/whl/<variant>/<project>/index.html` as PEP 503 pages, with each wheel's sha256 and its
    core metadata beside it (PEP 658), so that Poetry reads versions without fetching wheels."""
    for variant, paths in wheels.items():
        folder = root / "whl" / variant
        folder.mkdir(parents=True)
        links: dict[str, list[str]] = {}
        for wheel in paths:
            (folder / wheel.name).symlink_to(wheel)
            with zipfile.ZipFile(wheel) as archive:
                (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
                metadata = archive.read(name)
            (folder / f"{wheel.name}.metadata").write_bytes(metadata)
            meta_hash = hashlib.sha256(metadata).hexdigest()
            href = html.escape(f"/whl/{variant}/{wheel.name}#sha256={sha256(wheel)}")
            links.setdefault(wheel.name.split("-")[0], []).append(
                f'<a href="{href}" data-dist-info-metadata="sha256={meta_hash}" '
                f'data-core-metadata="sha256={meta_hash}">{html.escape(wheel.name)}</a><br>'
            )
        for project, anchors in links.items():
            (folder / project).mkdir()
            (folder / project / "index.html").write_text(
                "<!DOCTYPE html><html><body>\n" + "\n".join(anchors) + "\n</body></html>\n"
            )


class IndexHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the index folder; records each request's path and status instead of logging."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urllib.parse.unquote(self.path)  # torch-2.13.0%2Bcpu-...
        self.server.requests.append((path, int(code)))  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class LocalIndex:
    url: str  # stands for https://download.pytorch.org
    requests: list[tuple[str, int]]  # (path, status) of every request served


@pytest.fixture(scope="module")
def pytorch_index(tmp_path_factory) -> LocalIndex:
    """A local stand-in for download.pytorch.org on 127.0.0.1, stopped at teardown."""
    missing = [str(w) for paths in INDEX_WHEELS.values() for w in paths if not w.is_file()]
    if missing:
        skip_or_fail(f"torch wheels for the local PyTorch index not found: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("pytorch-index")
    write_simple_index(root, INDEX_WHEELS)
    handler = functools.partial(IndexHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalIndex(f"http://127.0.0.1:{server.server_port}", server.requests)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def poetry_cache(tmp_path_factory):
    """Poetry's cache for these tests, shared by both variants: the local index's packages must
    not reach the user's cache under the real source names, and the first run is a new user's."""
    cache = tmp_path_factory.mktemp("poetry-cache")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)  # gigabytes of wheels


@dataclass(frozen=True)
class Installed:
    variant: str
    project: Path
    env: dict[str, str]  # for `run` in the project
    lock: dict
    index: LocalIndex


def env_size(venv: Path) -> str:
    return subprocess.run(["du", "-sh", venv], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module", params=["cpu", "cu128"])
def installed(request, poetry, pytorch_index, poetry_cache, tmp_path_factory):
    """A baked project of each variant, locked and installed by Poetry against the local index."""
    variant = request.param
    project = bake(tmp_path_factory.mktemp(f"poetry-{variant}") / "p", variant)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert text.count(f"{PYTORCH_HOST}/whl/") == 1, "one PyTorch source, to point at the index"
    pyproject.write_text(text.replace(PYTORCH_HOST, pytorch_index.url))
    env = {
        "POETRY_VIRTUALENVS_IN_PROJECT": "true",
        "POETRY_CACHE_DIR": str(poetry_cache),
        **MIRROR,
    }
    start = time.perf_counter()
    run(poetry, "lock", "--no-interaction", cwd=project, **env)
    locked = time.perf_counter()
    install = run(poetry, "install", "--no-interaction", cwd=project, **env)
    done = time.perf_counter()
    assert "Writing lock file" not in install.stdout, "install re-locked a fresh lock"
    print(f"\n{variant}: poetry lock {locked - start:.0f}s, poetry install {done - locked:.0f}s, "
          f"environment {env_size(project / '.venv')}")  # fmt: skip
    lock = tomllib.loads((project / "poetry.lock").read_text())
    yield Installed(variant, project, env, lock, pytorch_index)
    shutil.rmtree(project / ".venv", ignore_errors=True)  # gigabytes


@pytest.mark.parametrize("torch", ["cpu", "cu128"])
def test_poetry_check_passes(poetry, tmp_path, torch):
    project = bake(tmp_path / "p", torch)
    result = run(poetry, "check", cwd=project, **MIRROR)
    assert "All set!" in result.stdout + result.stderr


# Where each variant takes torch and torchvision from its index; PyPI everywhere else.
INDEX_MARKERS = {
    "cpu": "platform_system == 'Linux'",
    "cu128": "platform_system == 'Linux'",
}
ELSEWHERE_MARKERS = {
    "cpu": "platform_system != 'Linux'",
    "cu128": "platform_system != 'Linux'",
}


@pytest.mark.parametrize("torch", ["cpu", "cu128"])
def test_each_variant_takes_torch_from_its_index_on_linux_only(tmp_path, torch):
    project = bake(tmp_path / "p", torch)
    config = tomllib.loads((project / "pyproject.toml").read_text())
    (source,) = config["tool"]["poetry"]["source"]
    assert source == {
        "name": f"pytorch-{torch}",
        "url": f"{PYTORCH_HOST}/whl/{torch}",
        "priority": "explicit",
    }
    for package in ("torch", "torchvision"):
        assert config["tool"]["poetry"]["dependencies"][package] == [
            {"markers": INDEX_MARKERS[torch], "source": f"pytorch-{torch}"},
            {"markers": ELSEWHERE_MARKERS[torch]},
        ]


def test_lock_takes_torch_from_the_index_on_linux_and_from_pypi_elsewhere(installed):
    index_url = f"{installed.index.url}/whl/{installed.variant}"
    from_index = {
        p["name"]: p["version"]
        for p in installed.lock["package"]
        if p.get("source", {}).get("url") == index_url
    }
    assert from_index.keys() == {"torch", "torchvision"}, "only they come from the PyTorch index"
    assert from_index["torch"] == TORCH_VERSION[installed.variant]
    for package in ("torch", "torchvision"):
        sources = [p.get("source") for p in installed.lock["package"] if p["name"] == package]
        assert None in sources, f"{package} has no PyPI entry for macOS"


def test_install_takes_the_variants_build(installed):
    probe = (
        "import importlib.metadata as m, onnxruntime, torch\n"
        "names = sorted({d.metadata['Name'].lower() for d in m.distributions()})\n"
        "print(torch.__version__, torch.version.cuda, *names)"
    )
    out = run(POETRY, "run", "python", "-c", probe, cwd=installed.project, **installed.env)
    version, cuda, *names = out.stdout.split()
    assert version == TORCH_VERSION[installed.variant]
    served = {path for path, status in installed.index.requests if status == 200}
    torch_wheel = INDEX_WHEELS[installed.variant][0].name
    assert f"/whl/{installed.variant}/{torch_wheel}" in served, "torch was not downloaded from it"
    assert "torchvision" in names
    nvidia = [n for n in names if n.startswith(("nvidia-", "triton", "cuda-"))]
    assert cuda == "None"  # the CPU build, served on both paths
    if installed.variant == "cpu":
        assert nvidia == [], "the cpu environment holds CUDA libraries"
        assert "onnxruntime" in names
    else:
        assert "onnxruntime-gpu" in names and "onnxruntime" not in names


def test_cu128_locks_the_cuda_12_line_of_onnxruntime_gpu(installed):
    if installed.variant != "cu128":
        pytest.skip("onnxruntime-gpu is the cu128 variant's")
    # One entry per Python range it resolved to. From 1.27 its wheels are CUDA 13 builds
    # (tests/test_onnxruntime_cuda.py reads their metadata).
    versions = [p["version"] for p in installed.lock["package"] if p["name"] == "onnxruntime-gpu"]
    assert versions
    assert all(tuple(map(int, v.split(".")[:2])) < (1, 27) for v in versions), versions


def test_requirements_serve_follows_this_lock_in_one_command(installed):
    """The Quick start's step after the first `poetry install`: `scripts.serve_requirements`
    writes requirements-serve.txt from the real lock, and `--check` (the project's own test)
    then passes.

    The pins bootstrap wrote are the lock of the day the template's files were written. PyPI
    moves on (idna 3.20 -> 3.21 failed a clean clone's CI the next day), so a difference from
    today's lock is not a failure of the template: it is reported as a warning that says how to
    refresh the template's files (run the command on these tests' locks, copy the result to
    template_configs/torch-<variant>/)."""
    project, env = installed.project, installed.env
    command = (POETRY, "run", "python", "-m", "poetry_demo.scripts.serve_requirements")
    shipped = pinned(project / "requirements-serve.txt")
    run(*command, cwd=project, **env)  # the user's step: write it from the lock
    assert run(*command, "--check", cwd=project, check=False, **env).returncode == 0
    written = pinned(project / "requirements-serve.txt")
    assert {"onnxruntime-gpu" if installed.variant == "cu128" else "onnxruntime", "starlette",
            "uvicorn", "numpy", "pillow"} <= written.keys()  # fmt: skip
    assert not written.keys() & {"torch", "torchvision", "lightning", "dvc", "pandas"}
    moved = sorted(
        f"{name} {shipped.get(name, '-')} -> {written.get(name, '-')}"
        for name in shipped.keys() | written.keys()
        if shipped.get(name) != written.get(name)
    )
    if moved:
        warnings.warn(
            f"template_configs/torch-{installed.variant}/requirements-serve.txt is behind PyPI "
            f"({', '.join(moved)}): write it again from this test's lock",
            stacklevel=1,
        )


def pinned(requirements: Path) -> dict[str, str]:
    """{name: version} of a requirements file of `name==version` lines."""
    lines = requirements.read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))
