"""One error type for problems the user can fix, and the one place that turns it into exit 1."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping

# EX_TEMPFAIL from sysexits.h, "try again later": training stopped by SIGTERM (a Spot reclaim, a
# stopped job) saved a resume checkpoint. aws/batch-job*.json retry this exit code.
RETRY_EXIT_CODE = 75

# Environment variables whose values never appear in a message or a log line.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|AUTH")
REDACTED = "***"


class PipelineError(Exception):
    """A problem with the user's data, params or files: printed as one line, exit code 1."""


class ConfigError(PipelineError):
    """params.yaml, or the options a section gives what the code builds, is missing, unparsable,
    or does not match what the code takes."""


class Interrupted(SystemExit):
    """Training saved a resume checkpoint and stops: exit code RETRY_EXIT_CODE, no traceback."""

    def __init__(self) -> None:
        super().__init__(RETRY_EXIT_CODE)


def redact(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """`text` with the value of every secret-looking environment variable replaced by ***."""
    secrets = sorted(
        (value for name, value in environ.items() if SECRET_NAME.search(name) and len(value) >= 4),
        key=len,
        reverse=True,  # longest first, so a secret that contains another is hidden whole
    )
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """A log-handler filter: secret environment values never reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def run_main(stage: Callable[[], object]) -> int:
    """Run a command's body; print a PipelineError as one line and return 1.

    Any other exception is a bug and keeps its traceback.
    """
    try:
        stage()
    except PipelineError as error:
        # One line: a path or a message from a library may hold a line break.
        message = " ".join(redact(str(error)).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
