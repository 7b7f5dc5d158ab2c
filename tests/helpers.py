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


def one_bootstrap_error(err: str) -> str:
    """The single stderr line of a bootstrap user error; no traceback."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("bootstrap: error: ")
    return lines[0]


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

    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        node = params
        for section in sections:
            node = node[section]
        assert key in node, f"{dotted.replace('__', '.')} is not in {path}"
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
