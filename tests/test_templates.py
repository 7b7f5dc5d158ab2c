"""The templates are real code before rendering: they lint, import and pass their own tests."""

from __future__ import annotations

import os
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
    assert "warning" not in result.stdout.lower()  # pytest config filters what no one can fix


def test_generated_tests_pass_without_sched_getaffinity(tmp_path):
    """As on macOS, which `--torch cpu` is offered for: os has no sched_getaffinity there."""
    (tmp_path / "no_sched_getaffinity.py").write_text(
        "import os\n\ndel os.sched_getaffinity  # before any test module is imported\n"
    )
    result = run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no_sched_getaffinity",
        "-c", REPO / "template_configs" / "torch-cpu" / "pyproject.toml",
        "--rootdir", PROJECT, PROJECT / "tests",
        cwd=PROJECT, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO / 'src_templates'}",
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


def test_guide_layout_lists_every_module_on_a_line_of_its_own():
    guide = (PROJECT / "PROJECT.md").read_text()
    layout = guide.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^  (\S+\.py)\s", layout, re.MULTILINE)
    modules = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    ]
    assert sorted(listed) == sorted(modules)


def readme_params_table() -> dict[str, set[str]]:
    """The keys README's params table names, by section: the backticked names of each row's
    second cell, leaving out what parentheses say about them (values, examples)."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("### The params\n", 1)[1].split("\n## ", 1)[0]
    keys = {}
    for section, cell in re.findall(r"^\| `(\w+)` \| (.+) \|$", table, re.MULTILINE):
        keys[section] = set(re.findall(r"`(\w+)`", re.sub(r"\([^()]*\)", "", cell)))
    return keys


def test_readme_params_table_names_every_key_the_code_takes():
    """The keys are the schema's: each section's declared fields (config.py), and the
    parameters of the signatures that take the rest: the optimizer's keys of `training`
    (Optimization, after max_epochs, which training passes itself) and `augment` (BatchAugment,
    and BatchMix after num_classes). A network's options are its own, not the table's."""
    import dataclasses
    import typing

    from mlt_project.base.config import Config
    from mlt_project.base.schema import parameters
    from mlt_project.model.augment import BatchAugment
    from mlt_project.model.mix import BatchMix
    from mlt_project.model.optim import Optimization

    signatures = {
        "training": parameters(Optimization, skip=1),
        "augment": parameters(BatchAugment) | parameters(BatchMix, skip=1),
    }
    expected = {}
    for name, kind in typing.get_type_hints(Config).items():
        declared = dataclasses.fields(kind) if dataclasses.is_dataclass(kind) else ()
        expected[name] = {f.name for f in declared if f.name != getattr(kind, "EXTRA", None)}
        expected[name] |= set(signatures.get(name, {}))
    assert expected["training"] >= {"batch_size", "lr", "optimizer"}  # both halves read
    assert expected["augment"] >= {"crop_scale", "mixup_alpha"}
    assert readme_params_table() == expected
