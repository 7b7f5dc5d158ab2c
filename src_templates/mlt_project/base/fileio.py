"""File helpers: outputs appear whole or not at all (written beside, then renamed); SHA-256."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import PipelineError


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `path` only if the block succeeds.

    A process killed mid-write leaves at most a hidden `.NAME.tmp` file, never a truncated
    output that DVC would cache.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        if not disk_full(error):
            raise
        raise PipelineError(
            f"no space left on the device while writing {path}: free some space (`df -h "
            f"{path.parent}`) and run again; {path} was left as it was"
        ) from None


def disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk (or the user's quota) is full.

    Python sets errno; Arrow and fsspec raise an OSError that only says so in its message.
    """
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(error) for text in ("No space left on device", "Disk quota exceeded"))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path, hint: str) -> Any:
    """A JSON file's contents; a missing or corrupt file is a PipelineError that ends in `hint`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        detail = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 text"
        where = f" at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise PipelineError(f"{path} is not valid JSON ({detail}{where}): {hint}") from None
