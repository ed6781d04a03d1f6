"""kNN and k-means in plain torch, for the GPU without the faiss GPU build (``--eval_backend
torch``); the same calls as :mod:`evaluation.faiss_ops`, on any torch device.

Exact L2 search is ``||r||^2 - 2 q.r`` (a matrix product, as faiss's flat index computes it) plus
``topk``, over blocks of queries sized so that a block's distance matrix stays within
``BLOCK_BYTES``: nothing of size N x N exists. k-means follows faiss's ``Clustering``: the first
``num_clusters`` points of a seeded permutation as initial centroids, at most ``iterations``
rounds of nearest-centroid assignment and mean update (stopping once the objective, the sum of
squared distances to the nearest centroid, no longer decreases, as faiss stops), an empty
cluster taking half of a large one (a donor drawn with probability proportional to its size - 1,
faiss's rule), then a final assignment to the last centroids. Hand-written because no installed
library does both in torch.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import numpy as np
import torch

from ._blocks import _without_self

# Bytes of one block's float32 distance matrix (queries x references, or points x centroids).
BLOCK_BYTES = 256 * 2**20
# faiss perturbs a split centroid pair by this relative amount (faiss/Clustering.cpp, EPS).
SPLIT_EPS = 1.0 / 1024


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Full float32 matrix products on CUDA (no TF32), as faiss computes distances."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _block_rows(columns: int, block_bytes: Optional[int] = None) -> int:
    return max(1, (BLOCK_BYTES if block_bytes is None else block_bytes) // (4 * max(columns, 1)))


def _nearest(points: torch.Tensor, centres: torch.Tensor, centre_sq: torch.Tensor, k: int,
             block_bytes: Optional[int] = None, objective: Optional[list] = None) -> torch.Tensor:
    """(len(points), k) ids of the k nearest centres, nearest first, block by block. With k = 1,
    ``objective`` (a list) receives the sum of squared distances to the nearest centre."""
    rows = _block_rows(len(centres), block_bytes)
    out, total = [], points.new_zeros(())
    with exact_float32():
        for start in range(0, len(points), rows):
            block = points[start:start + rows]
            distances = torch.addmm(centre_sq, block, centres.T, beta=1.0, alpha=-2.0)
            if k == 1:
                nearest = distances.min(dim=1, keepdim=True)
                out.append(nearest.indices)
                total = total + nearest.values.sum() + (block * block).sum()
            else:
                out.append(torch.topk(distances, k, dim=1, largest=False, sorted=True).indices)
    if objective is not None:
        objective.append(float(total))
    return torch.cat(out)


class TorchNeighbourIndex:
    """Exact L2 nearest-neighbour search among ``references`` on ``device`` (the interface of
    :class:`evaluation.faiss_ops.NeighbourIndex`)."""

    def __init__(self, references: np.ndarray, max_k: int,
                 device: Union[str, torch.device] = "cpu",
                 block_bytes: Optional[int] = None) -> None:
        self.device = torch.device(device)
        self.references = torch.from_numpy(np.ascontiguousarray(references, np.float32)).to(
            self.device)
        self.squared_norms = (self.references * self.references).sum(dim=1)
        self.num_references = len(references)
        self.block_bytes = block_bytes

    def search(self, queries: np.ndarray, k: int,
               own_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """(len(queries), k) int64 ids of the ``k`` nearest references, nearest first;
        ``own_ids`` (self-retrieval) are never returned (see faiss_ops.NeighbourIndex.search)."""
        available = self.num_references - int(own_ids is not None)
        if not 0 < k <= available:
            raise ValueError(f"k={k} neighbours asked for, but there are {available} references")
        points = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(self.device)
        depth = k + int(own_ids is not None)
        ids = _nearest(points, self.references, self.squared_norms, depth,
                       self.block_bytes).cpu().numpy()
        return ids if own_ids is None else _without_self(ids, own_ids)


def kmeans_cluster_ids(embeddings: np.ndarray, num_clusters: int, iterations: int,
                       seed: int = 1234, device: Union[str, torch.device] = "cpu",
                       block_bytes: Optional[int] = None, cosine: bool = False) -> np.ndarray:
    """Cluster id (int64, N) of each row after ``iterations`` rounds of k-means on every row
    (faiss's semantics, see the module docstring), computed with torch on ``device``.

    ``cosine``: the final assignment goes to the L2-normalized centroid of largest inner product
    (as ``faiss_ops.kmeans_cluster_ids``; the caller normalizes the rows)."""
    if iterations < 1:
        raise ValueError(f"--kmeans_iterations must be at least 1, got {iterations}")
    if not 0 < num_clusters <= len(embeddings):
        raise ValueError(f"cannot make {num_clusters} clusters of {len(embeddings)} embeddings")
    device = torch.device(device)
    points = torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)).to(device)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randperm(len(points), generator=generator)[:num_clusters].to(device)
    centroids = points[first].clone()
    objective: list = []
    for _ in range(iterations):
        assignment = _nearest(points, centroids, (centroids * centroids).sum(1), 1,
                              block_bytes, objective)[:, 0]
        if len(objective) > 1 and objective[-1] >= objective[-2]:
            break  # no longer improving: faiss's Kmeans stops here too (see docs/EVALUATION.md)
        sizes = torch.bincount(assignment, minlength=num_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        centroids = sums / sizes.clamp(min=1).unsqueeze(1).to(sums.dtype)
        _split_empty_clusters(centroids, sizes, generator)
    if cosine:
        # nearest unit centroid by L2 == largest inner product, since the rows are unit vectors
        centroids = torch.nn.functional.normalize(centroids, dim=1)
    final = _nearest(points, centroids, (centroids * centroids).sum(1), 1, block_bytes)[:, 0]
    return final.cpu().numpy().astype(np.int64)


def _split_empty_clusters(centroids: torch.Tensor, sizes: torch.Tensor,
                          generator: torch.Generator) -> None:
    """faiss's rule: an empty cluster takes a copy of a donor centroid (donor drawn with
    probability proportional to its size - 1), the two pushed apart by a relative SPLIT_EPS,
    and the donor's points counted half to each. In place; a loop over the (few) empty ones."""
    empty = torch.nonzero(sizes == 0).flatten().tolist()
    if not empty:
        return
    sizes = sizes.cpu().double()
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1
    for cluster in empty:
        weights = (sizes - 1).clamp(min=0)
        if weights.sum() <= 0:
            break
        donor = int(torch.multinomial(weights, 1, generator=generator))
        centroids[cluster] = centroids[donor] * (1 + sign * SPLIT_EPS)
        centroids[donor] = centroids[donor] * (1 - sign * SPLIT_EPS)
        sizes[cluster] = sizes[donor] / 2
        sizes[donor] -= sizes[cluster]
