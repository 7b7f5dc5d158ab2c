"""Settings from the environment, filled in from `.env` (git-ignored) where the environment is silent.

Every script that needs a setting calls `load_env()` first; a variable that is already set in the
real environment always wins over the same name in `.env`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

from .errors import PipelineError

ENV_FILE = Path(".env")


def load_env(path: str | Path = ENV_FILE) -> None:
    """Add the variables of `path` (if it exists) that the environment does not already set."""
    load_dotenv(path, override=False)


def require_env(name: str, purpose: str) -> str:
    """The value of `name`, or a PipelineError that says where to set it."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise PipelineError(
            f"{name} is not set ({purpose}): set it in .env (see .env.example) or the environment"
        )
    return value
