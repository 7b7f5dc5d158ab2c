"""Where a promotion is recorded (release/stages.py), in a scratch git repository with an in-memory
object store: GTO's registration and assignment tags, their counter, the stage file, and no tag
left behind when the stage file cannot be written; `gto show` (installed with DVC) reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import GIT_IDENTITY, VENV_BIN, run
from mlt_project.base.errors import PipelineError
from mlt_project.release.stages import (
    gto_version,
    next_assignment_tag,
    record_stage,
    registration_tag,
    release_commit,
)

ARTIFACT = "mlt-project"


class Store:
    """The part of deploy's ObjectStore that stages.py uses, in memory."""

    def __init__(self, fail: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail

    def uri(self, key: str = "") -> str:
        return f"s3://bucket/models/{ARTIFACT}/{key}".rstrip("/")

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.fail:
            raise PipelineError("S3 refused PutObject (AccessDenied): check the credentials")
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        return self.objects[key]


@pytest.fixture
def repo(tmp_path, monkeypatch) -> list[str]:
    """A git repository with two commits, the current folder; returns their hashes."""
    monkeypatch.chdir(tmp_path)
    for name, value in (("GIT_AUTHOR_NAME", "Ada"), ("GIT_AUTHOR_EMAIL", "ada@example.com")):
        monkeypatch.setenv(name, value)
        monkeypatch.setenv(name.replace("AUTHOR", "COMMITTER"), value)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    run("git", "init", "--quiet", cwd=tmp_path)
    commits = []
    for n in (1, 2):
        (tmp_path / "file.txt").write_text(f"{n}\n")
        run("git", *GIT_IDENTITY, "add", "-A", cwd=tmp_path)
        run("git", *GIT_IDENTITY, "commit", "--quiet", "-m", f"release {n}", cwd=tmp_path)
        commits.append(run("git", "rev-parse", "HEAD", cwd=tmp_path).stdout.strip())
    return commits


def record(version: str, stage: str = "production") -> dict:
    return {"stage": stage, "version": version, "manifest_sha256": "ab" * 32}


def tags(path: Path = Path(".")) -> list[str]:
    return run("git", "tag", "--list", cwd=path).stdout.split()


def test_versions_and_stages_are_spelled_as_gto_reads_them():
    assert gto_version("0.2.0") == "v0.2.0" and gto_version("v1.0.0-rc.1") == "v1.0.0-rc.1"
    assert registration_tag("0.2.0") == f"{ARTIFACT}@v0.2.0"
    with pytest.raises(PipelineError, match="not SemVer"):
        gto_version("2024-06")


def test_promotions_tag_the_release_commit_and_gto_show_lists_the_stage(repo, tmp_path):
    store = Store()
    first = record_stage(store, record("0.1.0"), repo[0], "the stage's first version")
    assert first["git_tag"] == f"{ARTIFACT}#production#1"
    assert json.loads(store.objects["stages/production.json"]) == first
    record_stage(store, record("0.1.0", "staging"), repo[0], "")
    assert next_assignment_tag("production") == f"{ARTIFACT}#production#3"
    second = record_stage(store, record("0.2.0"), repo[1], "accuracy +0.0100")
    assert second["git_tag"] == f"{ARTIFACT}#production#3"
    assert sorted(tags()) == sorted([
        f"{ARTIFACT}@v0.1.0", f"{ARTIFACT}@v0.2.0", f"{ARTIFACT}#production#1",
        f"{ARTIFACT}#staging#2", f"{ARTIFACT}#production#3",
    ])  # fmt: skip
    for tag, commit in ((f"{ARTIFACT}@v0.2.0", repo[1]), (f"{ARTIFACT}#production#3", repo[1])):
        assert run("git", "rev-parse", f"{tag}^{{commit}}", cwd=tmp_path).stdout.strip() == commit
    message = run(
        "git", "tag", "-l", "--format=%(contents)", second["git_tag"], cwd=tmp_path
    ).stdout
    assert message.startswith(f"Assigning stage production to artifact {ARTIFACT} version v0.2.0")
    assert "accuracy +0.0100" in message
    shown = json.loads(run(VENV_BIN / "gto", "show", "--json", cwd=tmp_path).stdout)[ARTIFACT]
    assert shown["version"] == "v0.2.0" and shown["registered"] is True
    assert shown["stage"]["staging"] == "v0.1.0" and shown["stage"]["production"] == "v0.2.0"


def test_a_stage_file_that_cannot_be_written_leaves_no_tag(repo):
    with pytest.raises(PipelineError, match="AccessDenied"):
        record_stage(Store(fail=True), record("0.1.0"), repo[0], "")
    assert tags() == []


def test_a_registration_on_another_commit_or_a_missing_commit_is_one_line(repo):
    run("git", *GIT_IDENTITY, "tag", "-a", "-m", "x", f"{ARTIFACT}@v0.1.0", repo[1], cwd=Path("."))
    with pytest.raises(PipelineError, match=r"names commit .*, not .*, which version 0\.1\.0"):
        record_stage(Store(), record("0.1.0"), repo[0], "")
    with pytest.raises(PipelineError, match="is not in this repository"):
        release_commit({"git_commit": "0" * 40}, "0.1.0")
    with pytest.raises(PipelineError, match="names no git commit"):
        release_commit({"git_commit": None}, "0.1.0")
    assert release_commit({"git_commit": repo[0]}, "0.1.0") == repo[0]
