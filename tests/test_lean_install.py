"""The lean install, as the serving image makes it: a fresh venv, `pip install -r
requirements-serve.txt` (the cpu variant, from the package index, as CI does) and the project with
`--no-deps`. There `import torch` fails, and predict and the server run the trained project's
release, answering what the full install answers."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import MODULE, NAME, clean_env, free_port, run
from serving import call, post_image, stop, wait_until_ready

pytestmark = pytest.mark.e2e

TRAINING_ONLY = ("torch", "torchvision", "lightning", "dvc", "pandas", "pyarrow")


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_lean_venv_predicts_and_serves_without_torch(trained_project, tmp_path):
    project = tmp_path / NAME
    shutil.copytree(trained_project.root, project, symlinks=True)
    run("python", "-m", f"{MODULE}.scripts.release", "export-onnx", cwd=project)
    release = project / "releases"

    start = time.perf_counter()
    venv = tmp_path / "lean"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = (python, "-m", "pip", "--disable-pip-version-check")
    # Nothing of this interpreter's environment: the lean venv's python imports only its own.
    lean_env = {k: v for k, v in clean_env(VIRTUAL_ENV=str(venv)).items() if k != "PYTHONPATH"}
    requirements = project / "requirements-serve.txt"
    run(*pip, "install", "--quiet", "--requirement", requirements, cwd=tmp_path, **lean_env)
    run(*pip, "install", "--quiet", "--no-deps", project, cwd=tmp_path, **lean_env)
    installed_in = time.perf_counter() - start
    listed = json.loads(run(*pip, "list", "--format", "json", cwd=tmp_path, **lean_env).stdout)
    names = {entry["name"].lower().replace("_", "-") for entry in listed}
    pinned = {
        line.split("==")[0]
        for line in (project / "requirements-serve.txt").read_text().splitlines()
        if "==" in line
    }
    assert names - {"pip", "setuptools"} == pinned | {NAME}, "the pins are not the closure"
    # Every requirement is met but the project's own training dependencies, left out on purpose.
    broken = run(*pip, "check", cwd=tmp_path, check=False, **lean_env).stdout.splitlines()
    assert broken and all(line.startswith(f"{NAME} 0.1.0 requires ") for line in broken), broken
    for module in TRAINING_ONLY:
        result = run(python, "-c", f"import {module}", cwd=tmp_path, check=False, **lean_env)
        assert result.returncode == 1 and f"No module named '{module}'" in result.stderr, module

    # predict, outside the project: the same CSV as the full install writes.
    images = tmp_path / "images"
    images.mkdir()
    for class_dir in sorted((project / "data" / "raw").iterdir()):
        for path in sorted(class_dir.glob("*.png"))[:2]:
            shutil.copy(path, images / f"{class_dir.name}-{path.name}")
    lean_csv, full_csv = tmp_path / "lean.csv", tmp_path / "full.csv"
    predict = ("-m", f"{MODULE}.serve.predict", images, "--model", release / "model.onnx")
    run(python, *predict, "--out", lean_csv, cwd=tmp_path, **lean_env)
    run(sys.executable, *predict, "--out", full_csv, cwd=tmp_path)
    assert lean_csv.read_text() == full_csv.read_text()

    # The server: start, /ping, one image, SIGTERM -> exit 0.
    port = free_port()
    server = subprocess.Popen(
        [python, "-m", f"{MODULE}.serve", "--model", release, "--port", str(port)],
        cwd=tmp_path, env=lean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_ready(port, server)
        assert call(port, "GET", "/ping").status == 200
        row = rows(lean_csv)[0]
        answer = post_image(port, Path(row["input"]).read_bytes()).json()
    finally:
        code, stderr, seconds = stop(server)
    assert code == 0, stderr[-3000:]
    assert answer["predicted"] == [row["predicted"]]
    for name, probability in answer["probabilities"].items():
        assert abs(probability - float(row[f"score_{name}"])) <= 1e-6
    size = subprocess.run(["du", "-sm", venv], capture_output=True, text=True).stdout.split()[0]
    print(
        f"\nlean venv: installed in {installed_in:.0f}s, {size} MB; server stopped in {seconds:.1f}s"
    )
