"""Where a stage's version is recorded, for other tools and for the server:

    git   GTO's tags (DVC's model registry, `gto show`): `<project>@v<version>` registers the
          version on its release commit, `<project>#<stage>#<n>` assigns it to the stage, n
          counting every such tag of the project; annotated, so they say who, when and why
    S3    stages/<stage>.json beside the releases: the version, its manifest's SHA-256, who
          promoted it, when and why, and the comparison; `serve --stage` reads it

release/promote.py decides; this module writes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from .. import PROJECT_NAME
from ..base.errors import PipelineError
from ..deploy import ObjectStore
from ..serve.fetch import stage_key
from .gitrepo import create_annotated_tag, delete_tag, git, push_tag, tag_commit

# GTO's version: `v` and SemVer (gto/constants.py), else `gto show` leaves the tag out.
SEMVER_RE = re.compile(
    r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z.-]+)?"
)
COUNTER_RE = re.compile(r"#(\d+)$")

log = logging.getLogger(__name__)


def gto_version(version: str) -> str:
    """v<version>, as GTO spells a version; one line when it is not SemVer."""
    tagged = version if version.startswith("v") else f"v{version}"
    if not SEMVER_RE.fullmatch(tagged):
        raise PipelineError(
            f"version {version} is not SemVer (MAJOR.MINOR.PATCH, e.g. 0.2.0), which GTO's "
            "registry needs to list it: release it under such a version"
        )
    return tagged


def registration_tag(version: str) -> str:
    return f"{PROJECT_NAME}@{gto_version(version)}"


def next_assignment_tag(stage: str) -> str:
    """<project>#<stage>#<n>: n is one more than any counter on the project's GTO tags."""
    tags = git("tag", "--list", f"{PROJECT_NAME}#*", f"{PROJECT_NAME}@*").split()
    counters = [int(m[1]) for tag in tags if (m := COUNTER_RE.search(tag))]
    return f"{PROJECT_NAME}#{stage}#{max(counters, default=0) + 1}"


def after_the_last_tag() -> None:
    """Wait, at most a second, until the clock has passed the second of the project's last stage
    assignment: GTO orders a stage's assignments by their tags' time, to the second, so two
    promotions in one second would leave `gto show` free to name either."""
    dates = git("for-each-ref", "--format=%(creatordate:unix)", f"refs/tags/{PROJECT_NAME}#*")
    last = max(map(int, dates.split()), default=0)
    wait = last + 1 - time.time()
    if 0 < wait <= 1:
        time.sleep(wait)


def release_commit(manifest: dict[str, Any], version: str) -> str:
    """The commit a version was released from, which must be in this repository."""
    commit = manifest.get("git_commit")
    if not commit:
        raise PipelineError(
            f"the manifest of version {version} names no git commit (it was uploaded outside a "
            "git repository): GTO's tags need one; release it from the project's repository"
        )
    try:
        git("cat-file", "-e", f"{commit}^{{commit}}")
    except PipelineError:
        raise PipelineError(
            f"commit {commit[:12]} of version {version} is not in this repository: "
            "`git fetch --tags` it (or promote from the repository it was released from)"
        ) from None
    return commit


def committer() -> str:
    """Who git says is acting: `Name <email>`."""
    ident = git("var", "GIT_COMMITTER_IDENT")
    return ident.rsplit(" ", 2)[0]  # without the timestamp and time zone


def record_stage(
    store: ObjectStore, record: dict[str, Any], commit: str, summary: str
) -> dict[str, Any]:
    """Tag the version's commit for GTO (registration if missing, then the assignment), write
    stages/<stage>.json, then push the tags; a failed write deletes the tags it made."""
    version, stage = record["version"], record["stage"]
    created = []
    registered = registration_tag(version)
    tagged = tag_commit(registered)
    if tagged is None:
        message = (
            f"Registering artifact {PROJECT_NAME} version {gto_version(version)}\n\n"
            f"release {store.uri(version)}/ (manifest sha256 {record['manifest_sha256']})\n"
        )
        create_annotated_tag(registered, message, commit)
        created.append(registered)
    elif tagged != commit:
        raise PipelineError(
            f"tag {registered} names commit {tagged[:12]}, not {commit[:12]}, which version "
            f"{version} was released from: delete the tag (`git tag -d {registered}`) or fix it"
        )
    after_the_last_tag()
    assignment = next_assignment_tag(stage)
    record = record | {"git_tag": assignment}
    message = (
        f"Assigning stage {stage} to artifact {PROJECT_NAME} version {gto_version(version)}"
        f"\n\n{summary}\n"
    )
    try:
        create_annotated_tag(assignment, message, commit)
        created.append(assignment)
        body = (json.dumps(record, indent=2) + "\n").encode()
        store.put_bytes(stage_key(stage), body)
        if store.get_bytes(stage_key(stage)) != body:
            raise PipelineError(f"{store.uri(stage_key(stage))} does not read back as written")
    except BaseException:
        for tag in created:  # the stage did not change: no tag may say it did
            delete_tag(tag)
        raise
    for tag in created:
        log.info("%s", push_tag(tag))
    return record
