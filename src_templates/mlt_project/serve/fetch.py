"""A release from the object store, as the server and `release promote` take it: every file
checked against the release's manifest before anything reads it.

    <MODEL_RELEASE_S3_URI>/<version>/manifest.json   the SHA-256 of every object, written last
    <MODEL_RELEASE_S3_URI>/stages/<stage>.json       the version a stage serves (release promote)

No torch; botocore only once a store is asked for (deploy/).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from ..base.errors import PipelineError
from ..base.fileio import read_json, sha256_file
from ..deploy import ObjectStore, configured_store, object_store
from .onnx_runtime import INFO_FILE, MODEL_FILE

MANIFEST = "manifest.json"
RELEASES = "MODEL_RELEASE_S3_URI"  # the setting that says where releases go: <uri>/<version>/
STAGES = "stages"
# The test split travels with the model: `release promote` evaluates a candidate and the release a
# stage serves on the candidate's own test images, read from the release, not the workspace.
TEST_SPLIT = "test.parquet"
# GTO's rule for stage names (its `name`), so that `gto show` can list the stage's git tag.
STAGE_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9/_-]*[a-zA-Z0-9])?")

log = logging.getLogger(__name__)


def stage_key(stage: str) -> str:
    if not STAGE_RE.fullmatch(stage):
        raise PipelineError(
            f"stage {stage!r} is not a usable name: use letters, digits and '-_/', starting and "
            "ending with a letter or digit, e.g. production"
        )
    return f"{STAGES}/{stage}.json"


def releases() -> ObjectStore:
    """The store MODEL_RELEASE_S3_URI names (from .env where the environment is silent)."""
    return configured_store(RELEASES, "where releases are")  # type: ignore[return-value]


def release_at(uri: str) -> tuple[ObjectStore, str]:
    """(the store above it, the version) of s3://bucket/prefix/<version>/."""
    parent, _, version = uri.rstrip("/").rpartition("/")
    if not version or "/" not in parent.removeprefix("s3://"):
        raise PipelineError(f"--release {uri!r} is not s3://bucket/prefix/<version>/: fix it")
    return object_store(parent, "--release"), version


def read_manifest(store: ObjectStore, version: str) -> tuple[dict[str, Any], str]:
    """A released version's manifest and the SHA-256 of its bytes; one line when `version` was
    never released (no manifest: the upload writes it last)."""
    key = f"{version}/{MANIFEST}"
    if not store.exists(key):
        raise PipelineError(
            f"version {version} is not released: {store.uri(key)} does not exist (release it "
            "with `python -m mlt_project.scripts.release`)"
        )
    body = store.get_bytes(key)
    try:
        manifest = json.loads(body)
        manifest["objects"].items()
    except (ValueError, KeyError, AttributeError, TypeError):
        raise PipelineError(f"{store.uri(key)} is not a release manifest") from None
    return manifest, hashlib.sha256(body).hexdigest()


def read_stage(store: ObjectStore, stage: str) -> dict[str, Any] | None:
    """The record of the version `stage` serves, or None while no version was promoted to it."""
    key = stage_key(stage)
    if not store.exists(key):
        return None
    try:
        record = json.loads(store.get_bytes(key))
        record["version"], record["manifest_sha256"]
    except (ValueError, KeyError, TypeError):
        raise PipelineError(
            f"{store.uri(key)} is not a stage record: promote a version again"
        ) from None
    return record


def staged_version(store: ObjectStore, stage: str) -> tuple[str, dict[str, Any]]:
    """(the version `stage` serves, its manifest), the manifest being the one promoted."""
    record = read_stage(store, stage)
    if record is None:
        raise PipelineError(
            f"no version is promoted to stage {stage!r} ({store.uri(stage_key(stage))} does not "
            "exist): run `python -m mlt_project.scripts.release promote <version> --stage "
            f"{stage}`"
        )
    version = record["version"]
    manifest, sha256 = read_manifest(store, version)
    if sha256 != record["manifest_sha256"]:
        raise PipelineError(
            f"stage {stage!r} names version {version} with manifest sha256 "
            f"{record['manifest_sha256'][:12]}, but {store.uri(f'{version}/{MANIFEST}')} is now "
            f"{sha256[:12]}: the version was replaced after its promotion; promote it again"
        )
    return version, manifest


def fetch_file(
    store: ObjectStore, version: str, name: str, manifest: dict[str, Any], dest: Path
) -> Path:
    """One object of a release into `dest/name`, kept only if its SHA-256 is the manifest's."""
    entry = manifest["objects"].get(name)
    if entry is None:
        raise PipelineError(
            f"{store.uri(f'{version}/{MANIFEST}')} lists no {name}: release the version again"
        )
    path = dest / name
    store.get(f"{version}/{name}", path)
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        path.unlink()
        raise PipelineError(
            f"{store.uri(f'{version}/{name}')} has sha256 {actual[:12]}, not the "
            f"{entry['sha256'][:12]} of its manifest: refusing to load it"
        )
    return path


def fetch_model(
    store: ObjectStore, version: str, dest: Path, manifest: dict[str, Any] | None = None
) -> Path:
    """model.onnx (with its data files) and model_info.json of a release into `dest`, each
    checked against the manifest; return the path of model.onnx."""
    manifest = manifest if manifest is not None else read_manifest(store, version)[0]
    dest.mkdir(parents=True, exist_ok=True)
    info = read_json(fetch_file(store, version, INFO_FILE, manifest, dest), "release it again")
    for name in [MODEL_FILE, *info.get("onnx_external_data", {})]:
        fetch_file(store, version, name, manifest, dest)
    log.info("fetched release %s from %s/ (sha256 checked)", version, store.uri(version))
    return dest / MODEL_FILE


def check_model_folder(model_path: Path) -> None:
    """Where a manifest.json lies beside the model (a release copied whole, as SageMaker copies
    its model data to /opt/ml/model), the files the model loads must match its SHA-256s."""
    manifest_file = model_path.parent / MANIFEST
    if not manifest_file.is_file():
        return
    objects = read_json(manifest_file, "copy the release again").get("objects", {})

    def check(path: Path) -> None:
        entry = objects.get(path.name)
        if entry is None or not path.is_file():
            what = "is missing" if entry else f"is not in {manifest_file}"
            raise PipelineError(f"{path} {what}: copy the release again")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise PipelineError(
                f"{path} has sha256 {actual[:12]}, not the {entry['sha256'][:12]} of "
                f"{manifest_file}: refusing to load it"
            )

    info_file = model_path.with_name(INFO_FILE)
    check(info_file)
    external = read_json(info_file, "copy the release again").get("onnx_external_data", {})
    for path in [model_path, *(model_path.with_name(name) for name in external)]:
        check(path)
