"""The package's layers (src_templates/mlt_project/<layer>/): which imports which, as PROJECT.md's
Layout draws it; what each command loads at start; and that every module is tested."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "src_templates" / "mlt_project"
GUIDE = REPO / "template_configs" / "project" / "PROJECT.md"
TEST_FOLDERS = (REPO / "tests", REPO / "template_configs" / "project" / "tests")
LAYERS = ("base", "data", "model", "training", "serve", "release", "deploy", "scripts")


def imported_layers(path: Path) -> set[str]:
    """The other layers a module imports from, anywhere in it (function-level imports too)."""
    relative = path.relative_to(PACKAGE)
    package = list(relative.parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[: len(package) - (node.level - 1)]
            target += node.module.split(".") if node.module else []
            names = target[:1] or [a.name for a in node.names]  # `from .. import x`
            found |= {name for name in names if name in LAYERS}
    return found - {relative.parts[0]}


def layer_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            graph[parts[0]] |= imported_layers(path)
    return graph


def documented_graph() -> dict[str, set[str]]:
    """PROJECT.md's Layout: `  <layer>  imports  <layers, comma-separated, or nothing>`."""
    layout = GUIDE.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^    (\w+) +imports +(.+)$", layout, re.MULTILINE)
    return {
        layer: set() if names.strip() == "nothing" else {n.strip() for n in names.split(",")}
        for layer, names in rows
    }


def test_the_layers_import_as_the_guide_draws_them():
    assert documented_graph() == layer_graph()


def test_no_layer_imports_one_that_imports_it():
    graph = layer_graph()

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start]
        )

    assert [layer for layer in LAYERS if reaches(layer, layer)] == []


def test_the_package_root_holds_no_module_but_its_name():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == (
        sorted(LAYERS)
    )


# --- what a command loads ----------------------------------------------------------------------


def loaded(modules: str, heavy: set[str]) -> set[str]:
    """Which of `heavy` a fresh interpreter has loaded after importing `modules`."""
    code = f"import sys, {modules}; print(sorted({heavy!r} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src_templates")),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return set(ast.literal_eval(result.stdout.strip()))


def test_data_stages_import_neither_torch_nor_lightning():
    modules = "mlt_project.data.preprocess, mlt_project.data.sample_data"
    assert loaded(modules, {"torch", "lightning"}) == set()


def test_evaluation_and_export_run_the_network_without_lightning():
    modules = (
        "mlt_project.training.evaluate, mlt_project.model.checkpoint, mlt_project.scripts.release"
    )
    assert loaded(modules, {"lightning", "torchmetrics", "torchvision"}) == set()


def test_the_spot_reclaim_path_and_inference_import_no_torch():
    # entrypoint.sh runs checkpoint_sync on SIGTERM with seconds to spare; predict and the AWS
    # scripts run where only ONNX Runtime is installed.
    modules = (
        "mlt_project.scripts.checkpoint_sync, mlt_project.scripts.distributed, "
        "mlt_project.serve.predict, mlt_project.scripts.batch, mlt_project.scripts.dvc_remote, "
        "mlt_project.scripts.register_model"
    )
    assert loaded(modules, {"torch", "lightning"}) == set()


# --- every module is tested ----------------------------------------------------------------------


def test_every_module_is_imported_or_run_by_a_test():
    """Each module of the package appears in a test: imported (`from mlt_project.x.y import`,
    `import mlt_project.x.y`) or run as a command (`-m <module>.x.y`)."""
    modules = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py"
    }
    named = set()
    for folder in TEST_FOLDERS:
        for test in folder.glob("*.py"):
            text = test.read_text()
            named |= set(re.findall(r"^\s*from mlt_project\.([\w.]+) import", text, re.M))
            named |= set(re.findall(r"^\s*import mlt_project\.([\w.]+)", text, re.M))
            named |= set(re.findall(r'"-m",\s*f?"(?:\{MODULE\}|mlt_project)\.([\w.]+)"', text))
    # `from mlt_project.data import preprocess`: the module named after `import` counts too.
    for folder in TEST_FOLDERS:
        for test in folder.glob("*.py"):
            for layer, names in re.findall(
                r"^\s*from mlt_project\.(\w+) import ([\w, ]+)", test.read_text(), re.M
            ):
                named |= {f"{layer}.{name.split(' as ')[0].strip()}" for name in names.split(",")}
    assert sorted(modules - named) == []
