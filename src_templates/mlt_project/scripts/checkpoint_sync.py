"""Keep the resume checkpoint in S3, so that an AWS Batch retry, which starts in a fresh
container, resumes training instead of starting over.

    python -m mlt_project.scripts.checkpoint_sync pull|push|clear

CHECKPOINT_S3_URI (s3://bucket/prefix, in the job's environment or .env) says where: the
checkpoint is <prefix>/last.ckpt. Unset,
every command does nothing. docker/entrypoint.sh pulls before `dvc repro`, pushes after a
SIGTERM, and clears after a finished run. Whether a pulled checkpoint fits this run (same params,
data and code) train.py decides, as for a local one.
"""

from __future__ import annotations

import logging

from .. import cli
from ..config import RESUME_FILE, Config, load_config
from ..fileio import atomic_output, sha256_file
from .aws import CHECKPOINT_S3_URI, aws_errors, client, object_exists, put_file, s3_location

log = logging.getLogger(__name__)


def location() -> tuple[str, str] | None:
    """(bucket, key) of the remote checkpoint, or None when CHECKPOINT_S3_URI is unset."""
    where = s3_location(CHECKPOINT_S3_URI, "resume checkpoints", required=False)
    return None if where is None else (where.bucket, where.key(RESUME_FILE))


def pull(cfg: Config) -> bool:
    """Download the remote checkpoint, if there is one; True when one was downloaded."""
    where = location()
    if where is None:
        return False
    bucket, key = where
    s3 = client("s3")
    with aws_errors("S3", bucket, CHECKPOINT_S3_URI):
        if not object_exists(s3, bucket, key):
            log.info("no checkpoint at s3://%s/%s: training starts fresh", bucket, key)
            return False
        response = s3.get_object(Bucket=bucket, Key=key)
        with atomic_output(cfg.paths.resume_checkpoint) as tmp, tmp.open("wb") as f:
            for chunk in response["Body"].iter_chunks(1 << 20):
                f.write(chunk)
    log.info("pulled s3://%s/%s to %s", bucket, key, cfg.paths.resume_checkpoint)
    return True


def push(cfg: Config) -> bool:
    """Upload the local checkpoint, if there is one; True when one was uploaded."""
    where, path = location(), cfg.paths.resume_checkpoint
    if where is None or not path.is_file():
        return False
    bucket, key = where
    with aws_errors("S3", bucket, CHECKPOINT_S3_URI):
        put_file(client("s3"), bucket, key, path, sha256_file(path))
    log.info("pushed %s to s3://%s/%s", path, bucket, key)
    return True


def clear(cfg: Config) -> None:
    """Delete the remote checkpoint: the run it belonged to has finished."""
    where = location()
    if where is not None:
        bucket, key = where
        with aws_errors("S3", bucket, CHECKPOINT_S3_URI):
            client("s3").delete_object(Bucket=bucket, Key=key)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("command", choices=("pull", "push", "clear"))
    args = parser.parse_args(argv)
    commands = {"pull": pull, "push": push, "clear": clear}
    return cli.run(lambda: commands[args.command](load_config(args.params)), env=True)


if __name__ == "__main__":
    raise SystemExit(main())
