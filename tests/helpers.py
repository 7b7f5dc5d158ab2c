"""Shared by the tests that bake real projects: a template repo to add as a submodule, and runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The project the session-wide fixture bakes (tests/conftest.py).
NAME = "digits-e2e"
MODULE = "digits_e2e"
GIT_IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
# AWS settings for subprocesses: no real account, no metadata service, no ~/.aws files.
NO_AWS = {
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
FAKE_AWS = {
    **NO_AWS,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def env(**extra: str | None) -> dict[str, str]:
    """The environment for subprocesses: this venv first on PATH, git isolated from the user.
    A variable given as None is removed."""
    result = dict(os.environ)
    result["PATH"] = f"{VENV_BIN}{os.pathsep}{result.get('PATH', '')}"
    result["GIT_CONFIG_NOSYSTEM"] = "1"
    result["DVC_NO_ANALYTICS"] = "1"
    result.update(extra)
    return {name: value for name, value in result.items() if value is not None}


def run(
    *cmd: str | Path, cwd: Path, check: bool = True, **env_extra: str | None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env(**env_extra), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(
    result: subprocess.CompletedProcess[str] | str, *fragments: str, among_output: bool = False
) -> str:
    """The bad-input contract: exit 1 (for a process), no traceback, and one line on stderr
    holding every fragment. `among_output`: stderr also carries progress bars and logs, and
    exactly one of its lines is an `error: ` line."""
    stderr = result if isinstance(result, str) else result.stderr
    if not isinstance(result, str):
        assert result.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    if among_output:
        lines = [line for line in lines if line.startswith(("error: ", "bootstrap: error: "))]
    assert len(lines) == 1, stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def one_bootstrap_error(err: str) -> str:
    """one_error_line of bootstrap's stderr (captured in-process: no exit code to check)."""
    line = one_error_line(err)
    assert line.startswith("bootstrap: error: "), line
    return line


def clean_env(**extra: str) -> dict[str, str]:
    """env() without any AWS, Batch or rendezvous variable of the machine running this."""
    base = {
        key: value
        for key, value in env().items()
        if not key.startswith(("AWS_", "BATCH_"))
        and key not in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    return {**base, **extra}


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """clean_env() importing the package from the project's own src/, as the image does: the
    same code as the installed one, and independent of other sessions sharing the venv."""
    return clean_env(PYTHONPATH=str(project / "src"), **extra)


def sh(*cmd: str | Path, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run in a project with project_env(); never raises (the caller checks the result)."""
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=project_env(cwd, **extra),
        capture_output=True,
        text=True,
    )


def copy_without_git(source: Path, dest: Path) -> Path:
    """The project as the image holds it: no .git, no template submodule."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    shutil.rmtree(dest / ".ml-aws-template")
    return dest


def git(*args: str, cwd: Path) -> str:
    return run("git", *GIT_IDENTITY, *args, cwd=cwd).stdout.strip()


def make_template_repo(dest: Path) -> Path:
    """This working tree (tracked and untracked, not ignored files) as a fresh one-commit repo."""
    listed = git("ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO)
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git("init", "--quiet", "--initial-branch=main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "--quiet", "-m", "template under test", cwd=dest)
    return dest


def make_host(path: Path, template_repo: Path) -> Path:
    """A git repo with the template added as a real submodule at .ml-aws-template."""
    path.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    git(
        "-c", "protocol.file.allow=always", "submodule", "add", "--quiet",
        str(template_repo), ".ml-aws-template", cwd=path,
    )  # fmt: skip
    return path


def bootstrap(host: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the submodule's bootstrap.py from the host root, as a user does."""
    return run("python3", ".ml-aws-template/bootstrap.py", *args, cwd=host, check=check)


def set_params(project: Path, **changes: object) -> None:
    """Set dotted keys in a project's params.yaml (`data__image_size=[32, 32]` for data.image_size),
    through YAML, as a user editing the file would: each key must exist already."""
    import yaml

    from mlt_project.base.config import read_params  # reads DVC's 1e-05 as a number, as projects do

    path = project / "params.yaml"
    params = read_params(path)
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        node = params
        for section in sections:
            node = node[section]
        assert key in node, f"{dotted.replace('__', '.')} is not in {path}"
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


MULTILABEL_TAGS = ("sun", "tree", "wave")  # each brightens its own quadrant of an 8x8 image


def write_multilabel_pngs(raw: Path, images: int = 480, seed: int = 0) -> dict[str, list[str]]:
    """`images` 8x8 grayscale PNGs in raw/images/, each with 0-3 of MULTILABEL_TAGS (a bright
    quadrant each: top left, top right, bottom left), listed in raw/metadata.csv with the tags
    separated by spaces; return {file_name: tags}."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    corners = [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)), (slice(4, 8), slice(0, 4))]
    (raw / "images").mkdir(parents=True)
    labels: dict[str, list[str]] = {}
    for i in range(images):
        present = rng.random(len(MULTILABEL_TAGS)) < 0.5
        pixels = rng.integers(0, 70, (8, 8))
        for (rows, cols), on in zip(corners, present, strict=True):
            if on:
                pixels[rows, cols] += 150
        name = f"images/{i:04d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(raw / name)
        labels[name] = [tag for tag, on in zip(MULTILABEL_TAGS, present, strict=True) if on]
    lines = ["file_name,label", *(f"{name},{' '.join(tags)}" for name, tags in labels.items())]
    (raw / "metadata.csv").write_text("\n".join(lines) + "\n")
    return labels
