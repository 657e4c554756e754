"""Progress of a long loop: a carriage-return line on a terminal, a few log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time


class Progress:
    """Reports `done` out of `total` units of work.

    When stderr is a terminal, each update rewrites one line there. Otherwise an update is
    logged at INFO when it passes the next tenth of the total (and at the end), so log files
    get about ten lines per loop.

    Args:
        label: what is counted, for example "rMLE step".
        total: units of work in the loop.
        logger: where log lines go when stderr is not a terminal.
    """

    def __init__(self, label: str, total: int, logger: logging.Logger) -> None:
        self.label = label
        self.total = max(total, 1)
        self.logger = logger
        self.interactive = sys.stderr.isatty()
        self._next_log = 0.1
        self._started = time.monotonic()

    def update(self, done: int, detail: str = "") -> None:
        """Report that `done` units are finished; `detail` is appended, for example a loss."""
        fraction = done / self.total
        suffix = f", {detail}" if detail else ""
        if self.interactive:
            print(f"\r{self.label} {done}/{self.total}{suffix}   ", end="", file=sys.stderr, flush=True)
            if done >= self.total:
                print(file=sys.stderr)
            return
        if fraction + 1e-9 >= self._next_log or done >= self.total:
            elapsed = time.monotonic() - self._started
            self.logger.info("%s %d/%d%s (%.1f s)", self.label, done, self.total, suffix, elapsed)
            while self._next_log <= fraction + 1e-9:
                self._next_log += 0.1
