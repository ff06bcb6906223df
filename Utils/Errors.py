"""Errors a user can fix without reading a traceback.

Anything raised as a ``UserError`` is caught by ``Params.run_cli`` and printed as one
line, ``error: <message>``, on stderr, and the program exits with status 2. Everything
else (bugs, ``KeyboardInterrupt``) propagates as usual.
"""


class UserError(Exception):
    """Base class: bad input from the user (flags, files), reported without a traceback."""


class ConfigError(UserError, ValueError):
    """A flag value or combination of flags that cannot work; the message names the flags."""


class DataError(UserError):
    """A dataset that is missing or malformed (e.g. splits of different shapes)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit the model being built."""
