"""Checkpoints: written atomically, read without running code from the file."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import torch

from utilities.errors import UserError

FORMAT_VERSION = 1
# What main.py's checkpoint_last.pth / checkpoint_best.pth hold (see main.py, checkpoint_state).
RUN_STATE_KEYS = ("epoch", "global_step", "best", "network", "optimizer", "scheduler", "criterion",
                  "das", "sampler", "epoch_stats", "rng")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the current configuration."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (typically a full disk); the previous one, if any, is kept."""


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a kill or a failed write
    during the save leaves the previous checkpoint intact."""
    state = dict(state, format_version=FORMAT_VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    had_previous = os.path.isfile(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pth")
        os.close(handle)
        torch.save(state, temporary)
        os.replace(temporary, path)
    except (RuntimeError, OSError) as error:
        raise CheckpointWriteError(_write_failure(path, error, had_previous)) from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def _write_failure(path: str, error: BaseException, had_previous: bool = True) -> str:
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
    kept = ("the previous checkpoint is kept" if had_previous else
            "no earlier checkpoint exists there, so there is nothing to resume from yet")
    return f"cannot write checkpoint '{path}': {reason}; {kept}"


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


def _bytes_needed(tensor: torch.Tensor) -> int:
    """Bytes of storage ``tensor``'s shape, strides and offset address."""
    if tensor.numel() == 0:
        return 0
    last = tensor.storage_offset() + sum((size - 1) * stride
                                         for size, stride in zip(tensor.shape, tensor.stride()))
    return (last + 1) * tensor.element_size()


def tensor_problem(value: Any, reference: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why ``value`` cannot be loaded in place of ``reference`` (None: any tensor), or None:
    not a tensor, a tensor without data (a meta tensor, or storage smaller than its shape),
    another shape, a float/non-float mismatch, NaN or infinite values. The damage kinds come
    before the shape, so a tensor that lost its data is never reported as another network's."""
    if not isinstance(value, torch.Tensor):
        shape = f" of shape {tuple(reference.shape)}" if reference is not None else ""
        return f"holds a {type(value).__name__} where a tensor{shape} belongs"
    if value.is_meta or value.untyped_storage().nbytes() < _bytes_needed(value):
        return f"holds no data (shape {tuple(value.shape)} without its values)"
    if reference is not None and tuple(value.shape) != tuple(reference.shape):
        return (f"has shape {tuple(value.shape)}, the network's is {tuple(reference.shape)}")
    if reference is not None and \
            value.dtype.is_floating_point != reference.dtype.is_floating_point:
        return f"is {value.dtype}, expected {reference.dtype}"
    if (value.dtype.is_floating_point or value.dtype.is_complex) and \
            not bool(torch.isfinite(value).all()):
        return "holds NaN or infinite values"
    return None


def check_state_dict(saved: Any, expected: Mapping[str, torch.Tensor], where: str, fits: str,
                     ignore_missing: Iterable[str] = (), extra_ok: bool = False) -> None:
    """Refuse weights that cannot be loaded or used, in one line naming the first bad entry.

    ``where`` names the file (``checkpoint 'PATH'``), ``fits`` what the weights are for
    (``--arch 'resnet50' of its config.json``). Keys missing or unexpected (renamed; unexpected
    ones allowed with ``extra_ok``; missing ones ending in ``ignore_missing`` allowed), entries
    that are not tensors, tensors without data, another shape or dtype kind, NaN/inf values.
    Shared by main.py (--resume, --pretrained_path) and the tools (tools._trained_model)."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{where} holds a {type(saved).__name__} where the weights of "
                              f"{fits} belong")
    ignore = tuple(ignore_missing)
    missing = [k for k in expected if k not in saved and not (ignore and k.endswith(ignore))]
    unexpected = [] if extra_ok else [k for k in saved if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of {fits} missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise CheckpointError(f"{where} does not hold the weights of {fits}: {'; '.join(parts)}")
    non_finite = []
    for key, value in saved.items():
        reference = expected.get(key)
        if reference is None and not isinstance(value, torch.Tensor) and extra_ok:
            continue  # e.g. metadata beside an ImageNet state dict
        problem = tensor_problem(value, reference)
        if problem is None:
            continue
        if problem.startswith("holds NaN"):
            non_finite.append(key)
        elif problem.startswith("has shape"):
            raise CheckpointError(f"{where} does not fit {fits}: '{key}' {problem}")
        else:
            raise CheckpointError(f"{where} is damaged: '{key}' {problem}")
    if non_finite:
        raise CheckpointError(f"{where} holds NaN or infinite weights in {len(non_finite)} "
                              f"tensor(s) (first: '{non_finite[0]}'); it cannot give meaningful "
                              f"embeddings or training - use another checkpoint or retrain")


def check_finite_state(state: Any, where: str, label: str) -> None:
    """Refuse NaN/inf or data-less tensors anywhere in a nested state (optimizer moments,
    criterion proxies, DAS counters), naming the first one by its key path."""
    def walk(value: Any, path: str):
        if isinstance(value, torch.Tensor):
            yield path, value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                yield from walk(item, f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                yield from walk(item, f"{path}/{index}")

    for path, tensor in walk(state, label):
        problem = tensor_problem(tensor)
        if problem is not None:
            raise CheckpointError(f"{where} is damaged: '{path}' {problem}")
