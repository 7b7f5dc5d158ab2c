"""No credential in what a project commits or sends to `docker build`, and none in its messages."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MODULE, run
from mlt_project.base.errors import REDACTED, RedactSecrets, redact

# What a leaked credential looks like (the patterns of gitleaks and GitHub secret scanning).
CREDENTIALS = {
    "AWS access key id": re.compile(rb"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"),
    "AWS secret key": re.compile(
        rb"(?i)aws.{0,20}secret.{0,20}[=:]\s*['\"]?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
    ),
    "private key": re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "GitHub token": re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Slack token": re.compile(rb"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "password or token": re.compile(
        rb"(?i)\b(?:password|passwd|secret|token|api_key)\s*[=:]\s*['\"][^'\"\s]{8,}['\"]"
    ),
}
FAKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
FAKE_ENV = f"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY={FAKE_SECRET}\n"


def credentials_in(root: Path, files: list[str]) -> list[str]:
    found = []
    for name in files:
        content = (root / name).read_bytes()
        found += [
            f"{name}: {kind}" for kind, pattern in CREDENTIALS.items() if pattern.search(content)
        ]
    return found


def git_files(project: Path) -> list[str]:
    """What `git add -A` would commit (the template submodule is a repository of its own)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (project / name).is_file()]


def dockerignore_rules(project: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) per line of .dockerignore, in Docker's syntax."""
    rules = []
    for line in (project / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            if part.startswith("**"):
                regex += ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            else:
                regex += re.escape(part)
        rules.append((exception, re.compile(regex + "(/.*)?")))
    return rules


def docker_context(project: Path) -> list[str]:
    """The files `docker build` sends: .dockerignore's last matching line decides (Docker's rule)."""
    rules = dockerignore_rules(project)
    sent = []
    for path in sorted(project.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(project).as_posix()
        excluded = False
        for exception, pattern in rules:
            if pattern.fullmatch(name):
                excluded = not exception
        if not excluded:
            sent.append(name)
    return sent


@pytest.mark.e2e
def test_no_credential_is_committed_or_sent_to_docker_build(project_copy):
    (project_copy / ".env").write_text(FAKE_ENV)  # what a user's filled-in .env holds
    committed = git_files(project_copy)
    context = docker_context(project_copy)
    assert ".env" not in committed and ".env" not in context
    # The matcher works: what the image needs is in the context.
    assert "params.yaml" in context and "src/digits_e2e/training/train.py" in context
    assert "data/raw/3/0003.png" not in context and "models/model.ckpt" not in context
    # The scan finds the planted credentials where they are...
    assert credentials_in(project_copy, [".env"]) == [
        ".env: AWS access key id",
        ".env: AWS secret key",
    ]
    # ... and nothing anywhere else.
    assert credentials_in(project_copy, committed) == []
    assert credentials_in(project_copy, context) == []


def test_redact_hides_secret_values_of_the_environment():
    environ = {"AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "GITHUB_TOKEN": "ghp_x123", "HOME": "/root"}
    text = f"cannot use {FAKE_SECRET} with ghp_x123 from /root"
    assert redact(text, environ) == f"cannot use {REDACTED} with {REDACTED} from /root"


def test_log_lines_are_redacted(monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2-hunter2")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "connecting with %s", ("hunter2-hunter2",), None
    )
    RedactSecrets().filter(record)
    assert record.getMessage() == f"connecting with {REDACTED}"


@pytest.mark.e2e
def test_an_error_message_never_shows_a_secret(project_copy):
    """A secret pasted into the wrong variable: the message names the variable, not the value."""
    result = run(
        sys.executable, "-m", f"{MODULE}.scripts.distributed", cwd=project_copy, check=False,
        PYTHONPATH=str(project_copy / "src"),
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET, MASTER_PORT=FAKE_SECRET,
        AWS_BATCH_JOB_NODE_INDEX="0", AWS_BATCH_JOB_NUM_NODES="1", AWS_BATCH_JOB_MAIN_NODE_INDEX="0",
    )  # fmt: skip
    assert result.returncode == 1
    assert FAKE_SECRET not in result.stderr + result.stdout
    assert f"error: MASTER_PORT='{REDACTED}' is not a port number" in result.stderr
