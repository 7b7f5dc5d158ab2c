"""Logging set-up for every command; imports nothing heavy, so data-only stages start fast."""

from __future__ import annotations

import logging

from .errors import RedactSecrets


def setup_logger(level: int = logging.INFO) -> logging.Logger:
    """Log to stderr with timestamps, secrets redacted; returns the package's logger."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    return logging.getLogger(__package__)
