"""AWS for every command: the S3 settings, one client factory, one error translator.

The endpoint follows boto's convention: AWS_ENDPOINT_URL points every client at an S3-compatible
store (MinIO, Ceph, a local moto server); unset, it is AWS. Credentials come from the usual chain
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role), `.env` included once
the script has called `load_env()`.

Every S3 location is one setting, `<WHAT>_S3_URI=s3://bucket/prefix`: the scripts add only a
file name or a version folder to it. The names used before that scheme are still read, with a
one-line deprecation warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable

from ... import PROJECT_NAME
from ...base.errors import PipelineError

# Bounded: an unreachable endpoint fails after these attempts (a few seconds of backoff).
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60

NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in .env or the "
    "environment), or AWS_PROFILE, or run where an IAM role applies"
)
NO_REGION = "no AWS region: set AWS_DEFAULT_REGION in .env or the environment"

# The three S3 locations.
DVC_S3_URI = "DVC_S3_URI"  # the DVC remote
MODEL_RELEASE_S3_URI = "MODEL_RELEASE_S3_URI"  # releases: <uri>/<version>/
CHECKPOINT_S3_URI = "CHECKPOINT_S3_URI"  # resume checkpoints of AWS Batch jobs

log = logging.getLogger(__name__)
# botocore logs where it found credentials and the endpoint at INFO, on every run.
logging.getLogger("botocore").setLevel(logging.WARNING)


def _old_dvc_uri() -> tuple[str, str] | None:
    bucket = os.environ.get("DVC_S3_BUCKET_NAME", "").strip().strip("/")
    return ("DVC_S3_BUCKET_NAME", f"s3://{bucket}/{PROJECT_NAME}") if bucket else None


def _old_release_uri() -> tuple[str, str] | None:
    bucket = os.environ.get("MODEL_RELEASE_S3_BUCKET", "").strip().strip("/")
    if not bucket:
        return None
    prefix = os.environ.get("MODEL_RELEASE_S3_PREFIX", "models").strip().strip("/")
    parts = [bucket, prefix, PROJECT_NAME] if prefix else [bucket, PROJECT_NAME]
    return "MODEL_RELEASE_S3_BUCKET/_PREFIX", "s3://" + "/".join(parts)


# Setting -> how to build its value from the names used before, if any of them is set.
DEPRECATED: dict[str, Callable[[], tuple[str, str] | None]] = {
    DVC_S3_URI: _old_dvc_uri,
    MODEL_RELEASE_S3_URI: _old_release_uri,
}


@dataclass(frozen=True)
class S3Location:
    """s3://bucket/prefix, and the setting it came from (for the messages)."""

    bucket: str
    prefix: str
    setting: str

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"


_warned: set[str] = set()


def s3_uri(setting: str) -> str:
    """The value of an S3 setting, else the one its old names give (with a one-line deprecation
    warning), else ''."""
    value = os.environ.get(setting, "").strip()
    old = None if value else DEPRECATED.get(setting, lambda: None)()
    if old is None:
        return value
    name, value = old
    if name not in _warned:
        _warned.add(name)
        log.warning("%s is deprecated: set %s=%s instead (.env.example)", name, setting, value)
    return value


def s3_location(setting: str, purpose: str, required: bool = True) -> S3Location | None:
    """The bucket and prefix of `setting`; None when unset and not `required`."""
    uri = s3_uri(setting)
    if not uri:
        if not required:
            return None
        raise PipelineError(
            f"{setting} is not set ({purpose}): set it in .env (see .env.example) or the "
            "environment, e.g. s3://my-bucket/" + PROJECT_NAME
        )
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise PipelineError(f"{setting}={uri!r} is not s3://bucket[/prefix]: fix it")
    return S3Location(bucket, prefix.strip("/"), setting)


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "AWS"


def client(service: str, region: str | None = None) -> Any:
    """A client for `service`; botocore reads AWS_ENDPOINT_URL, the region (unless `region` is
    given) and credentials."""
    config = BotoConfig(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )
    with aws_errors(f"AWS {service}"):
        return botocore.session.get_session().create_client(
            service, region_name=region, config=config
        )


def require_credentials() -> None:
    """Fail before any work when the credential chain finds nothing."""
    with aws_errors("AWS"):
        if botocore.session.get_session().get_credentials() is None:
            raise NoCredentialsError


@contextmanager
def aws_errors(service: str, bucket: str | None = None, setting: str = "") -> Iterator[None]:
    """Turn what the user can fix (credentials, region, endpoint, bucket, permissions) into one
    PipelineError line. `setting` names the variable that chose `bucket`."""
    on = f" on bucket {bucket!r}" if bucket else ""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise PipelineError(NO_CREDENTIALS) from None
    except NoRegionError:
        raise PipelineError(NO_REGION) from None
    except ProfileNotFound as error:
        raise PipelineError(f"{error}: fix AWS_PROFILE or ~/.aws/config") from None
    except (EndpointUnreachable, HTTPClientError) as error:
        raise PipelineError(
            f"cannot reach {service} at {endpoint()} after {MAX_ATTEMPTS} attempts "
            f"({type(error).__name__}): check AWS_ENDPOINT_URL and the network"
        ) from None
    except ClientError as error:
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        operation = error.operation_name
        if bucket and code in ("NoSuchBucket", "404"):
            fix = f", or fix {setting}" if setting else ""
            raise PipelineError(
                f"bucket {bucket!r} does not exist at {endpoint()}: create it{fix}"
            ) from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise PipelineError(
                f"{service} refused {operation}{on} ({code}): check the credentials and their "
                "permissions"
            ) from None
        raise PipelineError(
            f"{service} {operation} failed{on}: {code}: {details.get('Message', error)}"
        ) from None
    except BotoCoreError as error:  # e.g. a bucket name S3 cannot accept
        raise PipelineError(f"{service} request failed{on}: {error}") from None
