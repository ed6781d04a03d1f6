"""Choosing the torch device: the one rule shared by main.py, the tools and the bench scripts."""
from __future__ import annotations

from typing import Optional

import torch

from utilities import distributed
from utilities.errors import UserError


class DeviceError(UserError, ValueError):
    """A --device or --gpu that names no usable device."""


def choose_device(name: Optional[str] = None, gpu: int = 0) -> torch.device:
    """``name`` (cpu, cuda, cuda:N), checked against the devices this process sees; without a
    name: the process's own card under torchrun, else CUDA card ``gpu`` when CUDA is present,
    else the CPU."""
    if name:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError, TypeError):
            raise DeviceError(f"--device '{name}' is not a device name (cpu, cuda, cuda:1)") \
                from None
        if device.type not in ("cpu", "cuda"):
            raise DeviceError(f"--device '{name}': expected cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"--device {name} asked for CUDA, but no CUDA device is available")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise DeviceError(f"--device {name} does not exist; {torch.cuda.device_count()} "
                              f"CUDA device(s) are visible")
        return device
    if distributed.is_distributed():
        return distributed.local_device()
    if torch.cuda.is_available():
        if gpu >= torch.cuda.device_count():
            raise DeviceError(f"--gpu {gpu} does not exist; {torch.cuda.device_count()} CUDA "
                              f"device(s) are visible")
        return torch.device(f"cuda:{gpu}")
    return torch.device("cpu")
