"""Logging set-up for every command; imports nothing heavy, so data-only stages start fast."""

from __future__ import annotations

import logging

from .errors import RedactSecrets

# Where Lightning logs its "Tip: try installing ..." lines (both modules set one shared logger).
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class DropAdvertisements(logging.Filter):
    """Lightning's tips to install its cloud products, on every run: nothing to act on here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def setup_logger(level: int = logging.INFO) -> logging.Logger:
    """Log to stderr with timestamps, secrets redacted; returns the package's logger."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdvertisements) for f in logger.filters):
            logger.addFilter(DropAdvertisements())
    return logging.getLogger(__name__.partition(".")[0])  # the package's, not base's
