"""Checkpoints: written atomically, read without running code from the file."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the current configuration."""


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a kill during the save leaves
    the previous checkpoint intact."""
    state = dict(state, format_version=FORMAT_VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pth")
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint '{path}' (it is loaded with "
                              f"weights_only=True, so it may only hold tensors and plain "
                              f"containers): {error}") from None


def check_compatible(checkpoint: Dict[str, Any], arch: str, embed_dim: int, path: str) -> None:
    """Refuse a checkpoint trained with another backbone or embedding size, saying what differs."""
    saved = checkpoint.get("network", {})
    from architectures import parse_arch

    differences = []
    if saved.get("embed_dim") != embed_dim:
        differences.append(f"--embed_dim {saved.get('embed_dim')} there, {embed_dim} here")
    saved_arch = saved.get("arch", "")
    try:
        saved_spec, spec = parse_arch(saved_arch), parse_arch(arch)
        same = (saved_spec.backbone == spec.backbone and saved_spec.double == spec.double)
    except ValueError:
        same = saved_arch == arch
    if not same:
        differences.append(f"--arch '{saved_arch}' there, '{arch}' here")
    if differences:
        raise CheckpointError(f"checkpoint '{path}' does not fit this run: " + "; ".join(differences))
