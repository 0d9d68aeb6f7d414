"""The one root of the errors a user can fix (bad input, bad config, a missing artifact).

The CLI prints a `UserError` as one line and exits 2; every other exception is a bug and
keeps its traceback. Library code raises a subclass (ConfigError, DataError, SnapshotError...)
so callers can still catch the specific kind; many also subclass ValueError for callers that
predate this root.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input or configuration: printed as one clear message, exit code 2."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (or the config points to) does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """The output named by the user exists and the command was not told to replace it."""
