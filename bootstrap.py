#!/usr/bin/env python3
"""Write a Lightning + DVC + Poetry project into the repository that holds this template.

Run it from the host repository's root, where this template is a git submodule:

    python3 .ml-aws-template/bootstrap.py [--name NAME] [--torch cu128|cpu] [--dry-run] [--force]

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent
RECORD_FILE = ".ml-template.json"
HELP_HINT = "see .ml-aws-template/README.md"

# The templates are a working project named `mlt-project` whose package is `mlt_project`;
# rendering renames it. Each token stands for one answer.
TOKENS = {b"mlt_project": "module_name", b"mlt-project": "project_name"}
TOKEN_RE = re.compile(rb"mlt[_-]project")

# What is written where: (folder in this template, folder in the host project).
# `{torch}` picks the pyproject.toml (and lock) of the chosen PyTorch variant.
MANIFEST = (
    ("template_configs/project", "."),
    ("template_configs/torch-{torch}", "."),
    ("src_templates/mlt_project", "src/mlt_project"),
)
TORCH_VARIANTS = ("cu128", "cpu")
IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".DS_Store"}

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[._-][A-Za-z0-9]+)*")
MAX_NAME_LENGTH = 64
# Packages the generated project imports, and folders it creates at its root: a module with
# one of these names would shadow them or be confused with them.
RESERVED_MODULES = {
    "aiobotocore",
    "boto3",
    "botocore",
    "data",
    "dotenv",
    "dvc",
    "dvc_s3",
    "lightning",
    "lightning_fabric",
    "logs",
    "models",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "pandas",
    "pil",
    "plots",
    "pyarrow",
    "pytest",
    "pytorch_lightning",
    "releases",
    "ruff",
    "s3fs",
    "scipy",
    "sklearn",
    "src",
    "tensorboard",
    "test",
    "tests",
    "torch",
    "torchmetrics",
    "torchvision",
    "tqdm",
    "yaml",
}


class BootstrapError(Exception):
    """A problem the user can fix; main() prints it as one line and exits 1."""


@dataclass(frozen=True)
class Planned:
    path: Path  # relative to the host root
    content: bytes
    mode: int
    action: str  # create | skip | conflict | overwrite | keep


# --- names ---------------------------------------------------------------------------------


def derive_names(raw: str) -> dict[str, str]:
    """Project name (PEP 503 normalised) and module name (snake_case) from a folder or --name."""
    if TOKEN_RE.search(re.sub(r"[._-]+", "-", raw.lower()).encode()):
        raise BootstrapError(f"name {raw!r} contains the template's own placeholder; pass --name")
    if len(raw) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(raw):
        suggestion = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
        fix = f"pass --name {suggestion}" if NAME_RE.fullmatch(suggestion) else "pass --name"
        raise BootstrapError(
            f"project name {raw!r} is not usable: use letters, digits and single '-', '_' or '.' "
            f"between them, starting with a letter, at most {MAX_NAME_LENGTH} characters; {fix}"
        )
    project = re.sub(r"[._-]+", "-", raw.lower())
    module = project.replace("-", "_")
    if keyword.iskeyword(module) or keyword.issoftkeyword(module):
        raise BootstrapError(f"module name {module!r} is a Python keyword; pass another --name")
    if module in sys.stdlib_module_names or module in RESERVED_MODULES:
        raise BootstrapError(
            f"module name {module!r} would shadow the package or folder of the same name; "
            "pass another --name"
        )
    return {"project_name": project, "module_name": module}


# --- rendering -----------------------------------------------------------------------------


def render(content: bytes, values: dict[str, str], used: set[str]) -> bytes:
    """Replace every token; a token without a value is an error. Records the tokens used."""

    def substitute(match: re.Match[bytes]) -> bytes:
        name = TOKENS[match.group()]
        if name not in values:
            raise BootstrapError(f"template uses {name!r} but no value was given for it")
        used.add(name)
        return values[name].encode()

    return TOKEN_RE.sub(substitute, content)


def template_files(torch: str) -> list[tuple[Path, Path]]:
    """(source file, destination relative to the host root) for every template file."""
    pairs = []
    for source_dir, dest_dir in MANIFEST:
        root = TEMPLATE_DIR / source_dir.format(torch=torch)
        if not root.is_dir():
            raise BootstrapError(
                f"template folder {root} is missing; is the submodule checked out?"
            )
        for source in sorted(root.rglob("*")):
            relative = source.relative_to(root)
            if source.is_dir() or IGNORED_NAMES.intersection(relative.parts):
                continue
            # Dotfiles are stored as dot-NAME so they act on nothing inside this repository.
            parts = ["." + p[4:] if p.startswith("dot-") else p for p in relative.parts]
            pairs.append((source, Path(dest_dir, *parts)))
    return pairs


def render_tree(values: dict[str, str], torch: str) -> dict[Path, tuple[bytes, int]]:
    """Render every template file; fail on an unused value or a placeholder left behind."""
    used: set[str] = set()
    rendered: dict[Path, tuple[bytes, int]] = {}
    for source, dest in template_files(torch):
        dest = Path(render(dest.as_posix().encode(), values, used).decode())
        content = render(source.read_bytes(), values, used)
        mode = 0o755 if source.stat().st_mode & 0o100 else 0o644
        rendered[dest] = (content, mode)
    unused = sorted(set(values) - used)
    if unused:
        raise BootstrapError(f"values {unused} are used by no template file")
    for dest, (content, _) in rendered.items():
        if TOKEN_RE.search(content) or TOKEN_RE.search(dest.as_posix().encode()):
            raise BootstrapError(f"placeholder left in {dest} after rendering")
    return rendered


# --- template version and record -----------------------------------------------------------


def template_version() -> dict[str, object]:
    """The template's git commit, and whether its working tree differs from it."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(TEMPLATE_DIR), *args], capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return result.stdout.strip()

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"template_version": commit, "template_dirty": dirty}


def record_content(values: dict[str, str], torch: str) -> bytes:
    record = {
        "template": "ml-aws-template",
        **template_version(),
        "answers": {**values, "torch": torch},
    }
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


# --- plan and write ------------------------------------------------------------------------


def classify(target: Path, path: Path, content: bytes, force: bool, keep: bool) -> str:
    existing = target / path
    for parent in list(path.parents)[:-1]:
        if (target / parent).exists() and not (target / parent).is_dir():
            raise BootstrapError(f"{parent} is a file where the project needs a folder; move it")
    if existing.is_dir():
        raise BootstrapError(f"{path} is a folder where the project writes a file; move it")
    if not existing.exists():
        return "create"
    if existing.read_bytes() == content:
        return "skip"
    return "overwrite" if force else "keep" if keep else "conflict"


def make_plan(target: Path, rendered: dict[Path, tuple[bytes, int]], args) -> list[Planned]:
    return [
        Planned(
            path, content, mode, classify(target, path, content, args.force, args.keep_existing)
        )
        for path, (content, mode) in sorted(rendered.items())
    ]


def write_atomic(path: Path, content: bytes, mode: int) -> None:
    """Write to a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_plan(target: Path, plan: list[Planned]) -> None:
    """Write the plan; on any failure undo it: remove what this run created, restore the rest."""
    created_files: list[Path] = []
    created_dirs: list[Path] = []
    backups: dict[Path, tuple[bytes, int]] = {}
    try:
        for item in plan:
            if item.action not in ("create", "overwrite"):
                continue
            dest = target / item.path
            for parent in reversed(dest.parents):
                if parent.is_relative_to(target) and not parent.exists():
                    parent.mkdir()
                    created_dirs.append(parent)
            if item.action == "overwrite":
                backups[dest] = (dest.read_bytes(), dest.stat().st_mode & 0o777)
            write_atomic(dest, item.content, item.mode)
            if item.action == "create":
                created_files.append(dest)
    except BaseException:
        for path in created_files:
            path.unlink(missing_ok=True)
        for path, (content, mode) in backups.items():
            write_atomic(path, content, mode)
        for path in reversed(created_dirs):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def print_plan(plan: list[Planned]) -> None:
    width = max(len(item.action) for item in plan)
    for item in plan:
        print(f"  {item.action:<{width}}  {item.path.as_posix()}")


def next_steps(module: str, torch: str) -> str:
    lock = (
        "poetry install" if torch == "cpu" else "poetry install        # locks first: a few minutes"
    )
    return f"""
Next steps:
  {lock}
  poetry run python -m {module}.data.sample_data   # or put images in data/raw/<class>/
  poetry run dvc repro
  poetry run pytest
Read README.md for the layout, the params and the release flow."""


# --- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        type=Path,
        default=TEMPLATE_DIR.parent,
        help="host project root (default: the folder that holds this template)",
    )
    parser.add_argument("--name", help="project name (default: the host folder's name)")
    parser.add_argument(
        "--torch",
        choices=TORCH_VARIANTS,
        default="cu128",
        help="cu128: CUDA 12.8 wheels on Linux x86_64, PyPI elsewhere (default); "
        "cpu: PyPI only, with a ready poetry.lock (laptops, CI)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help="overwrite files that differ")
    group.add_argument(
        "--keep-existing",
        action="store_true",
        help="leave files that differ as they are and write the rest",
    )
    return parser.parse_args(argv)


def check_target(target: Path) -> Path:
    if not target.is_dir():
        raise BootstrapError(f"target {target} is not a folder; create it or pass --target DIR")
    target = target.resolve()
    if target == TEMPLATE_DIR or target.is_relative_to(TEMPLATE_DIR):
        raise BootstrapError(
            f"target {target} is inside the template; run from the host repository's root "
            "or pass --target DIR"
        )
    if not os.access(target, os.W_OK | os.X_OK):
        raise BootstrapError(
            f"target {target} is not writable; fix its permissions or pass --target"
        )
    return target


def run(args: argparse.Namespace) -> int:
    target = check_target(args.target)
    values = derive_names(args.name or target.name)
    rendered = render_tree(values, args.torch)
    rendered[Path(RECORD_FILE)] = (record_content(values, args.torch), 0o644)
    plan = make_plan(target, rendered, args)

    verb = "Would write" if args.dry_run else "Writing"
    print(
        f"{verb} project {values['project_name']!r} (module {values['module_name']}) into {target}"
    )
    print_plan(plan)
    conflicts = [item.path.as_posix() for item in plan if item.action == "conflict"]
    if conflicts:
        shown = ", ".join(conflicts[:5]) + (
            f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        )
        raise BootstrapError(
            f"{len(conflicts)} file(s) exist and differ: {shown}; nothing was written. Rerun with "
            "--force to overwrite them or --keep-existing to leave them as they are"
        )
    if args.dry_run:
        return 0
    apply_plan(target, plan)
    kept = [item.path.as_posix() for item in plan if item.action == "keep"]
    if kept:
        print(f"Kept your version of {', '.join(kept)}; compare it with the template's by hand.")
    print(next_steps(values["module_name"], args.torch))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BootstrapError as error:
        # A path in the message may hold a line break; escape it so the message stays one line.
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(error))
        print(f"bootstrap: error: {message} ({HELP_HINT})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
