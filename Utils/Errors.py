"""Errors a user can fix without reading a traceback.

Anything raised as a ``UserError`` is caught by the entry points (:func:`report_user_error`,
through ``Params.run_cli`` for the training stages) and printed as one line,
``error: <message>``, on stderr, and the program exits with status 2. Bad command lines
end the same way (:class:`OneLineErrorParser`). An
interrupt (Ctrl-C, or SIGTERM turned into :class:`Terminated`) ends the run with the
summary of what was kept and exit status 130 / 143. Everything else (bugs) propagates.
"""
import argparse
import os
import sys


class UserError(Exception):
    """Base class: bad input from the user (flags, files), reported without a traceback."""


class ConfigError(UserError, ValueError):
    """A flag value or combination of flags that cannot work; the message names the flags."""


class DataError(UserError):
    """A dataset that is missing or malformed (e.g. splits of different shapes)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or does not fit the model being built."""


class NonFiniteError(UserError):
    """A loss part or a model that became NaN or infinite (a learning rate or weight too large).

    Raised where it is detected with what is known there (the loss part and batch, or
    "model outputs"); :func:`Utils.Training.fit` adds the stage and epoch.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (``Params.run_cli`` installs the handler), so
    the run ends like an interrupt: records kept, summary printed, exit status 143."""

    exit_code = 143


def discard_closed_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone (``| tee`` ended by the same Ctrl-C),
    so that later writes and the interpreter's flush at exit raise no BrokenPipeError."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def interrupt_exit_code(err: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: the shell's 128 + signal number."""
    return getattr(err, "exit_code", 130)


def flush_stdout() -> None:
    """Flush stdout, discarding it when its reader is gone (:func:`discard_closed_stdout`)."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        discard_closed_stdout()


def report_user_error(err: UserError) -> int:
    """Print ``error: <message>`` (one line, after whatever stdout still holds); return 2."""
    flush_stdout()
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: …`` line (exit status 2), not a usage dump."""

    def error(self, message):
        flush_stdout()
        print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
