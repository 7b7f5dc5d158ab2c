"""S3 access for releases: a client from the standard AWS settings, and one-line errors.

The endpoint follows boto's convention: AWS_ENDPOINT_URL points every client at an S3-compatible
store (MinIO, Ceph, a local moto server); unset, it is AWS. Credentials come from the usual chain
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable

from ..errors import PipelineError

# Bounded: an unreachable endpoint fails after these attempts (a few seconds of backoff).
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60

# botocore logs where it found credentials and the endpoint at INFO, on every run.
logging.getLogger("botocore").setLevel(logging.WARNING)


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def s3_client() -> Any:
    """An S3 client; botocore reads AWS_ENDPOINT_URL, the region and the credentials itself."""
    config = BotoConfig(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )
    return botocore.session.get_session().create_client("s3", config=config)


@contextmanager
def s3_errors(bucket: str, setting: str = "MODEL_RELEASE_S3_BUCKET") -> Iterator[None]:
    """Turn the errors a user can fix (credentials, endpoint, bucket) into PipelineError.

    `setting` names the variable that chose the bucket, for the message when it is missing.
    """
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise PipelineError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(environment or .env), or AWS_PROFILE"
        ) from None
    except ProfileNotFound as error:
        raise PipelineError(f"{error}: fix AWS_PROFILE or ~/.aws/config") from None
    except (EndpointUnreachable, HTTPClientError) as error:
        raise PipelineError(
            f"cannot reach S3 at {endpoint()} after {MAX_ATTEMPTS} attempts ({type(error).__name__}): "
            "check AWS_ENDPOINT_URL and the network"
        ) from None
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            raise PipelineError(
                f"bucket {bucket!r} does not exist at {endpoint()}: create it, or fix {setting}"
            ) from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise PipelineError(
                f"S3 refused access to bucket {bucket!r} ({code}): check the credentials and "
                "their permissions"
            ) from None
        raise PipelineError(f"S3 error on bucket {bucket!r}: {error}") from None
    except BotoCoreError as error:  # e.g. a bucket name S3 cannot accept
        raise PipelineError(f"S3 request for bucket {bucket!r} failed: {error}") from None


def object_exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def put_file(client: Any, bucket: str, key: str, path: Path, sha256: str) -> None:
    """Upload one file; its SHA-256 travels with it as object metadata."""
    with path.open("rb") as body:
        client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"sha256": sha256})


def stored_sha256(client: Any, bucket: str, key: str) -> tuple[str, str]:
    """(SHA-256 of the bytes in the bucket, SHA-256 its metadata claims), streamed."""
    response = client.get_object(Bucket=bucket, Key=key)
    digest = hashlib.sha256()
    for chunk in response["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest(), response.get("Metadata", {}).get("sha256", "")
