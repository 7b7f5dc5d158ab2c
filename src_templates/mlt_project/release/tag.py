"""The release's git tag: annotated `v<version>` on HEAD, with the metrics in its message."""

from __future__ import annotations

import logging
from typing import Any

from .. import PROJECT_NAME
from ..base.config import Config
from ..base.errors import PipelineError
from .export import release_info
from .gitrepo import create_annotated_tag, head_commit, require_clean_tree, tag_commit
from .version import tag_name

log = logging.getLogger(__name__)


def tag_message(version: str, info: dict[str, Any]) -> str:
    metrics = info.get("metrics", {})
    return (
        f"{PROJECT_NAME} {version}: accuracy {metrics.get('accuracy')}, loss {metrics.get('loss')}"
        f"\n\nonnx sha256 {info['onnx_sha256']}\ncheckpoint sha256 {info['checkpoint_sha256']}\n"
    )


def require_free_tag(tag: str, commit: str) -> bool:
    """True when `tag` is free; False when it names `commit` already (a release that stopped
    after tagging); an error when it names another commit."""
    tagged = tag_commit(tag)
    if tagged is not None and tagged != commit:
        raise PipelineError(
            f"tag {tag} already exists (on {tagged[:12]}): bump release.version in params.yaml "
            "(or pass --version)"
        )
    return tagged is None


def create_tag(cfg: Config, version: str, allow_dirty: bool = False) -> str:
    """Tag HEAD `v<version>`, with the metrics in the message; return the tag."""
    tag, commit = tag_name(version), head_commit()
    if not require_free_tag(tag, commit):
        raise PipelineError(f"tag {tag} already exists on HEAD: nothing to do")
    require_clean_tree(allow_dirty)
    create_annotated_tag(tag, tag_message(version, release_info(cfg, version)))
    log.info("tagged %s as %s", commit[:12], tag)
    return tag
