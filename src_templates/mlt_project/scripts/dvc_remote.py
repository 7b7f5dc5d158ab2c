"""Point DVC at the S3 remote DVC_S3_URI, with what DVC needs from .env.

    python -m mlt_project.scripts.dvc_remote      # then: dvc push / dvc pull

The remote, the default one, is written with `dvc remote modify --local` to .dvc/config.local,
which git ignores: nothing about your storage is committed, and each machine (laptop, CI, AWS
Batch) runs this once, and again after changing .env. DVC itself does not read .env, so the
endpoint (AWS_ENDPOINT_URL), the region (AWS_DEFAULT_REGION), the profile and the keys are
written there too, but only those that come from .env: what the real environment sets (CI
secrets, an instance role) DVC finds itself, and it never lands on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..base import cli, env
from ..deploy.aws.settings import DVC_S3_URI, s3_location
from ..release.dvcrepo import dvc

REMOTE = "storage"
CONFIG_LOCAL = Path(".dvc/config.local")
# DVC remote option <- variable. Region and endpoint are written from either source: DVC's S3
# client does not read AWS_ENDPOINT_URL.
SETTINGS = {"endpointurl": "AWS_ENDPOINT_URL", "region": "AWS_DEFAULT_REGION"}
CREDENTIALS = {
    "profile": "AWS_PROFILE",
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}


def configure_remote(name: str = REMOTE) -> tuple[str, list[str]]:
    """Write the remote to .dvc/config.local as the default; return its URL and the options set."""
    url = s3_location(DVC_S3_URI, "where DVC pushes data and models").uri()
    # --force replaces the whole section: options from an earlier run do not linger.
    dvc("remote", "add", "--local", "--default", "--force", name, url)
    written = []
    for option, variable in SETTINGS.items():
        if os.environ.get(variable):
            dvc("remote", "modify", "--local", name, option, os.environ[variable])
            written.append(option)
    for option, variable in CREDENTIALS.items():
        if variable in env.from_file and os.environ.get(variable):
            dvc("remote", "modify", "--local", name, option, os.environ[variable])
            written.append(option)
    # It may hold keys now: readable by this user only.
    (Path(dvc("root").strip()) / CONFIG_LOCAL).chmod(0o600)
    return url, written


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, params=False)
    parser.add_argument("--name", default=REMOTE, help=f"remote name (default: {REMOTE})")
    args = parser.parse_args(argv)

    def run() -> None:
        url, written = configure_remote(args.name)
        also = f" with {', '.join(written)}" if written else ""
        print(f"DVC remote {args.name!r} -> {url}{also} (in {CONFIG_LOCAL}); now `dvc push`")

    return cli.run(run, env=True)


if __name__ == "__main__":
    raise SystemExit(main())
