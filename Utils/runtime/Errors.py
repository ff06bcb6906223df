"""Errors a user can fix without reading a traceback.

Anything raised as a ``UserError`` is caught by the entry points (:func:`report_user_error`,
through ``Params.run_cli`` for the training stages) and printed as one line,
``error: <message>``, on stderr, and the program exits with status 2. Bad command lines
end the same way (:class:`OneLineErrorParser`). An
interrupt (Ctrl-C, or SIGTERM turned into :class:`Terminated`) ends the run with the
summary of what was kept and exit status 130 / 143. Everything else (bugs) propagates.

Under torchrun every process meets the same bad input: only rank 0 prints the line
(:func:`speaks`), the others exit with the same status silently. A refusal is that
one line: the library warnings a wrong input provokes on its way to it are silenced
(:func:`quiet_library_warnings`).
"""
import argparse
import os
import stat
import sys
import warnings


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
    "model outputs"); :meth:`Utils.training.Training.Stage.fit` adds the stage and epoch.
    """


class PeerLost(UserError):
    """Another process of a data-parallel run (torchrun) ended while this one waited for it in a
    collective; that process printed why (rank 0 prints every error line, :func:`speaks`)."""


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


#: Warnings libraries print on the way to a refusal, each (category, message regex): torch.load
#: says this of any pickle that is not a torch file (a split .pkl given as a checkpoint), and
#: the file is then refused in one line.
LIBRARY_WARNINGS = (
    (UserWarning, r"Detected pickle protocol \d+ in the checkpoint"),
)


def quiet_library_warnings() -> None:
    """Silence :data:`LIBRARY_WARNINGS` in this process (the entry points call it first)."""
    for category, message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def speaks() -> bool:
    """Whether this process prints error and start-up lines: always, except ranks 1.. of a torchrun
    run (``RANK`` ≥ 1), which meet the same input as rank 0 and leave the one line to it."""
    return int(os.environ.get("RANK") or 0) == 0


def stdout_may_drop() -> bool:
    """Whether lines already written to stdout may never be read: it is a pipe (``| tee log``)
    other than stderr's, whose reader a Ctrl-C sent to the whole group kills, perhaps before
    it read the last lines (they are lost without any error here)."""
    try:
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # closed or replaced streams
        return False
    return stat.S_ISFIFO(out.st_mode) and (out.st_dev, out.st_ino) != (err.st_dev, err.st_ino)


def report_user_error(err: UserError) -> int:
    """Print ``error: <message>`` (one line, after whatever stdout still holds; rank 0 only,
    :func:`speaks`); return 2."""
    flush_stdout()
    message = " ".join(str(err).split()) or type(err).__name__
    if speaks():
        print(f"error: {message}", file=sys.stderr)
    return 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: …`` line (exit status 2), not a usage dump."""

    def error(self, message):
        flush_stdout()
        if speaks():
            print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
