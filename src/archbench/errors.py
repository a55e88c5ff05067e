"""The one exception type archbench raises for problems a user can fix.

The CLI turns it into a single line on stderr and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ArchbenchError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class DivergenceError(ArchbenchError):
    """Training produced a non-finite loss (``step`` 1-based within ``epoch``), or evaluation
    a non-finite validation loss (``step`` None)."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        super().__init__(message)
        self.epoch, self.step = epoch, step
