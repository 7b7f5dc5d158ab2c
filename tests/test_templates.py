"""The templates are real code before rendering: they lint, import and pass their own tests."""

from __future__ import annotations

import re
import sys

import tomllib

from helpers import REPO, run

PACKAGE = REPO / "src_templates" / "mlt_project"
PROJECT = REPO / "template_configs" / "project"


def test_repository_passes_ruff():
    run("ruff", "check", ".", cwd=REPO)
    run("ruff", "format", "--check", ".", cwd=REPO)


def test_package_uses_relative_imports_only():
    absolute = re.compile(r"^\s*(from|import) mlt_project\b", re.MULTILINE)
    offenders = [p.name for p in PACKAGE.rglob("*.py") if absolute.search(p.read_text())]
    assert offenders == []


def test_generated_tests_pass_on_the_unrendered_template():
    result = run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-c", REPO / "template_configs" / "torch-cpu" / "pyproject.toml",
        "--rootdir", PROJECT, PROJECT / "tests",
        cwd=PROJECT, PYTHONPATH=str(REPO / "src_templates"),
    )  # fmt: skip
    assert re.search(r"\b\d+ passed", result.stdout)
    assert "failed" not in result.stdout and "error" not in result.stdout.lower()


def test_pyproject_variants_differ_only_in_where_torch_and_onnxruntime_come_from():
    cpu, cu128 = (
        tomllib.loads((REPO / "template_configs" / f"torch-{v}" / "pyproject.toml").read_text())
        for v in ("cpu", "cu128")
    )
    cpu_deps, cu_deps = (
        set(cpu["project"].pop("dependencies")),
        set(cu128["project"].pop("dependencies")),
    )
    assert cpu_deps - cu_deps == {"onnxruntime>=1.20"}
    assert {d.split(";")[0] for d in cu_deps - cpu_deps} == {
        "onnxruntime-gpu>=1.20,<1.27",
        "onnxruntime>=1.20",
    }
    for variant, config in (("cpu", cpu), ("cu128", cu128)):
        poetry = config["tool"]["poetry"]
        assert set(poetry.pop("dependencies")) == {"torch", "torchvision"}
        assert [s["name"] for s in poetry.pop("source")] == [f"pytorch-{variant}"]
    assert cpu == cu128
