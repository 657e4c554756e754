"""Logging set-up shared by every role: one line per event with time, level, role and logger."""

from __future__ import annotations

import logging
import sys
import time


def configure_logging(role: str, level: str = "INFO") -> None:
    """Send log records to stderr as 'time level role logger: message'."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)s {role} %(name)s: %(message)s", "%H:%M:%S")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RateLimitedLog:
    """Log a repeated event at most once per interval, with the count of repeats in between."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} similar messages suppressed)" if self._suppressed else ""
        self._logger.warning(message + suffix, *args)
        self._last = now
        self._suppressed = 0
