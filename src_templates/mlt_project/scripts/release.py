"""Release the trained model: ONNX export behind a parity gate, a git tag, a checksummed S3 upload.

    python -m mlt_project.scripts.release export-onnx   # models/model.ckpt -> releases/model.onnx
    python -m mlt_project.scripts.release create-tag    # annotated tag v<version> on HEAD
    python -m mlt_project.scripts.release upload-s3     # s3://$MODEL_RELEASE_S3_BUCKET/...

`dvc repro release/dvc.yaml` runs the three in order (release/dvc.yaml). The version comes from
`release.version` in params.yaml, or --version; the value `describe` asks `git describe`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml

from .. import PROJECT_NAME
from ..checkpoint import load_network
from ..config import PARAMS_FILE, Config, load_config
from ..data.store import read_split, split_path
from ..env import load_env, require_env
from ..errors import PipelineError, run_main
from ..files import atomic_output, sha256_file
from ..logs import setup_logger
from ..onnx_export import MAX_INLINE_BYTES, check_parity, onnx_files, staged_export
from ..onnx_runtime import INPUT_NAME, OUTPUT_NAME
from .gitrepo import (
    create_annotated_tag,
    git,
    head_commit,
    require_clean_tree,
    tag_exists,
    uncommitted,
)
from .s3 import object_exists, put_file, s3_client, s3_errors, stored_sha256

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
DVC_LOCK = Path("dvc.lock")
MANIFEST = "manifest.json"
DEFAULT_PREFIX = "models"


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


def onnx_path(cfg: Config) -> Path:
    return Path(cfg.paths.release) / "model.onnx"


def info_path(cfg: Config) -> Path:
    return Path(cfg.paths.release) / "model_info.json"


def read_json(path: Path, hint: str) -> Any:
    if not path.is_file():
        raise PipelineError(f"{path} not found: {hint}")
    return json.loads(path.read_text(encoding="utf-8"))


def data_hashes(cfg: Config) -> dict[str, str]:
    """The md5 DVC recorded in dvc.lock for the raw and processed data (empty without a lock)."""
    if not DVC_LOCK.is_file():
        return {}
    lock = yaml.safe_load(DVC_LOCK.read_text(encoding="utf-8")) or {}
    wanted = {cfg.paths.raw.rstrip("/"), cfg.paths.processed.rstrip("/")}
    found = {}
    for stage in lock.get("stages", {}).values():
        for entry in stage.get("deps", []) + stage.get("outs", []):
            if entry.get("path", "").rstrip("/") in wanted and "md5" in entry:
                found[entry["path"]] = entry["md5"]
    return found


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the tree has uncommitted changes); (None, None) outside git."""
    try:
        return head_commit(), bool(uncommitted())
    except PipelineError:
        return None, None


def export_release(
    cfg: Config,
    version: str,
    params_path: Path = PARAMS_FILE,
    max_inline_bytes: int = MAX_INLINE_BYTES,
) -> dict[str, Any]:
    """Write paths.release/model.onnx (+ its data files) and model_info.json, if the gate passes.

    Weights over `max_inline_bytes` go to external-data files beside model.onnx.
    """
    model = load_network(cfg)
    metrics = read_json(Path(cfg.paths.metrics), "run `dvc repro` to evaluate the model first")
    images, _, class_names = read_split(split_path(cfg.paths.processed, "test"))
    images = images[: cfg.release.parity_samples]
    target = onnx_path(cfg)
    start = time.perf_counter()
    with staged_export(
        model, target, cfg.data.input_shape, cfg.release.onnx_opset, max_inline_bytes
    ) as staged:
        export_seconds = time.perf_counter() - start
        # The gate runs on the files about to be moved into place: a failed gate leaves the
        # previous export, and the data it reads, as they were.
        shown_as = f"the new export of {target} (not written)"
        parity = check_parity(model, staged, images, cfg.release.parity_atol, shown_as)
    data_files = onnx_files(target)[1:]
    commit, dirty = git_state()
    info = {
        "project": PROJECT_NAME,
        "version": version,
        "git_commit": commit,
        "git_dirty": dirty,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", *cfg.data.input_shape]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", cfg.data.num_classes]},
        "class_names": class_names,
        "onnx_opset": cfg.release.onnx_opset,
        "onnx_sha256": sha256_file(target),
        # Weights too big for one protobuf message: files beside model.onnx, shipped with it.
        "onnx_external_data": {path.name: sha256_file(path) for path in data_files},
        "checkpoint_sha256": sha256_file(cfg.paths.model),
        "export_seconds": round(export_seconds, 3),
        "parity": parity,
        "metrics": metrics,
        "params": yaml.safe_load(Path(params_path).read_text(encoding="utf-8")),
        "data": data_hashes(cfg),
    }
    with atomic_output(info_path(cfg)) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info(
        "exported %s in %.2fs; parity on %d test images: max abs diff %.3g (tolerance %g), "
        "classes identical",
        target,
        export_seconds,
        parity["samples"],
        parity["max_abs_diff"],
        parity["atol"],
    )
    return info


def release_info(cfg: Config, version: str) -> dict[str, Any]:
    """model_info.json, checked to describe `version` and the checkpoint as it is now."""
    hint = "run `python -m mlt_project.scripts.release export-onnx` first"
    info = read_json(info_path(cfg), hint)
    if info.get("version") != version:
        raise PipelineError(
            f"{info_path(cfg)} is for version {info.get('version')}, not {version}: "
            "run export-onnx again"
        )
    if info.get("checkpoint_sha256") != sha256_file(cfg.paths.model):
        raise PipelineError(
            f"{cfg.paths.model} changed since export-onnx: run export-onnx again (or `dvc repro "
            "release/dvc.yaml`)"
        )
    return info


def create_tag(cfg: Config, version: str, allow_dirty: bool = False) -> str:
    """Tag HEAD `v<version>`, with the metrics in the message; return the tag."""
    tag = tag_name(version)
    commit = head_commit()
    if tag_exists(tag):
        raise PipelineError(
            f"tag {tag} already exists: bump release.version in params.yaml (or pass --version)"
        )
    require_clean_tree(allow_dirty)
    info = release_info(cfg, version)
    if info.get("git_commit") not in (None, commit):
        raise PipelineError(
            f"{info_path(cfg)} was exported at commit {info['git_commit'][:12]}, but HEAD is "
            f"{commit[:12]}: run export-onnx again"
        )
    metrics = info.get("metrics", {})
    message = (
        f"{PROJECT_NAME} {version}: accuracy {metrics.get('accuracy')}, loss {metrics.get('loss')}"
        f"\n\nonnx sha256 {info['onnx_sha256']}\ncheckpoint sha256 {info['checkpoint_sha256']}\n"
    )
    create_annotated_tag(tag, message)
    log.info("tagged %s as %s", commit[:12], tag)
    return tag


def upload_files(cfg: Config, params_path: Path, info: dict[str, Any]) -> dict[str, Path]:
    """What a release holds, by object name; model.onnx and its data files as exported."""
    model = onnx_path(cfg)
    others = {
        Path(cfg.paths.model).name: Path(cfg.paths.model),
        "model_info.json": info_path(cfg),
        Path(cfg.paths.metrics).name: Path(cfg.paths.metrics),
        "params.yaml": Path(params_path),
    }
    for path in [model, *others.values()]:
        if not path.is_file():
            raise PipelineError(f"{path} not found: run `dvc repro release/dvc.yaml`")
    exported = {path.name: path for path in onnx_files(model)}
    recorded = {model.name: info.get("onnx_sha256"), **info.get("onnx_external_data", {})}
    for name, path in exported.items():
        if not path.is_file() or sha256_file(path) != recorded.get(name):
            raise PipelineError(
                f"{path} is not the file export-onnx wrote (model_info.json records "
                f"{', '.join(sorted(recorded))}): run export-onnx again"
            )
    return exported | others


def upload_s3(
    cfg: Config, version: str, force: bool = False, params_path: Path = PARAMS_FILE
) -> dict[str, Any]:
    """Upload the release, verify every object, then write the manifest; return the manifest.

    A version counts as released only when its manifest exists, so an interrupted upload is
    simply run again.
    """
    info = release_info(cfg, version)
    files = upload_files(cfg, params_path, info)
    bucket = require_env("MODEL_RELEASE_S3_BUCKET", "the bucket releases go to")
    prefix = os.environ.get("MODEL_RELEASE_S3_PREFIX", DEFAULT_PREFIX).strip("/")
    base = "/".join(part for part in (prefix, PROJECT_NAME, version) if part) + "/"
    where = f"s3://{bucket}/{base}"
    with s3_errors(bucket):
        client = s3_client()
        client.head_bucket(Bucket=bucket)
        released = object_exists(client, bucket, base + MANIFEST)
    if released and not force:
        raise PipelineError(
            f"version {version} is already released at {where}: bump release.version in "
            "params.yaml, or pass --force to replace it"
        )
    # The gate again, on the exact file about to be published.
    images, _, _ = read_split(split_path(cfg.paths.processed, "test"))
    sample = images[: cfg.release.parity_samples]
    check_parity(load_network(cfg), files["model.onnx"], sample, cfg.release.parity_atol)
    hashes = {name: sha256_file(path) for name, path in files.items()}
    with s3_errors(bucket):
        if released:  # unreleased first, so nobody takes a half-replaced version as released
            client.delete_object(Bucket=bucket, Key=base + MANIFEST)
        start = time.perf_counter()
        for name, path in files.items():
            put_file(client, bucket, base + name, path, hashes[name])
        upload_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for name in files:
            actual, claimed = stored_sha256(client, bucket, base + name)
            if actual != hashes[name] or claimed != hashes[name]:
                raise PipelineError(
                    f"{where}{name} does not match {files[name]} after upload (sha256 {actual}): "
                    "run upload-s3 again"
                )
        manifest = {
            "project": PROJECT_NAME,
            "version": version,
            "git_commit": info.get("git_commit"),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "objects": {
                name: {"sha256": hashes[name], "size": path.stat().st_size}
                for name, path in files.items()
            },
        }
        body = (json.dumps(manifest, indent=2) + "\n").encode()
        client.put_object(Bucket=bucket, Key=base + MANIFEST, Body=body)
        if client.get_object(Bucket=bucket, Key=base + MANIFEST)["Body"].read() != body:
            raise PipelineError(f"{where}{MANIFEST} does not read back as written: run again")
        verify_seconds = time.perf_counter() - start
    size = sum(path.stat().st_size for path in files.values())
    log.info(
        "released %s: %d objects (%.2f MB) uploaded in %.2fs, verified in %.2fs",
        where,
        len(files),
        size / 1e6,
        upload_seconds,
        verify_seconds,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=PARAMS_FILE)
    common.add_argument("--version", help="release version (default: release.version in params)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export-onnx", parents=[common], help="checkpoint -> ONNX, behind the parity gate"
    )
    export.add_argument(
        "--max-inline-bytes",
        type=int,
        default=MAX_INLINE_BYTES,
        help="weights over this size go to external-data files beside model.onnx "
        f"(default {MAX_INLINE_BYTES:,}: protobuf's 2 GiB limit, less room for the graph)",
    )
    tag = commands.add_parser(
        "create-tag", parents=[common], help="annotated git tag v<version> on HEAD"
    )
    tag.add_argument("--allow-dirty", action="store_true", help="tag despite uncommitted changes")
    upload = commands.add_parser(
        "upload-s3", parents=[common], help="upload, verify, then write the manifest"
    )
    upload.add_argument("--force", action="store_true", help="replace a released version")
    args = parser.parse_args(argv)
    setup_logger()
    load_env()

    def run() -> None:
        cfg = load_config(args.params)
        version = resolve_version(cfg, args.version)
        if args.command == "export-onnx":
            export_release(cfg, version, args.params, args.max_inline_bytes)
        elif args.command == "create-tag":
            create_tag(cfg, version, args.allow_dirty)
        else:
            upload_s3(cfg, version, args.force, args.params)

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
