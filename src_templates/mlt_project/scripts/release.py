"""Release the trained model: ONNX export behind a parity gate, a git tag, a checksummed S3 upload.

    python -m mlt_project.scripts.release               # all of it, in this order:
    python -m mlt_project.scripts.release check         # 1. what must hold; writes nothing
    dvc repro release/dvc.yaml                          # 2. export-onnx, unless up to date
    python -m mlt_project.scripts.release create-tag    # 3. annotated tag v<version> on HEAD
    python -m mlt_project.scripts.release upload-s3     # 4. to $MODEL_RELEASE_S3_URI/<version>/

The whole release checks everything first (a clean commit, a training pipeline dvc.lock agrees
with, the S3 settings, the bucket, a free tag and version), so a release that cannot finish
writes nothing; it then pushes the tag to `origin` when there is one. The version comes from
`release.version` in params.yaml, or --version; the value `describe` asks `git describe`.
The export does not depend on the commit: it is a function of the checkpoint, the data and the
params, so a cached one stays valid after a commit; the commit goes into the S3 manifest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import yaml

from .. import PROJECT_NAME, cli
from ..checkpoint import load_network
from ..config import PARAMS_FILE, Config, load_config
from ..data.store import read_split, split_path
from ..errors import PipelineError
from ..files import atomic_output, sha256_file
from ..onnx_export import (
    MAX_INLINE_BYTES,
    check_parity,
    onnx_files,
    parity_summary,
    staged_export,
)
from ..onnx_runtime import INFO_FILE, INPUT_NAME, MODEL_FILE, OUTPUT_NAME
from .aws import (
    MODEL_RELEASE_S3_URI,
    S3Location,
    aws_errors,
    client,
    object_exists,
    put_file,
    require_credentials,
    s3_location,
    stored_sha256,
)
from .dvcrepo import dvc, require_fresh_pipeline
from .gitrepo import (
    create_annotated_tag,
    delete_tag,
    git,
    head_commit,
    push_tag,
    require_clean_tree,
    tag_commit,
    uncommitted,
)

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
DVC_LOCK = Path("dvc.lock")
RELEASE_PIPELINE = "release/dvc.yaml"
MANIFEST = "manifest.json"


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
    return Path(cfg.paths.release) / MODEL_FILE


def info_path(cfg: Config) -> Path:
    return Path(cfg.paths.release) / INFO_FILE


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


def git_state(tag: str) -> dict[str, Any]:
    """HEAD, whether the tree has uncommitted changes, and `tag` if it names HEAD; None outside
    git."""
    try:
        commit = head_commit()
    except PipelineError:
        return {"git_commit": None, "git_dirty": None, "git_tag": None}
    tagged = tag if tag_commit(tag) == commit else None
    return {"git_commit": commit, "git_dirty": bool(uncommitted()), "git_tag": tagged}


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
        parity = check_parity(
            model,
            staged,
            images,
            rtol=cfg.release.parity_rtol,
            atol=cfg.release.parity_atol,
            shown_as=shown_as,
        )
    data_files = onnx_files(target)[1:]
    # Nothing here depends on the git commit, so a cached export stays valid after a commit.
    info = {
        "project": PROJECT_NAME,
        "version": version,
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
    log.info("exported %s in %.2fs; %s", target, export_seconds, parity_summary(parity))
    return info


def release_info(cfg: Config, version: str) -> dict[str, Any]:
    """model_info.json, checked to describe `version` and the checkpoint and metrics as they are."""
    hint = "run `dvc repro release/dvc.yaml` (or `python -m mlt_project.scripts.release`)"
    info = read_json(info_path(cfg), hint)
    stale = None
    if info.get("version") != version:
        stale = f"is for version {info.get('version')}, not {version}"
    elif info.get("checkpoint_sha256") != sha256_file(cfg.paths.model):
        stale = f"was exported from another {cfg.paths.model}"
    elif info.get("metrics") != read_json(Path(cfg.paths.metrics), "run `dvc repro`"):
        stale = f"records other metrics than {cfg.paths.metrics}"
    if stale:
        raise PipelineError(f"{info_path(cfg)} {stale}: {hint} to export again")
    return info


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


def upload_files(cfg: Config, params_path: Path, info: dict[str, Any]) -> dict[str, Path]:
    """What a release holds, by object name; model.onnx and its data files as exported."""
    model = onnx_path(cfg)
    others = {
        Path(cfg.paths.model).name: Path(cfg.paths.model),
        INFO_FILE: info_path(cfg),
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
                f"{path} is not the file export-onnx wrote ({INFO_FILE} records "
                f"{', '.join(sorted(recorded))}): run export-onnx again"
            )
    return exported | others


def release_target(version: str, force: bool = False) -> tuple[S3Location, Any]:
    """Where `version` goes, and an S3 client, once the settings, credentials and bucket are
    known to work and the version is not released yet (unless `force`)."""
    where = s3_location(MODEL_RELEASE_S3_URI, "where releases go")
    require_credentials()
    s3 = client("s3")
    with aws_errors("S3", where.bucket, where.setting):
        s3.head_bucket(Bucket=where.bucket)
        released = object_exists(s3, where.bucket, where.key(version, MANIFEST))
    if released and not force:
        raise PipelineError(
            f"version {version} is already released at {where.uri(version)}/: bump "
            "release.version in params.yaml, or pass --force to replace it"
        )
    return where, s3


def checked_files(cfg: Config, version: str, params_path: Path) -> tuple[dict, dict[str, Path]]:
    """model_info.json and the files to upload, after the parity gate on the exact ONNX file."""
    info = release_info(cfg, version)
    files = upload_files(cfg, params_path, info)
    images, _, _ = read_split(split_path(cfg.paths.processed, "test"))
    sample = images[: cfg.release.parity_samples]
    check_parity(
        load_network(cfg),
        files[MODEL_FILE],
        sample,
        rtol=cfg.release.parity_rtol,
        atol=cfg.release.parity_atol,
    )
    return info, files


def put_release(
    s3: Any, where: S3Location, version: str, files: dict[str, Path], git: dict[str, Any]
) -> dict[str, Any]:
    """Upload, read every object back, then write the manifest last; return the manifest.

    A version counts as released only when its manifest exists, so an interrupted upload is
    simply run again.
    """
    bucket, base = where.bucket, where.key(version) + "/"
    hashes = {name: sha256_file(path) for name, path in files.items()}
    with aws_errors("S3", bucket, where.setting):
        # Unreleased first, so nobody takes a half-replaced version as released.
        s3.delete_object(Bucket=bucket, Key=base + MANIFEST)
        start = time.perf_counter()
        for name, path in files.items():
            put_file(s3, bucket, base + name, path, hashes[name])
        upload_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for name in files:
            actual, claimed = stored_sha256(s3, bucket, base + name)
            if actual != hashes[name] or claimed != hashes[name]:
                raise PipelineError(
                    f"{where.uri(version, name)} does not match {files[name]} after upload "
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
        s3.put_object(Bucket=bucket, Key=base + MANIFEST, Body=body)
        if s3.get_object(Bucket=bucket, Key=base + MANIFEST)["Body"].read() != body:
            raise PipelineError(f"{where.uri(version, MANIFEST)} does not read back as written")
        verify_seconds = time.perf_counter() - start
    size = sum(path.stat().st_size for path in files.values())
    log.info(
        "released %s/: %d objects (%.2f MB) uploaded in %.2fs, verified in %.2fs",
        where.uri(version),
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
    where, s3 = release_target(version, force)
    files = checked_files(cfg, version, params_path)[1]
    return put_release(s3, where, version, files, git_state(tag_name(version)))


def check(cfg: Config, version: str) -> tuple[S3Location, Any, bool]:
    """Everything a release needs that can be known before writing anything: a clean commit,
    a training pipeline dvc.lock agrees with, a free tag, the S3 settings, credentials and
    bucket, an unreleased version. Return where it goes, an S3 client, and whether to tag."""
    commit = head_commit()
    require_clean_tree(allow_dirty=False)
    require_fresh_pipeline(False, "the release", flag=None)
    needs_tag = require_free_tag(tag_name(version), commit)
    where, s3 = release_target(version)
    return where, s3, needs_tag


def release(cfg: Config, version: str, params_path: Path = PARAMS_FILE) -> dict[str, Any]:
    """check -> export (`dvc repro release/dvc.yaml`) -> tag -> upload -> push the tag."""
    tag = tag_name(version)
    where, s3, needs_tag = check(cfg, version)
    log.info("release %s to %s/: checks passed", version, where.uri(version))
    dvc("repro", RELEASE_PIPELINE, quiet=False)  # exports, unless the export is up to date
    info, files = checked_files(cfg, version, params_path)
    if needs_tag:
        create_annotated_tag(tag, tag_message(version, info))
    try:
        manifest = put_release(s3, where, version, files, git_state(tag))
    except BaseException:
        if needs_tag:  # a failed release leaves no tag: the next try starts over
            delete_tag(tag)
        raise
    log.info("%s", push_tag(tag))
    return manifest


def main(argv: list[str] | None = None) -> int:
    common = cli.parser(None, add_help=False)  # --params for the top level and each step
    common.add_argument("--version", help="release version (default: release.version in params)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("check", parents=[common], help="check what a release needs; write nothing")
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

    def run() -> None:
        cfg = load_config(args.params)
        version = resolve_version(cfg, args.version)
        if args.command is None:
            if args.version not in (None, cfg.release.version):
                # The export stage of release/dvc.yaml reads release.version, not this flag.
                raise PipelineError(
                    f"--version {args.version} differs from release.version "
                    f"{cfg.release.version} in {args.params}: set it there and commit, or use "
                    "--version with the single steps"
                )
            release(cfg, version, args.params)
        elif args.command == "check":
            where = check(cfg, version)[0]
            print(f"ready to release {version} to {where.uri(version)}/")
        elif args.command == "export-onnx":
            export_release(cfg, version, args.params, args.max_inline_bytes)
        elif args.command == "create-tag":
            create_tag(cfg, version, args.allow_dirty)
        else:
            upload_s3(cfg, version, args.force, args.params)

    return cli.run(run, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
