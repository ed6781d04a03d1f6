"""Learning-rate schedules of ``--scheduler``, stepped once per epoch (published DAS options).

``multistep``: multiply the learning rate by ``--gamma`` at each epoch of ``--tau``.
``step``: multiply it by ``--gamma`` every ``--step_tau`` epochs.
"""
from __future__ import annotations

from typing import Sequence

import torch

SCHEDULERS = ("multistep", "step")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, tau: Sequence[int],
                   step_tau: int, gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler called ``name``; an unknown name or a non-positive ``--step_tau`` stops
    with a message naming the option."""
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tau), gamma=gamma)
    if name == "step":
        if step_tau <= 0:
            raise ValueError(f"--step_tau must be a positive number of epochs, got {step_tau}")
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_tau, gamma=gamma)
    raise ValueError(f"unknown --scheduler '{name}'; valid names: {', '.join(SCHEDULERS)}")
