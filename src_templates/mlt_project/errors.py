"""One error type for problems the user can fix, and the one place that turns it into exit 1."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's data, params or files: printed as one line, exit code 1."""


def run_main(stage: Callable[[], object]) -> int:
    """Run a command's body; print a PipelineError as one line and return 1.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        stage()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
