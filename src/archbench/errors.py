"""The one exception type archbench raises for problems a user can fix.

The CLI turns it into a single line on stderr and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""


class ArchbenchError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class DivergenceError(ArchbenchError):
    """Training produced a non-finite loss."""
