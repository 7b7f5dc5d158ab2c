#!/usr/bin/env python3
"""Write a Lightning + DVC + Poetry project into the repository that holds this template.

Run it from the host repository's root, where this template is a git submodule:

    python3 .ml-aws-template/bootstrap.py [--name NAME] [--torch cu128|cpu] [--dry-run] [--force]

After `git submodule update --remote`, carry the template's changes into the project:

    python3 .ml-aws-template/bootstrap.py --update [--dry-run]   # three-way merge, keeps your edits
    python3 .ml-aws-template/bootstrap.py --check                # exit 1 while behind the template
    python3 .ml-aws-template/bootstrap.py --adopt VERSION        # record the commit baked from

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import tarfile
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
    "aws",
    "boto3",
    "botocore",
    "data",
    "docker",
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
    "release",
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
# Namespace packages of the stack (folders without __init__.py that several distributions fill):
# a module of the same name hides all of them, e.g. `google` breaks `import onnx` (needs
# google.protobuf). google: protobuf; cuda: cuda-bindings (torch); nvidia: the CUDA libraries;
# flufl, ruamel, zc: flufl.lock, ruamel.yaml, zc.lockfile (dvc); poetry: poetry-core (the build).
NAMESPACE_PACKAGES = {"cuda", "flufl", "google", "nvidia", "poetry", "ruamel", "zc"}


class BootstrapError(Exception):
    """A problem the user can fix; main() prints it as one line and exits 1."""


@dataclass(frozen=True)
class Planned:
    path: Path  # relative to the host root
    content: bytes
    mode: int
    action: str  # create | skip | conflict | overwrite | keep | delete


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
    if module in sys.stdlib_module_names or module in RESERVED_MODULES | NAMESPACE_PACKAGES:
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


def template_files(torch: str, tree: Path | None = None) -> list[tuple[Path, Path]]:
    """(source file, destination relative to the host root) for every template file.

    `tree` is an older version of the template (for --update); a folder it lacks holds no files.
    """
    pairs = []
    for source_dir, dest_dir in MANIFEST:
        root = (tree or TEMPLATE_DIR) / source_dir.format(torch=torch)
        if not root.is_dir() and tree is not None:
            continue
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


def render_tree(
    values: dict[str, str], torch: str, tree: Path | None = None
) -> dict[Path, tuple[bytes, int]]:
    """Render every template file; fail on an unused value or a placeholder left behind."""
    used: set[str] = set()
    rendered: dict[Path, tuple[bytes, int]] = {}
    for source, dest in template_files(torch, tree):
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


def template_git(*args: str) -> bytes | None:
    """The output of a git command run in the template, or None when it fails."""
    try:
        result = subprocess.run(
            ["git", "-C", str(TEMPLATE_DIR), *args], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout


def template_version() -> dict[str, object]:
    """The template's git commit, and whether its working tree differs from it."""
    head = template_git("rev-parse", "HEAD")
    commit = head.decode().strip() if head else None
    status = template_git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"template_version": commit, "template_dirty": bool(status) if commit else None}


def record_content(
    values: dict[str, str], torch: str, version: dict[str, object] | None = None
) -> bytes:
    record = {
        "template": "ml-aws-template",
        **(version or template_version()),
        "answers": {**values, "torch": torch},
    }
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


# --- plan and write ------------------------------------------------------------------------


def check_kind(target: Path, path: Path) -> None:
    for parent in list(path.parents)[:-1]:
        if (target / parent).exists() and not (target / parent).is_dir():
            raise BootstrapError(f"{parent} is a file where the project needs a folder; move it")
    if (target / path).is_dir():
        raise BootstrapError(f"{path} is a folder where the project writes a file; move it")


def classify(target: Path, path: Path, content: bytes, force: bool, keep: bool) -> str:
    existing = target / path
    check_kind(target, path)
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
    """Write to a temporary file beside `path`, then rename it into place.

    A run that was killed mid-write left its temporary file: remove it now.
    """
    stale = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for sibling in path.parent.iterdir() if path.parent.is_dir() else ():
        if stale.fullmatch(sibling.name) and sibling.is_file():
            sibling.unlink()
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
            dest = target / item.path
            if item.action == "delete":
                backups[dest] = (dest.read_bytes(), dest.stat().st_mode & 0o777)
                dest.unlink()
                continue
            if item.action not in ("create", "overwrite"):
                continue
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


def shorten(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def print_plan(plan: list[Planned]) -> None:
    width = max(len(item.action) for item in plan)
    for item in plan:
        print(f"  {item.action:<{width}}  {item.path.as_posix()}")


def next_steps(module: str) -> str:
    get_poetry = (
        "\n  pipx install poetry   # not on PATH; or https://python-poetry.org/docs/#installation"
    )
    poetry = "" if shutil.which("poetry") else get_poetry
    return f"""
Next steps:{poetry}
  poetry install        # locks first: a few minutes
  poetry run python -m {module}.data.sample_data   # or put images in data/raw/<class>/
  poetry run dvc repro
  poetry run pytest
Read README.md for the layout, the params and the release flow."""


# --- update, check, adopt ------------------------------------------------------------------
# The recorded version is rendered from the submodule's own history: that commit's tree is
# extracted into a temporary folder and rendered by *this* file's code, not by the old
# bootstrap.py, so the MANIFEST and the two tokens are the contract between versions and a fix
# to rendering reaches both sides of the merge. A MANIFEST folder the old tree lacks is empty.

ADOPT_HINT = (
    "run `python3 .ml-aws-template/bootstrap.py --adopt VERSION` with the template commit the "
    "project was baked from (git -C .ml-aws-template log --oneline)"
)
MARKER_RE = re.compile(rb"^(?:<{7}|>{7})(?: |$)", re.MULTILINE)


def read_record(target: Path) -> tuple[dict[str, str], str, str | None]:
    """(names, torch, template version or None) from the project's record."""
    path = target / RECORD_FILE
    if not path.is_file():
        raise BootstrapError(f"{RECORD_FILE} is missing; {ADOPT_HINT}")
    try:
        record = json.loads(path.read_bytes())
    except ValueError:
        record = None
    answers = record.get("answers") if isinstance(record, dict) else None
    if not isinstance(answers, dict) or not isinstance(answers.get("project_name"), str):
        raise BootstrapError(f"{RECORD_FILE} holds no answers; delete it and {ADOPT_HINT}")
    values = derive_names(answers["project_name"])
    torch = answers.get("torch")
    if {**values, "torch": torch} != answers or torch not in TORCH_VARIANTS:
        raise BootstrapError(f"{RECORD_FILE} holds odd answers; delete it and {ADOPT_HINT}")
    version = record.get("template_version")
    return values, torch, version if isinstance(version, str) else None


def resolve_commit(version: str) -> str:
    """The full hash of `version`, which must be a commit in the template's history."""
    spec = f"{version}^{{commit}}"
    # A leading "-" would be read as an option.
    found = None if version.startswith("-") else template_git("rev-parse", "--verify", spec)
    if not found:
        raise BootstrapError(
            f"{version!r} is not a commit in the template's history at {TEMPLATE_DIR}; "
            f"list them with `git -C {TEMPLATE_DIR} log --oneline` (run `git fetch` there first)"
        )
    return found.decode().strip()


def render_version(
    values: dict[str, str], torch: str, commit: str
) -> dict[Path, tuple[bytes, int]]:
    """Render the template as it was at `commit`."""
    archive = template_git("archive", "--format=tar", commit)
    if archive is None:
        raise BootstrapError(f"cannot read template version {commit} from {TEMPLATE_DIR}")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # The "data" filter (Python 3.10.12+) refuses members that would land outside tmp.
        tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        return render_tree(values, torch, Path(tmp))


def merge_text(
    ours: bytes, base: bytes, theirs: bytes, labels: tuple[str, ...]
) -> tuple[bytes, bool] | None:
    """`git merge-file`: (result, clean), or None when git cannot merge them (binary files)."""
    with tempfile.TemporaryDirectory() as tmp:
        names = [Path(tmp, name) for name in ("ours", "base", "theirs")]
        for name, content in zip(names, (ours, base, theirs), strict=True):
            name.write_bytes(content)
        labelled = [arg for label in labels for arg in ("-L", label)]
        result = subprocess.run(["git", "merge-file", "-p", *labelled, *names], capture_output=True)
    # The exit status counts the conflicts (at most 127); a negative status is an error.
    if not 0 <= result.returncode <= 127:
        return None
    return result.stdout, result.returncode == 0


def merge_file(
    target: Path,
    path: Path,
    base: tuple[bytes, int] | None,
    theirs: tuple[bytes, int] | None,
    labels: tuple[str, ...],
) -> tuple[str, str, Planned | None]:
    """(outcome, note, write or None) for one file: base = old render, theirs = new render."""
    check_kind(target, path)
    current = target / path
    ours = current.read_bytes() if current.exists() else None
    if theirs is None:
        if ours is None:
            return "removed", "upstream; already gone", None
        if base is not None and ours == base[0]:
            return "removed", "upstream; deleted", Planned(path, b"", 0, "delete")
        return "removed", "upstream; left in place: you changed it", None
    if ours is None:
        if base is None:
            return "new", "", Planned(path, *theirs, "create")
        changed = "; the template changed it" if base != theirs else ""
        return "kept", f"you deleted it{changed}", None
    mode = current.stat().st_mode & 0o777
    if base is not None and base[1] != theirs[1]:
        mode = theirs[1]
    if ours == theirs[0]:
        return "unchanged", "", None
    if base is not None and base[0] == theirs[0]:
        return "kept", "you changed it; the template did not", None
    if base is not None and ours == base[0]:
        return "updated", "", Planned(path, theirs[0], mode, "overwrite")
    if MARKER_RE.search(ours):
        return "conflict", "conflict markers left from an earlier update; resolve them", None
    merged = merge_text(ours, base[0] if base else b"", theirs[0], labels)
    if merged is None:
        return "conflict", "git cannot merge it; merge it by hand", None
    content, clean = merged
    if clean and content == ours:
        return "kept", "you changed it; it has the template's change already", None
    if clean:
        return "updated", "merged with your changes", Planned(path, content, mode, "overwrite")
    return "conflict", "you both changed the same lines", Planned(path, content, mode, "overwrite")


def update_plan(target: Path, values: dict[str, str], torch: str, old: str, new: str):
    """Per file (path, outcome, note) rows, and the writes that carry old -> new into target."""
    before = render_version(values, torch, old)
    after = render_tree(values, torch)
    labels = ("yours", f"template {old[:8]}", f"template {new[:8]}")
    rows, writes = [], []
    for path in sorted(set(before) | set(after)):
        outcome, note, write = merge_file(target, path, before.get(path), after.get(path), labels)
        rows.append((path, outcome, note))
        writes += [write] if write else []
    return rows, writes


def run_update(args: argparse.Namespace, target: Path) -> int:
    """--update (with --dry-run) and --check."""
    values, torch, old = read_record(target)
    if old is None:
        raise BootstrapError(f"{RECORD_FILE} records no template version; {ADOPT_HINT}")
    old = resolve_commit(old)
    version = template_version()
    new = version["template_version"]
    if not isinstance(new, str):
        raise BootstrapError(f"the template at {TEMPLATE_DIR} is not a git checkout; clone it")
    rows, writes = update_plan(target, values, torch, old, new)
    conflicts = [path.as_posix() for path, outcome, _ in rows if outcome == "conflict"]
    if args.check:
        changing = {w.path.as_posix() for w in writes} | set(conflicts)
        return report_check(old, new, [row for row in rows if row[0].as_posix() in changing])
    verb = "Would update" if args.dry_run else "Updating"
    name = values["project_name"]
    print(f"{verb} project {name!r} from template {old[:8]} to {new[:8]} in {target}")
    print_rows(rows)
    if args.dry_run:
        if conflicts:
            shown = f"{len(conflicts)} file(s) would conflict: {shorten(conflicts)}"
            raise BootstrapError(f"{shown}; nothing was written")
        return 0
    record = record_content(values, torch, version)
    if not conflicts and (target / RECORD_FILE).read_bytes() != record:
        writes.append(Planned(Path(RECORD_FILE), record, 0o644, "overwrite"))
    apply_plan(target, writes)
    if conflicts:
        raise BootstrapError(
            f"{len(conflicts)} conflict(s) left in {shorten(conflicts)}; resolve the <<<<<<< "
            f"markers, then run `python3 .ml-aws-template/bootstrap.py --adopt {new}`"
        )
    print(f"Recorded template version {new[:8]} in {RECORD_FILE}")
    return 0


def report_check(old: str, new: str, changing: list[tuple[Path, str, str]]) -> int:
    """--check: exit 0 when the project is at the template's version with nothing to merge."""
    if old == new and not changing:
        print(f"Up to date with template {new[:8]}")
        return 0
    print(f"Project at template {old[:8]}, submodule at {new[:8]}; --update would change:")
    print_rows(changing or [(Path(RECORD_FILE), "updated", "the recorded version only")])
    raise BootstrapError("the project is not at the template's version; run --update")


def run_adopt(args: argparse.Namespace, target: Path) -> int:
    """--adopt VERSION: record that the project was baked from VERSION, so --update can work."""
    commit = resolve_commit(args.adopt)
    if (target / RECORD_FILE).exists():
        values, torch, _ = read_record(target)
    else:
        values, torch = derive_names(args.name or target.name), args.torch
    marked = [
        path.as_posix()
        for path in render_tree(values, torch)
        if (target / path).is_file() and MARKER_RE.search((target / path).read_bytes())
    ]
    if marked:
        raise BootstrapError(f"conflict markers left in {', '.join(marked)}; resolve them first")
    version = {"template_version": commit, "template_dirty": False}
    write_atomic(target / RECORD_FILE, record_content(values, torch, version), 0o644)
    answers = ", ".join(f"{k}={v}" for k, v in {**values, "torch": torch}.items())
    print(f"Recorded template version {commit[:8]} with answers {answers} in {RECORD_FILE}")
    return 0


def print_rows(rows: list[tuple[Path, str, str]]) -> None:
    for path, outcome, note in rows:
        print(f"  {outcome:<9}  {path.as_posix()}" + (f"  ({note})" if note else ""))


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
        "cpu: CPU-only wheels on Linux, PyPI elsewhere (laptops, CI)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--update", action="store_true", help="merge in the template's changes")
    mode.add_argument("--check", action="store_true", help="exit 1 if behind the template")
    mode.add_argument("--adopt", metavar="VERSION", help="record the template commit baked from")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help="overwrite files that differ")
    group.add_argument(
        "--keep-existing",
        action="store_true",
        help="leave files that differ as they are and write the rest",
    )
    args = parser.parse_args(argv)
    if (args.update or args.check or args.adopt) and (args.force or args.keep_existing):
        parser.error("--force and --keep-existing apply to baking, not to --update/--check/--adopt")
    return args


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
    if args.update or args.check:
        return run_update(args, target)
    if args.adopt:
        return run_adopt(args, target)
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
        raise BootstrapError(
            f"{len(conflicts)} file(s) exist and differ: {shorten(conflicts)}; nothing was "
            "written. Rerun with "
            "--force to overwrite them or --keep-existing to leave them as they are"
        )
    if args.dry_run:
        return 0
    apply_plan(target, plan)
    kept = [item.path.as_posix() for item in plan if item.action == "keep"]
    if kept:
        print(f"Kept your version of {', '.join(kept)}; compare it with the template's by hand.")
    print(next_steps(values["module_name"]))
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
