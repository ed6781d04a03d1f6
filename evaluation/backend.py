"""Which library runs the kNN search and k-means: faiss or torch (``--eval_backend``).

``auto`` takes torch on a CUDA device when the faiss GPU build is absent (the faiss CPU build
would otherwise leave the GPU idle through evaluation), faiss everywhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from . import faiss_ops, torch_ops

BACKENDS = ("auto", "faiss", "torch")


@dataclass(frozen=True)
class EvaluationBackend:
    """``name`` (faiss or torch) and, for torch, the device its matrix products run on."""

    name: str = "faiss"
    device: torch.device = torch.device("cpu")

    def neighbour_index(self, references: np.ndarray, max_k: int):
        if self.name == "torch":
            return torch_ops.TorchNeighbourIndex(references, max_k, self.device)
        return faiss_ops.NeighbourIndex(references, max_k)

    def kmeans_cluster_ids(self, embeddings: np.ndarray, num_clusters: int, iterations: int,
                           seed: int = 0, cosine: bool = False) -> np.ndarray:
        if self.name == "torch":
            return torch_ops.kmeans_cluster_ids(embeddings, num_clusters, iterations, seed,
                                                self.device, cosine=cosine)
        return faiss_ops.kmeans_cluster_ids(embeddings, num_clusters, iterations, seed,
                                            cosine=cosine)


def select_backend(choice: str = "auto",
                   device: Optional[Union[str, torch.device]] = None) -> EvaluationBackend:
    """The backend for ``--eval_backend choice`` on ``device`` (default: CUDA when present)."""
    if choice not in BACKENDS:
        raise ValueError(f"--eval_backend '{choice}' is not one of {', '.join(BACKENDS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if choice == "auto":
        choice = ("torch" if device.type == "cuda" and not faiss_ops.faiss_gpu_available()
                  else "faiss")
    return EvaluationBackend(choice, device if choice == "torch" else torch.device("cpu"))
