"""Checkpoints: written atomically, read without running code from the file."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Sequence

import torch

from utilities.errors import UserError

FORMAT_VERSION = 1
# What main.py's checkpoint_last.pth / checkpoint_best.pth hold (see main.py, checkpoint_state).
RUN_STATE_KEYS = ("epoch", "global_step", "best", "network", "optimizer", "scheduler", "criterion",
                  "das", "sampler", "epoch_stats", "rng")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the current configuration."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (typically a full disk); the previous one is kept."""


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a kill or a failed write
    during the save leaves the previous checkpoint intact."""
    state = dict(state, format_version=FORMAT_VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pth")
        os.close(handle)
        torch.save(state, temporary)
        os.replace(temporary, path)
    except (RuntimeError, OSError) as error:
        raise CheckpointWriteError(_write_failure(path, error)) from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def _write_failure(path: str, error: BaseException) -> str:
    """One line for a failed save: torch reports a full disk as '[enforce fail at
    inline_container.cc...] file write failed', the OS as ENOSPC."""
    text = str(error)
    try:
        free_bytes = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        free = f"{free_bytes / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        reason = f"the disk is full ({free})"
    elif "write failed" in text or "enforce fail" in text or "unexpected pos" in text:
        reason = f"the file write failed; is the disk full? ({free})"
    else:
        reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text
                                                      else type(error).__name__)
    return f"cannot write checkpoint '{path}': {reason}; the previous checkpoint is kept"


def unloadable_reason(path: str, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words. Never repeats torch's advice
    to retry with weights_only=False: that would run code from the file."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "not a file written by torch.save, or a truncated one"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain containers; checkpoints are loaded "
                "with weights_only=True, which never runs code from the file")
    first = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
    return f"damaged: {first}"


def load_checkpoint(path: str, required: Sequence[str] = ()) -> Dict[str, Any]:
    """The checkpoint at ``path``; ``required``: keys it must hold (e.g. RUN_STATE_KEYS)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"'{path}' is not a checkpoint ({unloadable_reason(path, error)})") \
            from None
    if required:
        if not isinstance(state, dict):
            raise CheckpointError(f"'{path}' is not a checkpoint of main.py (it holds a "
                                  f"{type(state).__name__})")
        missing = [key for key in required if key not in state]
        if missing:
            raise CheckpointError(f"'{path}' is not a checkpoint of main.py (no "
                                  f"{', '.join(repr(k) for k in missing)})")
    return state
