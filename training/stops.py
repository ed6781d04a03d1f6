"""How a training run ends early, and the one line that says so.

SIGINT/SIGTERM become a stop request (:class:`StopRequest`): the step finishes, a checkpoint is
saved, main.py exits 130. A second Ctrl-C stops at once (:class:`Interrupted`). A non-finite
loss or weights, or a dead DataLoader worker, stop with a :class:`TrainingError`. Each is a
``UserError``, so ``utilities.errors.run_command`` prints it as one line with its exit status.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
from typing import Iterator

from utilities import run_folder as rf
from utilities.errors import UserError, resume_hint


class TrainingError(UserError, RuntimeError):
    """A failure during training that deserves a one-line message (e.g. a non-finite loss)."""


class Interrupted(UserError):
    """A second Ctrl-C outside a checkpoint save: the run stopped at once."""

    exit_status = 130


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag: the current step finishes, a checkpoint is saved.

    A second signal stops at once (KeyboardInterrupt, reported by :func:`stops_reported`),
    except during a checkpoint save (:meth:`saving`): the save finishes, then the run exits."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.in_save = False
        self.exit_after_save = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.in_save:  # never leave a save half done: exit right after it
                self.exit_after_save = True
                return
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        self.in_save = True
        try:
            yield
        finally:
            self.in_save = False


def died_in_loader_worker(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of a dead DataLoader worker: its RuntimeError naming
    the worker's pid (from its SIGCHLD handler or its queue check), or a connection broken while
    a worker handed a batch over (raised in torch.utils.data, inside multiprocessing)."""
    if isinstance(error, RuntimeError):
        return str(error).startswith("DataLoader worker (pid")
    files = " ".join(frame.f_code.co_filename.replace(os.sep, "/")
                     for frame, _ in traceback.walk_tb(error.__traceback__))
    return (isinstance(error, (ConnectionError, EOFError)) and "torch/utils/data/" in files
            and "multiprocessing/" in files)


@contextlib.contextmanager
def stops_reported(folder: str, kernels: int) -> Iterator[None]:
    """Around the epochs: a second Ctrl-C becomes :class:`Interrupted` and a dead DataLoader
    worker (typically the out-of-memory killer) a :class:`TrainingError`, each saying how to
    continue the run in ``folder``."""
    try:
        yield
    except KeyboardInterrupt:
        kept = os.path.isfile(os.path.join(folder, rf.LAST_CHECKPOINT))
        hint = f"; the last saved checkpoint is kept. {resume_hint(folder)}" if kept else ""
        raise Interrupted(f"interrupted{hint}") from None
    except (RuntimeError, ConnectionError, EOFError) as error:
        if not died_in_loader_worker(error):
            raise
        # reap the dead worker, or torch's SIGCHLD handler reports it again at the next exit
        multiprocessing.active_children()
        fewer = f"--kernels {kernels // 2}" if kernels > 1 else "--kernels 0"
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(". ")
        raise TrainingError(f"a data loader worker died ({detail}; often the out-of-memory "
                            f"killer); the last checkpoint is kept. {resume_hint(folder)} "
                            f"{fewer} (fewer workers use less memory)") from None
