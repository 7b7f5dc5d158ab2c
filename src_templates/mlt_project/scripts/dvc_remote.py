"""Point DVC at an S3 remote from DVC_S3_BUCKET_NAME (environment or .env).

    python -m mlt_project.scripts.dvc_remote      # then: dvc push / dvc pull

The remote is s3://$DVC_S3_BUCKET_NAME/mlt-project, the default remote, written with
`dvc remote add --local` to .dvc/config.local, which git ignores: nothing about your storage is
committed, and each machine (laptop, CI, AWS Batch) runs this once. DVC itself does not read
.env, so the endpoint (AWS_ENDPOINT_URL) and region (AWS_DEFAULT_REGION) are written there too;
credentials are not: DVC finds them the usual AWS way (environment, AWS_PROFILE, instance role).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from .. import PROJECT_NAME
from ..env import load_env, require_env
from ..errors import PipelineError, run_main

REMOTE = "storage"


def dvc(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        raise PipelineError(f"dvc {' '.join(args[:2])} failed: {lines[-1]}")


def configure_remote(name: str = REMOTE) -> str:
    """Write the remote to .dvc/config.local and make it the default; return its URL."""
    bucket = require_env("DVC_S3_BUCKET_NAME", "the bucket DVC pushes data and models to")
    url = f"s3://{bucket.strip('/')}/{PROJECT_NAME}"
    dvc("remote", "add", "--local", "--default", "--force", name, url)
    settings = {"endpointurl": "AWS_ENDPOINT_URL", "region": "AWS_DEFAULT_REGION"}
    for option, variable in settings.items():
        if os.environ.get(variable):
            dvc("remote", "modify", "--local", name, option, os.environ[variable])
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=REMOTE, help=f"remote name (default: {REMOTE})")
    args = parser.parse_args(argv)
    load_env()

    def run() -> None:
        url = configure_remote(args.name)
        print(f"DVC remote {args.name!r} -> {url} (in .dvc/config.local); now `dvc push`")

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
