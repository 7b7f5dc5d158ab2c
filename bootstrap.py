#!/usr/bin/env python3
"""Write a Lightning + DVC + Poetry project into the repository that holds this template.

Run it from the host repository's root, where this template is a git submodule:

    python3 .ml-aws-template/bootstrap.py [--name NAME] [--torch cu128|cpu] [--dry-run] [--force]

After `git submodule update --remote`, carry the template's changes into the project:

    python3 .ml-aws-template/bootstrap.py --update [--dry-run] [--allow-dirty]   # keeps your edits
    python3 .ml-aws-template/bootstrap.py --check                # exit 1 while behind the template
    python3 .ml-aws-template/bootstrap.py --adopt VERSION        # record the commit baked from

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import difflib
import io
import itertools
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
# `{torch}` picks the chosen PyTorch variant's pyproject.toml, Dockerfile (CUDA image or not) and
# aws/batch-job*.json (GPUs or none); each has the same destination in both variants.
MANIFEST = (
    ("template_configs/project", "."),
    ("template_configs/torch-{torch}", "."),
    ("template_configs/host", "."),
    ("src_templates/mlt_project", "src/mlt_project"),
)
# Files a host repository has already, as a rule. Its README.md is its own: the template's (a
# pointer to the project guide, PROJECT.md) is written only where there is none, never
# overwritten, and --update leaves it alone; so is a host's DVC config (the template's is empty:
# it only makes .dvc/ a DVC repository). The ignore files get the template's lines in a marked
# block, appended to the host's own lines; --update merges only that block.
SEED_FILES = {Path("README.md"), Path(".dvc/config")}
MERGED_FILES = {Path(".gitignore"), Path(".dockerignore"), Path(".dvcignore")}
BLOCK_BEGIN = b"# >>> ml-aws-template: the template's lines, merged by bootstrap.py --update\n"
BLOCK_END = b"# <<< ml-aws-template\n"
BLOCK_RE = re.compile(
    rb"^# >>> ml-aws-template\b[^\n]*\n(.*?)^# <<< ml-aws-template\b[^\n]*(?:\n|\Z)",
    re.DOTALL | re.MULTILINE,
)
# Files the template moved, {old destination: new destination}, written as destinations are
# before rendering (with the tokens, e.g. "src/mlt_project/eval.py"). --update merges a project's
# old file into the new one (merge_moved), so the user's edits move with it. Like MANIFEST, this
# is a contract between versions: entries accumulate and are never removed, and a project several
# versions back follows the chain (a -> b in one release, b -> c in a later one: a goes to c).
# To move a file, `git mv` it in the template and add `"old": "new",` here in the same commit; to
# move it again later, add `"b": "c",` and keep `"a": "b",`. Give each new destination one old
# one. The ignore files (MERGED_FILES) and SEED_FILES never move.
MOVED: dict[str, str] = {
    # The package laid out by layer (base, data, model, training, serve, release, deploy).
    "src/mlt_project/callbacks.py": "src/mlt_project/training/callbacks.py",
    "src/mlt_project/checkpoint.py": "src/mlt_project/model/checkpoint.py",
    "src/mlt_project/cli.py": "src/mlt_project/base/cli.py",
    "src/mlt_project/cluster.py": "src/mlt_project/deploy/aws/cluster.py",
    "src/mlt_project/config.py": "src/mlt_project/base/config.py",
    "src/mlt_project/data/datamodule.py": "src/mlt_project/training/datamodule.py",
    "src/mlt_project/data/resumable.py": "src/mlt_project/training/resumable.py",
    "src/mlt_project/data/stream.py": "src/mlt_project/training/stream.py",
    "src/mlt_project/distributed.py": "src/mlt_project/scripts/distributed.py",
    "src/mlt_project/env.py": "src/mlt_project/base/env.py",
    "src/mlt_project/errors.py": "src/mlt_project/base/errors.py",
    "src/mlt_project/eval.py": "src/mlt_project/training/evaluate.py",
    "src/mlt_project/factories.py": "src/mlt_project/training/factories.py",
    "src/mlt_project/fileio.py": "src/mlt_project/base/fileio.py",
    "src/mlt_project/logs.py": "src/mlt_project/base/logs.py",
    "src/mlt_project/lr_find.py": "src/mlt_project/training/lr_find.py",
    "src/mlt_project/model/classifier.py": "src/mlt_project/training/module.py",
    "src/mlt_project/model/objective.py": "src/mlt_project/model/tasks.py",
    "src/mlt_project/onnx_export.py": "src/mlt_project/serve/onnx_export.py",
    "src/mlt_project/onnx_runtime.py": "src/mlt_project/serve/onnx_runtime.py",
    "src/mlt_project/predict.py": "src/mlt_project/serve/predict.py",
    "src/mlt_project/resume.py": "src/mlt_project/training/resume.py",
    "src/mlt_project/scripts/aws.py": "src/mlt_project/deploy/aws/settings.py",
    "src/mlt_project/scripts/dvcrepo.py": "src/mlt_project/release/dvcrepo.py",
    "src/mlt_project/scripts/export.py": "src/mlt_project/release/export.py",
    "src/mlt_project/scripts/gitrepo.py": "src/mlt_project/release/gitrepo.py",
    "src/mlt_project/scripts/tag.py": "src/mlt_project/release/tag.py",
    "src/mlt_project/scripts/upload.py": "src/mlt_project/release/upload.py",
    "src/mlt_project/scripts/version.py": "src/mlt_project/release/version.py",
    "src/mlt_project/tensor_files.py": "src/mlt_project/model/tensor_files.py",
    "src/mlt_project/train.py": "src/mlt_project/training/train.py",
    "tests/test_objective.py": "tests/test_tasks.py",
}
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
    action: str  # create | skip | conflict | overwrite | keep | merged | delete


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
    """Render every template file; fail on an unused value, a placeholder left behind, or two
    template files written to one destination."""
    used: set[str] = set()
    rendered: dict[Path, tuple[bytes, int]] = {}
    sources: dict[Path, Path] = {}
    for source, dest in template_files(torch, tree):
        dest = Path(render(dest.as_posix().encode(), values, used).decode())
        if dest in sources:
            raise BootstrapError(
                f"{sources[dest]} and {source} are both written to {dest}; "
                "give each a destination of its own in MANIFEST"
            )
        sources[dest] = source
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


def block_lines(content: bytes) -> bytes:
    """The template's lines of an ignore file as the block holds them: ending in a newline."""
    return content + b"\n" if content and not content.endswith(b"\n") else content


def wrap_block(content: bytes) -> bytes:
    """The template's lines of an ignore file between the block's markers."""
    return BLOCK_BEGIN + block_lines(content) + BLOCK_END


def lines_before_block(text: bytes) -> bytes:
    """The host's own ignore file, and a blank line to set the template's block apart."""
    return text + (b"" if not text else b"\n" if text.endswith(b"\n") else b"\n\n")


def plan_file(target: Path, path: Path, content: bytes, mode: int, args) -> Planned:
    """What baking does to one file: create, skip (identical), merged, keep or conflict."""
    check_kind(target, path)
    existing = target / path
    if not existing.exists():
        return Planned(
            path, wrap_block(content) if path in MERGED_FILES else content, mode, "create"
        )
    old = existing.read_bytes()
    if old == content:
        return Planned(path, content, mode, "skip")
    differs = "overwrite" if args.force else "keep" if args.keep_existing else "conflict"
    if path in SEED_FILES:
        return Planned(path, content, mode, "keep")
    if path not in MERGED_FILES:
        return Planned(path, content, mode, differs)
    own_mode = existing.stat().st_mode & 0o777
    block = BLOCK_RE.search(old)
    if block is None:
        return Planned(path, lines_before_block(old) + wrap_block(content), own_mode, "merged")
    if block.group(1) == block_lines(content):
        return Planned(path, old, own_mode, "skip")
    replaced = old[: block.start()] + wrap_block(content) + old[block.end() :]
    return Planned(path, replaced, own_mode, differs)


def make_plan(target: Path, rendered: dict[Path, tuple[bytes, int]], args) -> list[Planned]:
    return [
        plan_file(target, path, content, mode, args)
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
            if item.action not in ("create", "overwrite", "merged"):
                continue
            for parent in reversed(dest.parents):
                if parent.is_relative_to(target) and not parent.exists():
                    parent.mkdir()
                    created_dirs.append(parent)
            if item.action in ("overwrite", "merged"):
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
  git add -A && git commit -m "Bootstrap from ml-aws-template"
  cp .env.example .env   # and fill it in, for S3, Docker and AWS Batch
  poetry install        # locks first: a few minutes (commit poetry.lock)
  poetry run python -m {module}.scripts.serve_requirements   # the serving pins, from that lock
  poetry run python -m {module}.data.sample_data   # or put images in data/raw/<class>/
  poetry run dvc repro
  poetry run pytest
Read PROJECT.md (the project guide) for the data, the layout and the release flow."""


# --- update, check, adopt ------------------------------------------------------------------
# The recorded version is rendered from the submodule's own history: that commit's tree is
# extracted into a temporary folder and rendered by *this* file's code, not by the old
# bootstrap.py, so the MANIFEST and the two tokens are the contract between versions and a fix
# to rendering reaches both sides of the merge. A MANIFEST folder the old tree lacks is empty.
# A file is merged by its destination; one the template moved (MOVED) is merged from the
# project's old path into the new one.

ADOPT_HINT = (
    "run `python3 .ml-aws-template/bootstrap.py --adopt VERSION` with the template commit the "
    "project was baked from (git -C .ml-aws-template log --oneline)"
)
MARKER_RE = re.compile(rb"^(?:<{7}|>{7})(?: |$)", re.MULTILINE)
DELETE = object()  # merge_part's result for a file the update deletes


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


def merge_part(
    ours: bytes | None, base: bytes | None, theirs: bytes | None, labels: tuple[str, ...]
) -> tuple[str, str, bytes | object | None, bool]:
    """(outcome, note, result, listed) for the template's part of a file: base = old render,
    theirs = new render. result: the new content, DELETE, or None (no write). listed: the file
    changes, or keeps a conflict, or misses a change the template made."""
    if theirs is None:
        if ours is None:
            return "removed", "upstream; already gone", None, False
        if ours == base:
            return "removed", "upstream; deleted", DELETE, True
        return "removed", "upstream; left in place: you changed it", None, True
    if ours is None:
        if base is None:
            return "new", "", theirs, True
        if base != theirs:
            return "kept", "you deleted it; the template changed it", None, True
        return "kept", "you deleted it", None, False
    if ours == theirs:
        return "unchanged", "", None, False
    if base == theirs:
        return "kept", "you changed it; the template did not", None, False
    if ours == base:
        return "updated", "", theirs, True
    if MARKER_RE.search(ours):
        note = "conflict markers left from an earlier update; resolve them"
        return "conflict", note, None, True
    merged = merge_text(ours, base or b"", theirs, labels)
    if merged is None:
        return "conflict", "git cannot merge it; merge it by hand", None, True
    content, clean = merged
    if clean and content == ours:
        return "kept", "you changed it; it has the template's change already", None, False
    if clean:
        return "updated", "merged with your changes", content, True
    return "conflict", "you both changed the same lines", content, True


@dataclass(frozen=True)
class Part:
    """The template's part of a host file: all of it, or the marked block of an ignore file."""

    ours: bytes | None  # its content in the host, None where there is none
    before: bytes = b""  # the host's lines around it
    after: bytes = b""
    block: bool = False

    def place(self, content: bytes | None) -> bytes:
        """The whole file with `content` as the template's part (None: without one)."""
        if content is None:
            return self.before + self.after
        return self.before + (wrap_block(content) if self.block else content) + self.after


def template_part(text: bytes | None, path: Path, baked: bool) -> Part:
    """The template's part of a host file (`text`, None where there is none).

    An ignore file without the marked block was written whole by an older bootstrap (`baked`:
    the old template had it), or is the host's own, which gets the block appended.
    """
    if path not in MERGED_FILES:
        return Part(text)
    if text is None:
        return Part(None, block=True)
    block = BLOCK_RE.search(text)
    if block:
        return Part(block.group(1), text[: block.start()], text[block.end() :], block=True)
    if baked:
        return Part(text)
    return Part(None, lines_before_block(text), block=True)


def merge_file(
    target: Path,
    path: Path,
    base: tuple[bytes, int] | None,
    theirs: tuple[bytes, int] | None,
    labels: tuple[str, ...],
) -> tuple[str, str, Planned | None, bool]:
    """(outcome, note, write or None, listed) for one file: base = old render, theirs = new.

    `listed`: the update changes the file, or leaves out a change the template made to it.
    """
    check_kind(target, path)
    current = target / path
    text = current.read_bytes() if current.exists() else None
    part = template_part(text, path, baked=base is not None)
    lines = block_lines if path in MERGED_FILES else (lambda content: content)
    old, new = (lines(side[0]) if side else None for side in (base, theirs))
    outcome, note, result, listed = merge_part(part.ours, old, new, labels)
    if result is None:
        return outcome, note, None, listed
    if result is DELETE:
        rest = part.place(None)
        if not rest.strip():
            return outcome, note, Planned(path, b"", 0, "delete"), True
        note = "upstream; its block taken out of your lines"
        return outcome, note, Planned(path, rest, current.stat().st_mode & 0o777, "overwrite"), True
    if text is None:
        return outcome, note, Planned(path, part.place(result), theirs[1], "create"), True
    mode = current.stat().st_mode & 0o777
    if base is not None and base[1] != theirs[1]:
        mode = theirs[1]
    return outcome, note, Planned(path, part.place(result), mode, "overwrite"), True


def find_moves(
    target: Path,
    values: dict[str, str],
    before: dict[Path, tuple[bytes, int]],
    after: dict[Path, tuple[bytes, int]],
) -> dict[Path, Path]:
    """{new path: old path} for the files MOVED moves between the old render and the new one.

    A chain of entries is followed to the first path the new render has. A move needs its old
    path in the old render only and its new path in the new render only. Where the host has a
    file at the new path already (the user's own), there is no move, so that neither file is
    overwritten: the old path is `removed` (deleted only if unchanged) and the new one is merged
    against nothing, a conflict unless identical, as for any file the host has.
    """

    def dest(path: str) -> Path:
        return Path(render(path.encode(), values, set()).decode())

    table = {dest(a): dest(b) for a, b in MOVED.items()}
    fixed = SEED_FILES | MERGED_FILES
    moves: dict[Path, Path] = {}
    for old in sorted(set(table).intersection(before) - set(after) - fixed):
        new, seen = table[old], {old}
        while new not in after and new in table and new not in seen:
            seen.add(new)
            new = table[new]
        taken = set(before) | fixed | set(moves)
        if new in after and new not in taken and not (target / new).exists():
            moves[new] = old
    return moves


# A moved file that the template also restructured (a function become a method, say) conflicts
# in git merge-file as one rewritten region, even where the user's edits touched lines the
# template kept, re-indented or among new code. relocate() then re-applies each of the user's
# changes (a hunk of base -> ours) where its lines are in the new file: the hunk's old lines and
# the base lines around them, compared without leading and trailing whitespace, must be found in
# exactly one place there. Context is tried wide first, then narrower, then on one side only,
# then none; a window must hold MIN_ANCHOR_LINES lines with a letter or digit, so that a lone
# `return x` or `)` never anchors. A side of context cut short by the start or end of the file
# must meet the new file's start or end. An insertion needs context on both sides: where the
# template added lines at the same place, which go first is the user's call (a conflict, as in
# place). All hunks are placed, or none is.
ANCHOR_CONTEXTS = ((3, 3), (2, 2), (1, 1), (3, 0), (0, 3), (2, 0), (0, 2), (1, 0), (0, 1), (0, 0))
MIN_ANCHOR_LINES = 2
WORD_RE = re.compile(rb"\w")


def user_hunks(base: list[bytes], ours: list[bytes]) -> list[tuple[int, int, list[bytes]]]:
    """The user's changes as (start, end, lines): base[start:end] became `lines`."""
    matcher = difflib.SequenceMatcher(None, base, ours, autojunk=False)
    return [
        (i1, i2, ours[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"
    ]


def indentation(line: bytes) -> int:
    return len(line) - len(line.lstrip(b" \t"))


def find_anchor(
    base: list[bytes], start: int, end: int, theirs: list[bytes]
) -> tuple[int, int] | None:
    """(where base[start:end] is in theirs, the indentation theirs adds to it), or None where
    no window of it and its context is in exactly one place there with one indentation shift."""
    keys = [line.strip() for line in theirs]
    tried = set()
    for before, after in ANCHOR_CONTEXTS:
        if start == end and not (before and after):
            continue
        low, high = max(start - before, 0), min(end + after, len(base))
        edges = (start - before < 0, end + after > len(base))  # cut short: at the file's edge
        window = [line.strip() for line in base[low:high]]
        words = sum(1 for key in window if WORD_RE.search(key))
        if (low, high, edges) in tried or words < MIN_ANCHOR_LINES:
            continue
        tried.add((low, high, edges))
        size = len(window)
        found = [
            at
            for at in range(len(keys) - size + 1)
            if keys[at : at + size] == window
            and (at == 0 or not edges[0])
            and (at + size == len(keys) or not edges[1])
        ]
        if len(found) != 1:
            continue
        shifts = {
            indentation(theirs[found[0] + i]) - indentation(base[low + i])
            for i, key in enumerate(window)
            if key
        }
        if len(shifts) == 1:
            return found[0] + start - low, shifts.pop()
    return None


def reindent(line: bytes, shift: int) -> bytes:
    """`line` indented `shift` more spaces (fewer where negative: only spaces are taken off)."""
    if not line.strip():
        return line
    if shift >= 0:
        return b" " * shift + line
    spaces = len(line) - len(line.lstrip(b" "))
    return line[min(spaces, -shift) :]


def relocate(ours: bytes, base: bytes, theirs: bytes) -> bytes | None:
    """theirs with the user's changes (base -> ours) re-applied where their lines are in it,
    re-indented to fit; None where a change has no one place there, or two overlap."""
    if not all(text.endswith(b"\n") for text in (ours, base, theirs)):
        return None  # a last line without its line break would join the next one
    base_lines, our_lines, their_lines = (
        text.splitlines(keepends=True) for text in (base, ours, theirs)
    )
    placed = []
    for start, end, lines in user_hunks(base_lines, our_lines):
        anchor = find_anchor(base_lines, start, end, their_lines)
        if anchor is None:
            return None
        at, shift = anchor
        placed.append((at, at + end - start, [reindent(line, shift) for line in lines]))
    placed.sort(key=lambda hunk: hunk[:2])
    for (start, end, _), (next_start, _, _) in itertools.pairwise(placed):
        if next_start < end or next_start == start:
            return None
    for start, end, lines in reversed(placed):
        their_lines[start:end] = lines
    return b"".join(their_lines)


def merge_moved(
    target: Path,
    old: Path,
    new: Path,
    base: tuple[bytes, int],
    theirs: tuple[bytes, int],
    labels: tuple[str, ...],
) -> tuple[str, str, list[Planned], bool]:
    """(outcome, note, writes, listed) for a file the template moved from `old` to `new`.

    The user's file at `old` is merged with base = the old render of `old` and theirs = the new
    render of `new`, and written to `new`; `old` is deleted only where the user never changed it.
    Where that merge conflicts, the user's changes are re-applied to the moved lines (relocate)
    if each has one place in the new file; else the conflict stands.
    """
    check_kind(target, old)
    check_kind(target, new)
    current = target / old
    moved = f"from {old.as_posix()}"
    if not current.exists():
        return "kept", f"{moved}: you deleted it", [], True
    ours = current.read_bytes()
    outcome, note, result, _ = merge_part(ours, base[0], theirs[0], labels)
    if outcome == "conflict" and result is None:  # markers left in it, or a binary file
        return outcome, f"{moved}: {note}", [], True
    how = "merged with your changes"
    relocated = relocate(ours, base[0], theirs[0]) if outcome == "conflict" else None
    if relocated is not None:
        outcome, result = "moved", relocated
        how = "your changes re-applied to the moved code: check them"
    # As for an update: the user's mode, unless the template changed it.
    mode = current.stat().st_mode & 0o777 if base[1] == theirs[1] else theirs[1]
    writes = [Planned(new, ours if result is None else result, mode, "create")]
    if ours == base[0]:
        return "moved", moved, [*writes, Planned(old, b"", 0, "delete")], True
    left = f"{old.as_posix()} left in place"
    if outcome == "conflict":
        return outcome, f"{moved}: {note}; {left}", writes, True
    note = f"{moved}, {how}; {left}: delete it once you have checked"
    return "moved", note, writes, True


def update_plan(target: Path, values: dict[str, str], torch: str, old: str, new: str):
    """(path, outcome, note, listed) rows, and the writes that carry old -> new into target.

    The host's own README.md and .dvc/config are no part of it (see SEED_FILES). A moved file
    has one row, on its new path.
    """
    before = render_version(values, torch, old)
    after = render_tree(values, torch)
    moves = find_moves(target, values, before, after)
    labels = ("yours", f"template {old[:8]}", f"template {new[:8]}")
    rows, writes = [], []
    for path in sorted((set(before) | set(after)) - SEED_FILES - set(moves.values())):
        if path in moves:
            source = moves[path]
            outcome, note, changes, listed = merge_moved(
                target, source, path, before[source], after[path], labels
            )
        else:
            outcome, note, write, listed = merge_file(
                target, path, before.get(path), after.get(path), labels
            )
            changes = [write] if write else []
        rows.append((path, outcome, note, listed))
        writes += changes
    return rows, writes


def check_clean(target: Path) -> None:
    """Refuse a host with uncommitted changes: git must hold what --update merges into, so
    that `git diff` shows its changes and `git checkout` undoes them."""
    pathspec = ["."]
    if TEMPLATE_DIR.is_relative_to(target):
        # A moved submodule is how an update starts, not a change of the user's.
        pathspec.append(f":(exclude){TEMPLATE_DIR.relative_to(target).as_posix()}")
    command = ["git", "-C", str(target), "status", "--porcelain", "--untracked-files=all"]
    try:
        result = subprocess.run([*command, "--", *pathspec], capture_output=True, text=True)
    except OSError as error:
        raise BootstrapError(
            f"cannot run git ({error}); install git, or pass --allow-dirty"
        ) from None
    if result.returncode != 0:
        raise BootstrapError(
            f"{target} is not in a git repository, so an update could not be undone; commit "
            "the project to git first, or pass --allow-dirty"
        )
    changed = [line[3:] for line in result.stdout.splitlines() if line.strip()]
    if changed:
        raise BootstrapError(
            f"the project has uncommitted changes ({shorten(changed)}); commit or stash them "
            "first, so that git shows and can undo what --update changes, or pass --allow-dirty"
        )


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
    if args.update and not args.dry_run and not args.allow_dirty:
        check_clean(target)
    rows, writes = update_plan(target, values, torch, old, new)
    conflicts = [path.as_posix() for path, outcome, _, _ in rows if outcome == "conflict"]
    if args.check:
        changing = {w.path.as_posix() for w in writes} | set(conflicts)
        return report_check(old, new, [row for row in rows if row[0].as_posix() in changing])
    verb = "Would update" if args.dry_run else "Updating"
    name = values["project_name"]
    print(f"{verb} project {name!r} from template {old[:8]} to {new[:8]} in {target}")
    listed = [row for row in rows if row[3]]
    print_rows(listed)
    if len(listed) < len(rows):
        print(f"  ({len(rows) - len(listed)} other file(s): nothing to do)")
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


def report_check(old: str, new: str, changing: list[tuple[Path, str, str, bool]]) -> int:
    """--check: exit 0 when the project is at the template's version with nothing to merge."""
    if old == new and not changing:
        print(f"Up to date with template {new[:8]}")
        return 0
    print(f"Project at template {old[:8]}, submodule at {new[:8]}; --update would change:")
    print_rows(changing or [(Path(RECORD_FILE), "updated", "the recorded version only", True)])
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


def print_rows(rows: list[tuple[Path, str, str, bool]]) -> None:
    for path, outcome, note, _ in rows:
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
        help="cu128: CUDA 12.8 wheels on Linux, PyPI elsewhere, a CUDA image and GPU jobs "
        "(default); cpu: CPU-only wheels on Linux, PyPI elsewhere, no CUDA, no GPUs (laptops, CI)",
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
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="--update even when the project has uncommitted changes",
    )
    args = parser.parse_args(argv)
    if (args.update or args.check or args.adopt) and (args.force or args.keep_existing):
        parser.error("--force and --keep-existing apply to baking, not to --update/--check/--adopt")
    if args.allow_dirty and not args.update:
        parser.error("--allow-dirty applies to --update only")
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
    print_notes(target, plan)
    print(next_steps(values["module_name"]))
    return 0


def print_notes(target: Path, plan: list[Planned]) -> None:
    """What happened to the host's own files, after a bake."""
    kept = [i.path.as_posix() for i in plan if i.action == "keep" and i.path not in SEED_FILES]
    if kept:
        print(f"Kept your version of {', '.join(kept)}; compare it with the template's by hand.")
    merged = [item.path.as_posix() for item in plan if item.action == "merged"]
    if merged:
        print(
            f"Appended the template's lines to your {', '.join(merged)} between "
            "`# >>> ml-aws-template` and `# <<< ml-aws-template`; add your own lines outside."
        )
    readme = target / "README.md"
    kept_readme = any(item.path == Path("README.md") and item.action == "keep" for item in plan)
    if kept_readme and b"PROJECT.md" not in readme.read_bytes():
        print(
            "Left your README.md as it is; the project guide is PROJECT.md. To point readers at "
            "it, add to your README.md a line such as:\n"
            "  See [PROJECT.md](PROJECT.md) for training, data, releases and AWS."
        )


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
