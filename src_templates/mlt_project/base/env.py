"""Settings from the environment, filled in from `.env` (git-ignored) where the environment is silent.

Every script calls `load_env()` first; a variable that is already set in the real environment
always wins over the same name in `.env`. DVC does not read `.env`: `scripts.dvc_remote` copies
what DVC needs from it into `.dvc/config.local`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

ENV_FILE = Path(".env")

# The names the last load_env() took from the file, not from the real environment.
from_file: set[str] = set()


def load_env(path: str | Path = ENV_FILE) -> set[str]:
    """Add the variables of `path` (if it exists) that the environment does not already set;
    return their names."""
    loaded = set()
    if Path(path).is_file():
        for name, value in dotenv_values(path).items():
            if value is not None and name not in os.environ:
                os.environ[name] = value
                loaded.add(name)
    from_file.clear()
    from_file.update(loaded)
    return loaded
