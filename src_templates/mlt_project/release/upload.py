"""The release's upload: the exported files and the test split to $MODEL_RELEASE_S3_URI/<version>/,
each read back and checked, then manifest.json last, so that a version is released exactly when
its manifest exists and an interrupted upload is simply run again."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from .. import PROJECT_NAME
from ..base.config import PARAMS_FILE, Config
from ..base.errors import PipelineError
from ..base.fileio import sha256_file
from ..data.store import split_path
from ..deploy import ObjectStore, configured_store
from ..model.checkpoint import load_trained
from ..serve.fetch import MANIFEST, RELEASES, TEST_SPLIT
from ..serve.onnx_export import onnx_files
from ..serve.onnx_runtime import INFO_FILE, MODEL_FILE
from .export import info_path, onnx_path, parity_gate, release_info
from .gitrepo import head_commit, tag_commit, uncommitted
from .version import tag_name

log = logging.getLogger(__name__)


def git_state(tag: str) -> dict[str, Any]:
    """HEAD, whether the tree has uncommitted changes, and `tag` if it names HEAD; None outside
    git."""
    try:
        commit = head_commit()
    except PipelineError:
        return {"git_commit": None, "git_dirty": None, "git_tag": None}
    tagged = tag if tag_commit(tag) == commit else None
    return {"git_commit": commit, "git_dirty": bool(uncommitted()), "git_tag": tagged}


def upload_files(cfg: Config, params_path: Path, info: dict[str, Any]) -> dict[str, Path]:
    """What a release holds, by object name; model.onnx and its data files as exported."""
    model = onnx_path(cfg)
    others = {
        Path(cfg.paths.model).name: Path(cfg.paths.model),
        INFO_FILE: info_path(cfg),
        Path(cfg.paths.metrics).name: Path(cfg.paths.metrics),
        "params.yaml": Path(params_path),
        TEST_SPLIT: split_path(cfg.paths.processed, "test"),
    }
    for path in [model, *others.values()]:
        if not path.is_file():
            raise PipelineError(
                f"{path} not found: run `dvc repro` and `dvc repro release/dvc.yaml`"
            )
    exported = {path.name: path for path in onnx_files(model)}
    recorded = {model.name: info.get("onnx_sha256"), **info.get("onnx_external_data", {})}
    for name, path in exported.items():
        if not path.is_file() or sha256_file(path) != recorded.get(name):
            raise PipelineError(
                f"{path} is not the file export-onnx wrote ({INFO_FILE} records "
                f"{', '.join(sorted(recorded))}): run export-onnx again"
            )
    return exported | others


def release_target(version: str, force: bool = False) -> ObjectStore:
    """The store releases go to, once the setting, credentials and bucket are known to work and
    `version` is not released yet (unless `force`)."""
    store = configured_store(RELEASES, "where releases go")
    store.check()
    if store.exists(f"{version}/{MANIFEST}") and not force:
        raise PipelineError(
            f"version {version} is already released at {store.uri(version)}/: bump "
            "release.version in params.yaml, or pass --force to replace it"
        )
    return store


def checked_files(cfg: Config, version: str, params_path: Path) -> tuple[dict, dict[str, Path]]:
    """model_info.json and the files to upload, after the parity gate on the exact ONNX file."""
    info = release_info(cfg, version)
    files = upload_files(cfg, params_path, info)
    parity_gate(cfg, load_trained(cfg), files[MODEL_FILE])
    return info, files


def put_release(
    store: ObjectStore, version: str, files: dict[str, Path], git: dict[str, Any]
) -> dict[str, Any]:
    """Upload, read every object back, then write the manifest last; return the manifest.

    A version counts as released only when its manifest exists, so an interrupted upload is
    simply run again.
    """
    hashes = {name: sha256_file(path) for name, path in files.items()}
    # Unreleased first, so nobody takes a half-replaced version as released.
    store.delete(f"{version}/{MANIFEST}")
    start = time.perf_counter()
    for name, path in files.items():
        store.put(f"{version}/{name}", path, hashes[name])
    upload_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for name in files:
        actual, claimed = store.checksum(f"{version}/{name}")
        if actual != hashes[name] or claimed != hashes[name]:
            raise PipelineError(
                f"{store.uri(f'{version}/{name}')} does not match {files[name]} after upload "
                f"(sha256 {actual}): run the upload again"
            )
    manifest = {
        "project": PROJECT_NAME,
        "version": version,
        **git,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "objects": {
            name: {"sha256": hashes[name], "size": path.stat().st_size}
            for name, path in files.items()
        },
    }
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    store.put_bytes(f"{version}/{MANIFEST}", body)
    if store.get_bytes(f"{version}/{MANIFEST}") != body:
        raise PipelineError(f"{store.uri(f'{version}/{MANIFEST}')} does not read back as written")
    verify_seconds = time.perf_counter() - start
    size = sum(path.stat().st_size for path in files.values())
    log.info(
        "released %s/: %d objects (%.2f MB) uploaded in %.2fs, verified in %.2fs",
        store.uri(version),
        len(files),
        size / 1e6,
        upload_seconds,
        verify_seconds,
    )
    return manifest


def upload_s3(
    cfg: Config, version: str, force: bool = False, params_path: Path = PARAMS_FILE
) -> dict[str, Any]:
    """Upload the exported release on its own (no tag needed); return the manifest."""
    store = release_target(version, force)
    files = checked_files(cfg, version, params_path)[1]
    return put_release(store, version, files, git_state(tag_name(version)))
