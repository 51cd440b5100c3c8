"""The demo's progress, on stderr, so that stdout holds only results."""

from __future__ import annotations

import sys
from typing import TextIO


class Counter:
    """Shows ` [done/total label]` at the cursor on a terminal; silent elsewhere.

    The counter is written after whatever the line already shows ("training
    ... [3/40 epochs]") and rewritten in place with backspaces. A log file or
    a CI console would get every update, so off a terminal nothing is shown.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.shown = 0

    @property
    def enabled(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def update(self, done: int) -> None:
        """Shows that `done` of `total` are done."""
        if not self.enabled:
            return
        text = f" [{done}/{self.total} {self.label}]"
        self._write(text)

    def close(self) -> None:
        """Erases the counter, leaving the cursor where it started."""
        if self.shown:
            self._write("")

    def _write(self, text: str) -> None:
        # Back to where the counter starts, the new text, blanks over what is
        # left of the old one, and back to the end of the new text.
        left_over = max(0, self.shown - len(text))
        self.stream.write("\b" * self.shown + text + " " * left_over + "\b" * left_over)
        self.stream.flush()
        self.shown = len(text)
