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
import logging
from pathlib import Path
from typing import Any

from .. import cli
from ..config import PARAMS_FILE, Config, load_config
from ..errors import PipelineError
from .dvcrepo import dvc, require_fresh_pipeline
from .export import add_max_inline_bytes, export_release
from .gitrepo import create_annotated_tag, delete_tag, head_commit, push_tag, require_clean_tree
from .tag import create_tag, require_free_tag, tag_message
from .upload import S3Location, checked_files, git_state, put_release, release_target, upload_s3
from .version import resolve_version, tag_name

log = logging.getLogger(__name__)

RELEASE_PIPELINE = "release/dvc.yaml"


def check(cfg: Config, version: str) -> tuple[S3Location, Any, bool]:
    """Everything a release needs that can be known before writing anything: a clean commit,
    a training pipeline dvc.lock agrees with, a free tag, the S3 settings, credentials and
    bucket, an unreleased version. Return where it goes, an S3 client, and whether to tag."""
    commit = head_commit()
    require_clean_tree(allow_dirty=False, flag=None)  # a release is of a commit, always
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
    add_max_inline_bytes(export)
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
