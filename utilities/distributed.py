"""torchrun / DistributedDataParallel support. Without torchrun every function is a no-op, so the
single-process code path is the same code.

Mining and DAS need the global batch: :func:`gather_with_grad` gathers every rank's embeddings
and labels in rank order, keeping the autograd graph of the local part, so that each rank computes
the same loss a single process would compute on the global batch.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_environment() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1 in the environment)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def gather_with_grad(embeddings: torch.Tensor,
                     labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate all ranks' rows in rank order; only the local rows carry gradient here (each
    rank back-propagates through its own rows, DDP then sums the parameter gradients)."""
    if not is_distributed():
        return embeddings, labels
    size = world_size()
    gathered: List[torch.Tensor] = [torch.empty_like(embeddings) for _ in range(size)]
    dist.all_gather(gathered, embeddings.detach().contiguous())
    gathered[rank()] = embeddings
    gathered_labels = [torch.empty_like(labels) for _ in range(size)]
    dist.all_gather(gathered_labels, labels.contiguous())
    return torch.cat(gathered), torch.cat(gathered_labels)


def loss_scale() -> float:
    """DDP averages gradients over ranks; each rank's loss is the global loss, whose gradient is
    split across ranks by rows, so scaling by the world size recovers the single-process sum."""
    return float(world_size())


def wrap_model(model: nn.Module, device: torch.device,
               find_unused_parameters: bool = False) -> nn.Module:
    """DDP around ``model``; ``find_unused_parameters`` for steps where some parameters get no
    gradient (``--n_warm``)."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def broadcast_string(text: str) -> str:
    if not is_distributed():
        return text
    holder = [text]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
