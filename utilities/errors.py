"""One user-error type and one way to report it, shared by main.py and every command.

Bad input (a file, flag or value the user can fix) raises a subclass of ``UserError`` whose
message names what is wrong and what was expected. ``run_command`` prints that message as one
line ``error: ...`` on stderr and returns the error's exit status, so no command shows a
traceback for something the user can act on.
"""
from __future__ import annotations

import sys
from typing import Callable

RESUME_HINT = "Continue with: python main.py --resume {folder}"


class UserError(Exception):
    """Bad input or a failure the user can act on; ``str(error)`` is the whole one-line message."""

    exit_status = 2

    def short_message(self) -> str:
        """The line printed after ``error: `` (subclasses may shorten long messages)."""
        return str(self)


def resume_hint(folder: str) -> str:
    """The one sentence that tells how to continue a stopped run."""
    return RESUME_HINT.format(folder=folder)


def report(error: BaseException) -> None:
    """Print ``error`` as one ``error: ...`` line on stderr."""
    message = error.short_message() if isinstance(error, UserError) else str(error)
    print(f"error: {message}", file=sys.stderr)


def run_command(command: Callable[[], int]) -> int:
    """Run ``command``; a ``UserError`` prints one line and returns its exit status.

    A full disk or a read-only folder (``OSError`` with a file name) is reported the same way,
    naming the file. Ctrl-C exits with status 130 without a traceback. Temporary files are the
    writers' to remove (``tools._common.atomic_output``, ``checkpoint.save_checkpoint``).
    """
    try:
        return command()
    except UserError as error:
        report(error)
        return error.exit_status
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); nothing more was written", file=sys.stderr)
        return 130
    except OSError as error:
        if error.filename is None:
            raise
        reason = error.strerror or type(error).__name__
        print(f"error: cannot write or read '{error.filename}': {reason}", file=sys.stderr)
        return 2
