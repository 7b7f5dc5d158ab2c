"""A release's version: release.version in params.yaml or --version; `describe` asks git."""

from __future__ import annotations

import re

from ..base.config import Config
from ..base.errors import PipelineError
from .gitrepo import git, head_commit

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def resolve_version(cfg: Config, override: str | None = None) -> str:
    """--version, else release.version; `describe` asks git for the nearest release tag (v*)."""
    version = override or cfg.release.version
    if version == "describe":
        head_commit()  # a clear error outside a repository or before the first commit
        version = git("describe", "--tags", "--always", "--match", "v*").removeprefix("v")
    if not VERSION_RE.fullmatch(version):
        raise PipelineError(
            f"release version {version!r} is not usable in a tag or an S3 key: use letters, "
            "digits and '._+-', e.g. 0.1.0"
        )
    return version


def tag_name(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"
