"""The few git operations releases and the model registry need, with one-line errors."""

from __future__ import annotations

import os
import subprocess

from ..base.errors import PipelineError

# The release pipeline's lock file changes while `dvc repro release/dvc.yaml` runs; it records
# the release run, not what is released, so it never makes the tree dirty.
RELEASE_LOCK = "release/dvc.lock"


def git(*args: str, strip: bool = True) -> str:
    """Run git in the current folder and return its stdout; a failure is a PipelineError."""
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise PipelineError("git is not installed: install it and commit your project") from None
    if result.returncode != 0:
        raise PipelineError(f"git {args[0]} failed: {git_says(result.stderr or result.stdout)}")
    return result.stdout.strip() if strip else result.stdout


def git_says(output: str) -> str:
    """git's complaint in one line: its `fatal:` line, and the advice it ends with, if any."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()] or [
        "(no output)"
    ]
    first = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1])
    # e.g. "fatal: detected dubious ownership ..." followed by the safe.directory command
    return first if first == lines[-1] else f"{first} ({lines[-1]})"


def head_commit(short: bool = False) -> str:
    """The commit checked out; a PipelineError outside a repository or before the first commit,
    or with git's own words when git refuses the repository (e.g. its owner is another user)."""
    try:
        inside = git("rev-parse", "--is-inside-work-tree") == "true"
    except PipelineError as error:
        if "not a git repository" not in str(error):
            raise
        inside = False
    if not inside:
        raise PipelineError("not a git repository: run `git init` and commit the project first")
    try:
        return git("rev-parse", *(["--short"] if short else []), "--verify", "HEAD")
    except PipelineError:
        raise PipelineError("the repository has no commit yet: commit the project first") from None


def uncommitted() -> list[str]:
    """Paths with uncommitted changes, untracked files included, except RELEASE_LOCK."""
    pathspec = ["--", ".", f":(exclude){RELEASE_LOCK}"]
    status = git("status", "--porcelain=v1", "--untracked-files=normal", *pathspec, strip=False)
    return [line[3:] for line in status.splitlines() if line.strip()]  # lines are "XY path"


def require_clean_tree(allow_dirty: bool, flag: str | None = "--allow-dirty") -> None:
    """Refuse to go on when the working tree differs from HEAD, unless `allow_dirty`; the message
    offers `flag` where the command has one."""
    changed = uncommitted()
    if changed and not allow_dirty:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        offer = f", or pass {flag}" if flag else ""
        raise PipelineError(
            f"the working tree has uncommitted changes ({changed[0]}{more}): commit or stash "
            f"them so the tag names what was released{offer}"
        )


def tag_commit(name: str) -> str | None:
    """The commit tag `name` points to, or None when there is no such tag."""
    try:
        return git("rev-parse", "--quiet", "--verify", f"refs/tags/{name}^{{commit}}")
    except PipelineError:
        return None


def delete_tag(name: str) -> None:
    git("tag", "--delete", name)


def push_tag(name: str, remote: str = "origin") -> str:
    """Push tag `name` to `remote` if the repository has it; return what happened, in words."""
    command = f"git push {remote} {name}"
    if remote not in git("remote").split():
        return f"no git remote {remote!r}: once there is one, run `{command}`"
    # Never wait for a password prompt: a push that needs one fails and says what to run.
    result = subprocess.run(
        ["git", "push", "--quiet", remote, f"refs/tags/{name}"],
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        return f"pushing the tag failed ({lines[-1]}): run `{command}`"
    return f"pushed tag {name} to {remote}"


def create_annotated_tag(name: str, message: str, commit: str = "HEAD") -> None:
    """An annotated tag on `commit`: it records who tagged, when, and `message`."""
    git("tag", "--annotate", name, "--message", message, commit)
