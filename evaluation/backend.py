"""Which library runs the kNN search and k-means: faiss or torch (``--eval_backend``).

``auto`` takes torch on a CUDA device when the faiss GPU build is absent (the faiss CPU build
would otherwise leave the GPU idle through evaluation), faiss everywhere else.

faiss_ops (which imports faiss) is imported only when the faiss backend is used, so that training
and the torch backend run where faiss is not installed; its functions are looked up on the module
at each call (tests replace them there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from . import _blocks, torch_ops

BACKENDS = ("auto", "faiss", "torch")


def _faiss_ops():
    """The faiss_ops module, imported on first use; a one-line error where faiss is missing."""
    try:
        from . import faiss_ops
    except ModuleNotFoundError as error:
        if error.name != "faiss":
            raise
        raise ModuleNotFoundError("--eval_backend faiss needs faiss (faiss-cpu or faiss-gpu), "
                                  "which is not installed; use --eval_backend torch",
                                  name="faiss") from None
    return faiss_ops


def faiss_gpu_available() -> bool:
    """True when the faiss GPU build is installed and sees at least one CUDA device (False
    where faiss is not installed at all)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return _faiss_ops().faiss_gpu_available()


@dataclass(frozen=True)
class EvaluationBackend:
    """``name`` (faiss or torch) and, for torch, the device its matrix products run on."""

    name: str = "faiss"
    device: torch.device = torch.device("cpu")

    def neighbour_index(self, references: np.ndarray, max_k: int):
        if self.name == "torch":
            return torch_ops.TorchNeighbourIndex(references, max_k, self.device)
        return _faiss_ops().NeighbourIndex(references, max_k)

    def kmeans_cluster_ids(self, embeddings: np.ndarray, num_clusters: int, iterations: int,
                           seed: int = 1234, cosine: bool = False) -> np.ndarray:
        """Cluster ids of the rows; ``seed`` defaults to faiss's own (1234, see
        ``compute.kmeans_seed``)."""
        if self.name == "torch":
            return torch_ops.kmeans_cluster_ids(embeddings, num_clusters, iterations, seed,
                                                self.device, cosine=cosine)
        return _faiss_ops().kmeans_cluster_ids(embeddings, num_clusters, iterations, seed,
                                               cosine=cosine)

    def search_chunk(self, k: int) -> int:
        """Queries per search call at depth ``k`` (bounded output, see _blocks.chunk_size): a
        multiple of faiss's query block for faiss; torch, without such a block, is not rounded."""
        block = _faiss_ops().query_block() if self.name == "faiss" else 1
        return _blocks.chunk_size(k, block=block)


def select_backend(choice: str = "auto",
                   device: Optional[Union[str, torch.device]] = None) -> EvaluationBackend:
    """The backend for ``--eval_backend choice`` on ``device`` (default: CUDA when present)."""
    if choice not in BACKENDS:
        raise ValueError(f"--eval_backend '{choice}' is not one of {', '.join(BACKENDS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if choice == "auto":
        choice = ("torch" if device.type == "cuda" and not faiss_gpu_available()
                  else "faiss")
    return EvaluationBackend(choice, device if choice == "torch" else torch.device("cpu"))
