"""The object store on S3 (deploy/__init__.py's ObjectStore): one bucket and prefix.

Every call goes through `aws_errors`, so what the user can fix (credentials, region, endpoint,
bucket, permissions) is one line naming the setting that chose the bucket.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ...base.fileio import atomic_output
from .settings import S3Location, aws_errors, client, require_credentials

CHUNK = 1 << 20
MISSING = ("404", "NoSuchKey", "NotFound")


class S3Store:
    def __init__(self, where: S3Location) -> None:
        self.where = where
        self._client: Any = None

    @classmethod
    def at(cls, uri: str, setting: str) -> S3Store:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(S3Location(bucket, prefix.strip("/"), setting))

    @property
    def s3(self) -> Any:
        if self._client is None:
            require_credentials()
            self._client = client("s3")
        return self._client

    def errors(self) -> Any:
        return aws_errors("S3", self.where.bucket, self.where.setting)

    def uri(self, key: str = "") -> str:
        return self.where.uri(key)

    def _key(self, key: str) -> str:
        return self.where.key(key)

    def check(self) -> None:
        with self.errors():
            self.s3.head_bucket(Bucket=self.where.bucket)

    def exists(self, key: str) -> bool:
        with self.errors():
            try:
                self.s3.head_object(Bucket=self.where.bucket, Key=self._key(key))
            except ClientError as error:
                if str(error.response.get("Error", {}).get("Code")) not in MISSING:
                    raise
                # A HEAD answers 404 for a missing bucket too: that is a setting to fix, not a
                # missing object (a checkpoint pull would start training afresh, and say nothing).
                self.s3.head_bucket(Bucket=self.where.bucket)
                return False
        return True

    def put(self, key: str, path: Path, sha256: str) -> None:
        with self.errors(), path.open("rb") as body:
            self.s3.put_object(
                Bucket=self.where.bucket, Key=self._key(key), Body=body, Metadata={"sha256": sha256}
            )

    def get(self, key: str, path: Path) -> None:
        with self.errors(), atomic_output(path) as tmp, tmp.open("wb") as f:
            response = self.s3.get_object(Bucket=self.where.bucket, Key=self._key(key))
            for chunk in response["Body"].iter_chunks(CHUNK):
                f.write(chunk)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.errors():
            self.s3.put_object(Bucket=self.where.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with self.errors():
            response = self.s3.get_object(Bucket=self.where.bucket, Key=self._key(key))
            return response["Body"].read()

    def checksum(self, key: str) -> tuple[str, str]:
        """(SHA-256 of the bytes in the bucket, SHA-256 its metadata claims), streamed."""
        digest = hashlib.sha256()
        with self.errors():
            response = self.s3.get_object(Bucket=self.where.bucket, Key=self._key(key))
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
        return digest.hexdigest(), response.get("Metadata", {}).get("sha256", "")

    def delete(self, key: str) -> None:
        with self.errors():
            self.s3.delete_object(Bucket=self.where.bucket, Key=self._key(key))

    def keys(self, prefix: str = "") -> list[str]:
        base = self._key("") + "/" if self._key("") else ""
        found: list[str] = []
        with self.errors():
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.where.bucket, Prefix=base + prefix
            )
            for page in pages:
                found += [item["Key"].removeprefix(base) for item in page.get("Contents", [])]
        return sorted(found)
