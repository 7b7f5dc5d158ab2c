"""A whole release: check everything first, then export, tag, upload, and push the tag.

`python -m mlt_project.scripts.release` runs `release`; its steps are release/export.py,
tag.py and upload.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..base.config import PARAMS_FILE, Config
from ..deploy import ObjectStore
from .dvcrepo import dvc, require_fresh_pipeline
from .gitrepo import create_annotated_tag, delete_tag, head_commit, push_tag, require_clean_tree
from .tag import require_free_tag, tag_message
from .upload import checked_files, git_state, put_release, release_target
from .version import tag_name

log = logging.getLogger(__name__)

RELEASE_PIPELINE = "release/dvc.yaml"


def check(cfg: Config, version: str) -> tuple[ObjectStore, bool]:
    """Everything a release needs that can be known before writing anything: a clean commit,
    a training pipeline dvc.lock agrees with, a free tag, the S3 settings, credentials and
    bucket, an unreleased version. Return where it goes, and whether to tag."""
    commit = head_commit()
    require_clean_tree(allow_dirty=False, flag=None)  # a release is of a commit, always
    require_fresh_pipeline(False, "the release", flag=None)
    needs_tag = require_free_tag(tag_name(version), commit)
    return release_target(version), needs_tag


def release(cfg: Config, version: str, params_path: Path = PARAMS_FILE) -> dict[str, Any]:
    """check -> export (`dvc repro release/dvc.yaml`) -> tag -> upload -> push the tag."""
    tag = tag_name(version)
    store, needs_tag = check(cfg, version)
    log.info("release %s to %s/: checks passed", version, store.uri(version))
    dvc("repro", RELEASE_PIPELINE, quiet=False)  # exports, unless the export is up to date
    info, files = checked_files(cfg, version, params_path)
    if needs_tag:
        create_annotated_tag(tag, tag_message(version, info))
    try:
        manifest = put_release(store, version, files, git_state(tag))
    except BaseException:
        if needs_tag:  # a failed release leaves no tag: the next try starts over
            delete_tag(tag)
        raise
    log.info("%s", push_tag(tag))
    return manifest
