"""requirements-serve.txt: what each variant ships, and `scripts.serve_requirements`, which writes
it from poetry.lock and checks the two agree (tests/test_poetry.py runs it on a real lock)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO, one_error_line
from mlt_project.base.errors import PipelineError
from mlt_project.scripts.serve_requirements import difference, generate, main

# Written out: the serving closure of the shipped files (both variants alike, but ONNX Runtime).
SHIPPED = {
    "anyio", "botocore", "click", "flatbuffers", "h11", "idna", "jmespath", "numpy", "packaging",
    "pillow", "protobuf", "python-dateutil", "python-dotenv", "pyyaml", "six", "starlette",
    "typing-extensions", "urllib3", "uvicorn",
}  # fmt: skip
RUNTIME = {"cpu": "onnxruntime", "cu128": "onnxruntime-gpu"}
TRAINING = ("torch", "torchvision", "lightning", "torchmetrics", "dvc", "pandas", "pyarrow", "onnx")


@pytest.mark.parametrize("variant", RUNTIME)
def test_each_variant_ships_exactly_the_serving_closure_pinned(variant):
    text = (REPO / "template_configs" / f"torch-{variant}" / "requirements-serve.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9][\w.+]*", line) for line in lines), lines
    names = {line.split("==")[0] for line in lines}
    assert names == SHIPPED | {RUNTIME[variant]}
    assert not names & set(TRAINING)
    assert "scripts.serve_requirements" in text  # says how it is made


PYPROJECT = """
[project]
name = "demo"
dependencies = [
    "torch>=2",
    "numpy>=1.26",
    "onnxruntime-gpu>=1.20,<1.27; sys_platform == 'linux' and platform_machine == 'x86_64'",
    "onnxruntime>=1.20; sys_platform != 'linux' or platform_machine != 'x86_64'",
    "uvicorn>=0.34",
]
"""

# Two entries of numpy (Poetry locks one per Python range), a dependency that applies only on
# Python 3.10, markers per group, an optional dependency and an extra that asks for it.
LOCK = """
[[package]]
name = "numpy"
version = "2.2.6"
markers = 'python_version == "3.10"'
python-versions = ">=3.10"

[[package]]
name = "numpy"
version = "2.4.6"
markers = 'python_version > "3.10"'
python-versions = ">=3.11"

[[package]]
name = "onnxruntime-gpu"
version = "1.26.0"
markers = 'sys_platform == "linux" and platform_machine == "x86_64"'
[package.dependencies]
numpy = ">=1.21.6"
flatbuffers = "*"

[[package]]
name = "onnxruntime"
version = "1.32.0"
markers = 'sys_platform != "linux" or platform_machine != "x86_64"'
[package.dependencies]
numpy = ">=1.21.6"

[[package]]
name = "flatbuffers"
version = "25.12.19"

[[package]]
name = "uvicorn"
version = "0.55.0"
[package.dependencies]
click = ">=7.0"
typing-extensions = {version = ">=4.0", markers = 'python_version < "3.11"'}
h11 = {version = ">=0.8", extras = ["speedups"]}

[[package]]
name = "click"
version = "8.5.1"
markers = {dev = 'python_version == "3.10"'}

[[package]]
name = "typing-extensions"
version = "4.16.0"

[[package]]
name = "h11"
version = "0.16.0"
[package.dependencies]
h11-speedups = {version = "*", optional = true}
[package.extras]
speedups = ["h11-speedups"]

[[package]]
name = "h11-speedups"
version = "1.0"

[[package]]
name = "torch"
version = "2.9.0"
"""


def project(tmp_path: Path, lock: str | None = LOCK) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    if lock is not None:
        (tmp_path / "poetry.lock").write_text(lock)
    return tmp_path


def pins(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_the_closure_is_evaluated_for_the_serving_image(tmp_path):
    root = project(tmp_path)
    text = generate(root / "poetry.lock", root / "pyproject.toml")
    assert pins(text) == [
        "click==8.5.1",
        "flatbuffers==25.12.19",
        "h11==0.16.0",
        "h11-speedups==1.0",
        "numpy==2.4.6",
        "onnxruntime-gpu==1.26.0",
        "uvicorn==0.55.0",
    ]


def test_check_names_the_pin_that_differs_and_the_command(tmp_path, monkeypatch, capsys):
    root = project(tmp_path)
    monkeypatch.chdir(root)
    assert main([]) == 0
    assert main(["--check"]) == 0
    assert difference() is None
    out = root / "requirements-serve.txt"
    out.write_text(out.read_text().replace("numpy==2.4.6", "numpy==2.4.5"))
    capsys.readouterr()
    assert main(["--check"]) == 1
    one_error_line(
        capsys.readouterr().err,
        "requirements-serve.txt pins numpy==2.4.5 but poetry.lock locks 2.4.6",
        "python -m mlt_project.scripts.serve_requirements",
    )
    out.write_text(out.read_text().replace("numpy==2.4.5\n", ""))
    assert "lacks numpy==2.4.6" in difference()
    out.write_text(out.read_text() + "numpy==2.4.6\ntorch==2.9.0\n")
    assert "pins torch==2.9.0, which serving does not need" in difference()


def test_without_a_lock_there_is_nothing_to_disagree_with(tmp_path, monkeypatch, capsys):
    root = project(tmp_path, lock=None)
    monkeypatch.chdir(root)
    (root / "requirements-serve.txt").write_text("numpy==1.0\n")
    assert difference() is None
    assert main(["--check"]) == 0
    assert "no poetry.lock: nothing to check" in capsys.readouterr().out
    assert main([]) == 1
    one_error_line(capsys.readouterr().err, "no poetry.lock: run `poetry lock` first")


def test_a_lock_that_resolves_a_package_twice_for_the_image_is_refused(tmp_path):
    twice = LOCK.replace("markers = 'python_version == \"3.10\"'", "")
    root = project(tmp_path, twice)
    with pytest.raises(PipelineError, match="2 entries of numpy"):
        generate(root / "poetry.lock", root / "pyproject.toml")
