"""Embeddings of a dataset, computed in eval mode without gradients (sharded under torchrun)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset
from tqdm import tqdm

from utilities import distributed


def compute_embeddings(model: torch.nn.Module, dataset: torch.utils.data.Dataset,
                       device: Union[str, torch.device], batch_size: int,
                       num_workers: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(embeddings float32 (N, D), labels int64 (N,))`` in dataset order.

    The dataset yields ``(image, label, index)`` (the index is not needed); ``model(images)``
    returns the (B, D) embeddings, in float32 here whatever the model computes in.
    Every submodule's train/eval flag is restored afterwards, exactly as it was (a plain
    ``model.train()`` would also wake BatchNorm layers that a frozen backbone keeps in eval mode).
    """
    device = torch.device(device)
    # A dataset of encoded images (datasets' --decode gpu path) is decoded batch-wise on the
    # device; a Subset (torchrun shards) forwards to the dataset it wraps.
    inner = getattr(dataset, "dataset", dataset)
    decoder = inner.batch_decoder(device) if hasattr(inner, "batch_decoder") else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers,
                                         collate_fn=getattr(inner, "collate_fn", None),
                                         pin_memory=device.type == "cuda" and decoder is None)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    outputs, labels = [], []
    try:
        with torch.no_grad():
            for images, batch_labels, *_ in tqdm(loader, desc="Embedding", leave=False):
                images = decoder(images) if decoder is not None else images
                embedded = model(images.to(device, non_blocking=True))
                if not isinstance(embedded, torch.Tensor) or embedded.ndim != 2:
                    raise TypeError(f"{type(model).__name__}.forward must return a (batch, dim) "
                                    f"embedding tensor, got {type(embedded).__name__} "
                                    f"{tuple(getattr(embedded, 'shape', ()))}")
                outputs.append(embedded.float())  # kept on the device: one copy at the end
                labels.append(torch.as_tensor(batch_labels))
    finally:
        for module, mode in modes:
            module.training = mode
    if not outputs:
        raise ValueError(f"cannot embed an empty dataset ({type(dataset).__name__})")
    embeddings = torch.cat(outputs).cpu().numpy()
    return np.ascontiguousarray(embeddings), torch.cat(labels).numpy().astype(np.int64)


def sharded_embeddings(model: torch.nn.Module, dataset: torch.utils.data.Dataset,
                       device: Union[str, torch.device], batch_size: int, num_workers: int
                       ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """:func:`compute_embeddings`, shared out under torchrun: every rank embeds every
    world_size-th image and rank 0 receives them all in dataset order (the other ranks get
    ``(None, None)``). Without torchrun it is :func:`compute_embeddings`."""
    if not distributed.is_distributed():
        return compute_embeddings(model, dataset, device, batch_size, num_workers)
    size, me = distributed.world_size(), distributed.rank()
    shard = Subset(dataset, list(range(me, len(dataset), size)))
    local = compute_embeddings(model, shard, device, batch_size, num_workers)
    gathered = [None] * size if me == 0 else None
    dist.gather_object(local, gathered, dst=0)
    if me != 0:
        return None, None
    embeddings = np.empty((len(dataset), gathered[0][0].shape[1]), dtype=np.float32)
    labels = np.empty(len(dataset), dtype=np.int64)
    for source_rank, (part, part_labels) in enumerate(gathered):
        embeddings[source_rank::size] = part
        labels[source_rank::size] = part_labels
    return embeddings, labels
