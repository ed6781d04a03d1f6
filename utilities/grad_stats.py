"""Gradient statistics logged per step (``step/grad_l2``, ``step/grad_max``, ``step/grad_norm``).

The published DAS code logs, after every backward, ``Grad/L2`` = the root mean square of all
gradient entries, sqrt(mean(g^2)), and ``Grad/Max`` = max |g|, over every parameter that has a
gradient. Here they are computed on the gradients' device with ``torch._foreach_norm`` (one
kernel per dtype/device group, no concatenation of the gradients), returned as 0-d tensors, and
read only at the ``--log_every`` cadence, so no step pays a host sync for them. ``grad_norm`` is
the global L2 norm sqrt(sum(g^2)), the quantity gradient clipping uses.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch


@torch.no_grad()
def gradient_norms(parameters: Iterable[torch.nn.Parameter]) -> Dict[str, torch.Tensor]:
    """``grad_l2`` (RMS of all entries), ``grad_max`` (max |g|) and ``grad_norm`` (global L2
    norm) of the parameters' current gradients; empty when no parameter has a gradient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return {}
    device = grads[0].device
    l2 = torch._foreach_norm(grads, 2)
    inf = torch._foreach_norm(grads, float("inf"))
    sum_sq = torch.stack([n.float().to(device) ** 2 for n in l2]).sum()
    count = sum(g.numel() for g in grads)
    return {"grad_l2": (sum_sq / count).sqrt(),
            "grad_max": torch.stack([n.float().to(device) for n in inf]).max(),
            "grad_norm": sum_sq.sqrt()}
