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

from ..base import cli
from ..base.config import RESUME_FILE, Config, load_config
from ..base.fileio import sha256_file
from ..deploy import ObjectStore, configured_store

CHECKPOINTS = "CHECKPOINT_S3_URI"

log = logging.getLogger(__name__)


def store() -> ObjectStore | None:
    """Where resume checkpoints are kept, or None when CHECKPOINT_S3_URI is unset."""
    return configured_store(CHECKPOINTS, "resume checkpoints", required=False)


def pull(cfg: Config) -> bool:
    """Download the remote checkpoint, if there is one; True when one was downloaded."""
    remote = store()
    if remote is None:
        return False
    if not remote.exists(RESUME_FILE):
        log.info("no checkpoint at %s: training starts fresh", remote.uri(RESUME_FILE))
        return False
    remote.get(RESUME_FILE, cfg.paths.resume_checkpoint)
    log.info("pulled %s to %s", remote.uri(RESUME_FILE), cfg.paths.resume_checkpoint)
    return True


def push(cfg: Config) -> bool:
    """Upload the local checkpoint, if there is one; True when one was uploaded."""
    remote, path = store(), cfg.paths.resume_checkpoint
    if remote is None or not path.is_file():
        return False
    remote.put(RESUME_FILE, path, sha256_file(path))
    log.info("pushed %s to %s", path, remote.uri(RESUME_FILE))
    return True


def clear(cfg: Config) -> None:
    """Delete the remote checkpoint: the run it belonged to has finished."""
    remote = store()
    if remote is not None:
        remote.delete(RESUME_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("command", choices=("pull", "push", "clear"))
    args = parser.parse_args(argv)
    commands = {"pull": pull, "push": push, "clear": clear}
    return cli.run(lambda: commands[args.command](load_config(args.params)), env=True)


if __name__ == "__main__":
    raise SystemExit(main())
