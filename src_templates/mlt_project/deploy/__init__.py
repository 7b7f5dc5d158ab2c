"""Where the project meets a cloud, through two small seams: an object store and a job runner.

    ObjectStore  files under one location (s3://bucket/prefix): put, get, exists, checksum, ...
    JobRunner    container jobs: register a definition, submit a job, read its status

deploy/aws/ implements both (S3, AWS Batch); the release, the resume checkpoints, the Batch
commands and the sweeps (sweep.py: many experiments as one array job) use only these. Another
cloud would be one more folder beside aws/, chosen here. Nothing heavy is imported until a store
or a runner is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .. import PROJECT_NAME
from ..base.errors import PipelineError


class ObjectStore(Protocol):
    """Objects under one location; keys are relative to it ("0.1.0/model.onnx")."""

    def uri(self, key: str = "") -> str: ...

    def check(self) -> None:
        """Fail with one line, before any work, when the location cannot be reached."""

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, path: Path, sha256: str) -> None:
        """Upload a file; its SHA-256 travels with it (what `checksum` calls claimed)."""

    def get(self, key: str, path: Path) -> None:
        """Download to `path`, written whole or not at all."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def checksum(self, key: str) -> tuple[str, str]:
        """(SHA-256 of the stored bytes, the SHA-256 stored with them at upload)."""

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str = "") -> list[str]:
        """The keys under `prefix`, sorted."""


class JobRunner(Protocol):
    """Container jobs: the definition names the image, its resources and its retries."""

    def register(self, definition: dict[str, Any]) -> dict[str, Any]:
        """A new revision of a job definition: its name, revision and id."""

    def submit(
        self,
        name: str,
        queue: str,
        definition: str,
        *,
        array_size: int | None = None,
        environment: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> str:
        """Submit a job (an array of `array_size` children), return its id; `command` replaces
        the definition's."""

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's name, status and, once it has one, the reason."""

    # For sweeps (sweep.py).

    def definition(self, name: str) -> dict[str, Any] | None:
        """The latest active revision of a job definition: its `id` (name:revision), `image` and
        `vcpus`; None when none is registered."""

    def children(self, job_id: str, size: int) -> list[dict[str, Any] | None]:
        """Each child of an array job (of `size`; 1: a plain job): its `state` (pending, running,
        succeeded, failed), `attempts` and `reason`; None for a child the runner does not know."""

    def capacity(self, queue: str, vcpus: int) -> int | None:
        """How many jobs of `vcpus` the queue can run at once; None when it cannot tell."""

    def image_digest(self, image: str) -> str | None:
        """The registry's digest of `image`, where the registry reports one."""

    def child_position(self, environ: Mapping[str, str]) -> tuple[int | None, int]:
        """(array index, attempt from 1) of the job this process runs in; the index is None
        outside an array job."""


def object_store(uri: str, setting: str) -> ObjectStore:
    """The store at `uri`, which the environment variable `setting` gave (for the messages)."""
    bucket = uri.removeprefix("s3://").partition("/")[0]
    if uri.startswith("s3://") and bucket:
        from .aws.s3 import S3Store

        return S3Store.at(uri, setting)
    raise PipelineError(f"{setting}={uri!r} is not s3://bucket[/prefix]: fix it")


def configured_store(setting: str, purpose: str, required: bool = True) -> ObjectStore | None:
    """The store the environment variable `setting` names (DVC_S3_URI, MODEL_RELEASE_S3_URI,
    CHECKPOINT_S3_URI, from .env where the environment is silent); None when it is unset and not
    `required`."""
    from .aws.settings import s3_uri  # reads the names these settings replaced too

    uri = s3_uri(setting)
    if uri:
        return object_store(uri, setting)
    if not required:
        return None
    raise PipelineError(
        f"{setting} is not set ({purpose}): set it in .env (see .env.example) or the "
        f"environment, e.g. s3://my-bucket/{PROJECT_NAME}"
    )


def job_runner() -> JobRunner:
    from .aws.batch import BatchRunner

    return BatchRunner()
