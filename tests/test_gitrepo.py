"""The git checks of releases and the registry say what git said, and offer only the flags the
command has."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import GIT_IDENTITY
from mlt_project.base.errors import PipelineError
from mlt_project.release.gitrepo import head_commit, require_clean_tree


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository with one commit and one uncommitted file, as the current folder."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no user config: no safe.directory of the user's
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    subprocess.run(["git", "init", "-q"], check=True)
    (root / "params.yaml").write_text("a: 1\n")
    subprocess.run(["git", "add", "."], check=True)
    subprocess.run(["git", *GIT_IDENTITY, "commit", "-qm", "first"], check=True)
    (root / "params.yaml").write_text("a: 2\n")
    return root


def test_outside_a_repository_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="not a git repository: run `git init`"):
        head_commit()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the repository to another user needs root")
def test_a_repository_git_refuses_is_not_called_no_repository(repo):
    """git refuses a repository another user owns (as in a container whose user differs from the
    volume's owner): the message is git's, with the command git suggests."""
    os.chown(repo, 1234, 1234)
    os.chown(repo / ".git", 1234, 1234)
    with pytest.raises(PipelineError) as error:
        head_commit()
    message = str(error.value)
    assert "not a git repository" not in message
    assert "detected dubious ownership" in message and "safe.directory" in message
    assert "\n" not in message


def test_the_dirty_tree_message_offers_only_a_flag_the_command_has(repo):
    with pytest.raises(PipelineError) as error:
        require_clean_tree(allow_dirty=False, flag=None)  # the whole release
    assert "uncommitted changes (params.yaml)" in str(error.value)
    assert "--allow-dirty" not in str(error.value)
    with pytest.raises(PipelineError, match=r"or pass --allow-dirty$"):
        require_clean_tree(allow_dirty=False)  # create-tag, register_model
    require_clean_tree(allow_dirty=True)
