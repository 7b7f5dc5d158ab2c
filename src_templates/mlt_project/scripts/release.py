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

    python -m mlt_project.scripts.release promote 0.2.0 --stage production [--force --reason "..."]

promote puts a released version into a stage, if it is not worse than the stage's version on
its test split by more than release.promote_tolerance (release/promote.py); `serve --stage`
serves it. It needs no torch: each step imports only what it runs.
"""

from __future__ import annotations

import argparse

from ..base import cli
from ..base.config import load_config
from ..base.errors import PipelineError
from ..release.version import resolve_version


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
        help="weights over this size go to external-data files beside model.onnx (default: "
        "protobuf's 2 GiB limit, less room for the graph)",
    )
    tag = commands.add_parser(
        "create-tag", parents=[common], help="annotated git tag v<version> on HEAD"
    )
    tag.add_argument("--allow-dirty", action="store_true", help="tag despite uncommitted changes")
    upload = commands.add_parser(
        "upload-s3", parents=[common], help="upload, verify, then write the manifest"
    )
    upload.add_argument("--force", action="store_true", help="replace a released version")
    promote = commands.add_parser(
        "promote", parents=[common], help="a released version into a stage, if not worse"
    )
    promote.add_argument("release", metavar="VERSION", help="the released version to promote")
    promote.add_argument("--stage", default="production", help="default: production")
    promote.add_argument(
        "--force", action="store_true", help="promote even if worse, or not comparable"
    )
    promote.add_argument("--reason", help="why (required with --force; recorded)")
    args = parser.parse_args(argv)

    def run() -> None:
        cfg = load_config(args.params)
        if args.command == "promote":
            from ..release.promote import promote as promote_version

            tolerance = cfg.release.promote_tolerance
            promote_version(args.release, args.stage, tolerance, args.force, args.reason)
            return
        version = resolve_version(cfg, args.version)
        # Each step imports what it runs: promote needs no torch, the export does.
        if args.command is None:
            if args.version not in (None, cfg.release.version):
                # The export stage of release/dvc.yaml reads release.version, not this flag.
                raise PipelineError(
                    f"--version {args.version} differs from release.version "
                    f"{cfg.release.version} in {args.params}: set it there and commit, or use "
                    "--version with the single steps"
                )
            from ..release.publish import release

            release(cfg, version, args.params)
        elif args.command == "check":
            from ..release.publish import check

            store = check(cfg, version)[0]
            print(f"ready to release {version} to {store.uri(version)}/")
        elif args.command == "export-onnx":
            from ..release.export import MAX_INLINE_BYTES, export_release

            limit = args.max_inline_bytes
            export_release(cfg, version, args.params, MAX_INLINE_BYTES if limit is None else limit)
        elif args.command == "create-tag":
            from ..release.tag import create_tag

            create_tag(cfg, version, args.allow_dirty)
        else:
            from ..release.upload import upload_s3

            upload_s3(cfg, version, args.force, args.params)

    return cli.run(run, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
