"""The inference path imports only what requirements-serve.txt installs: a static walk of every
import reachable from predict, the server and `python -m <module>.serve` (function-level imports
included, so a lazy import of torch is caught before a lean install meets it), and a fresh
interpreter's sys.modules after importing them (the way tests/test_layers.py checks commands)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "src_templates" / "mlt_project"
ENTRY_POINTS = ("serve/predict.py", "serve/server.py", "serve/__main__.py")
# What the lean install lacks and must never be needed for inference.
FORBIDDEN = {
    "torch",
    "torchvision",
    "lightning",
    "pytorch_lightning",
    "torchmetrics",
    "dvc",
    "pandas",
}
# Import name -> the distribution of requirements-serve.txt that provides it.
LEAN = {
    "numpy": "numpy",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "onnxruntime": "onnxruntime",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "botocore": "botocore",
    "dotenv": "python-dotenv",
}
# Reached only through predict's Parquet input (serve/predict.py: parquet_batches), which says in
# one line that a lean install needs `pip install pyarrow` for it; images need none.
OPTIONAL = {"pyarrow": "data/store.py"}


def module_file(parts: list[str]) -> Path | None:
    """The file of package module `parts` (relative to the package root), if there is one."""
    as_module = PACKAGE.joinpath(*parts).with_suffix(".py") if parts else None
    as_package = PACKAGE.joinpath(*parts, "__init__.py")
    if as_module is not None and as_module.is_file():
        return as_module
    return as_package if as_package.is_file() else None


def with_parents(path: Path) -> list[Path]:
    """A module and the __init__.py of every package above it: importing it runs them all."""
    parts = path.relative_to(PACKAGE).parts[:-1]
    inits = [PACKAGE.joinpath(*parts[:i], "__init__.py") for i in range(len(parts) + 1)]
    return [path, *(p for p in inits if p.is_file())]


def imports(path: Path) -> tuple[set[Path], set[str]]:
    """(the package's modules `path` imports, the top-level names of every other import),
    function-level imports included."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    local: set[Path] = set()
    other: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            other |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            other.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            found = module_file(target)
            assert found is not None, f"{path}: from {'.' * node.level}{node.module} not found"
            local.add(found)
            for alias in node.names:  # `from ..base import cli`: a submodule
                sub = module_file([*target, alias.name])
                if sub is not None and sub.stem == alias.name:
                    local.add(sub)
    return local, other


def walk() -> dict[str, set[Path]]:
    """{third-party top-level name: the package modules that import it}, over every module the
    entry points reach."""
    pending = [f for entry in ENTRY_POINTS for f in with_parents(PACKAGE / entry)]
    seen: set[Path] = set()
    needs: dict[str, set[Path]] = {}
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        local, other = imports(path)
        for module in local:
            pending += with_parents(module)
        for name in other - set(sys.stdlib_module_names) - {"__future__"}:
            needs.setdefault(name, set()).add(path)
    return needs


def test_the_inference_path_imports_nothing_the_lean_install_lacks():
    needs = walk()
    named = {
        name: sorted(str(p.relative_to(PACKAGE)) for p in paths) for name, paths in needs.items()
    }
    assert FORBIDDEN.isdisjoint(named), {k: v for k, v in named.items() if k in FORBIDDEN}
    for name, module in OPTIONAL.items():
        assert named.pop(name, [module]) == [module], (name, named)
    assert set(named) == set(LEAN), named
    # And each of them is pinned in both variants' requirements-serve.txt.
    for variant, runtime in (("cpu", "onnxruntime"), ("cu128", "onnxruntime-gpu")):
        text = (
            REPO / "template_configs" / f"torch-{variant}" / "requirements-serve.txt"
        ).read_text()
        pinned = {line.split("==")[0] for line in text.splitlines() if "==" in line}
        wanted = {runtime if d == "onnxruntime" else d for d in LEAN.values()}
        assert wanted <= pinned, (variant, wanted - pinned)


def loaded_in_fresh_interpreter(modules: list[str], among: set[str]) -> list[str]:
    """Which top-level packages of `among` a fresh interpreter has loaded after importing
    `modules` of the template's package."""
    code = (
        f"import sys, {', '.join(modules)}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(among)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO / "src_templates")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip())


def test_a_fresh_interpreter_serving_loads_no_training_library():
    serving = ["serve.__main__", "serve.server", "serve.predict", "serve.fetch", "deploy.aws.s3"]
    modules = [f"mlt_project.{name}" for name in serving]
    assert loaded_in_fresh_interpreter(modules, FORBIDDEN | set(OPTIONAL)) == []


def test_promotion_evaluates_without_torch():
    """`release promote` runs where serving runs: ONNX Runtime and the released split only."""
    modules = ["mlt_project.scripts.release", "mlt_project.release.promote"]
    assert loaded_in_fresh_interpreter(modules, {"torch", "lightning", "dvc"}) == []
