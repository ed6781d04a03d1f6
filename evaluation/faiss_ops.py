"""The two faiss calls the metrics share: an exact L2 k-nearest-neighbour search (called on
chunks of queries, so that its output never grows with N x k) and a k-means clustering.

The faiss GPU build is used when it is installed and sees a CUDA device; otherwise the CPU build.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import faiss
import numpy as np

from ._blocks import _without_self

# Largest k a faiss GPU flat index searches (faiss/gpu/utils/DeviceDefs.cuh, GPU_MAX_SELECTION_K).
GPU_MAX_K = 2048


def faiss_gpu_available() -> bool:
    """True when the faiss GPU build is installed and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def query_block() -> int:
    """Queries faiss's flat search computes in one BLAS block (search chunks are multiples of it,
    see _blocks.chunk_size)."""
    return faiss.cvar.distance_compute_blas_query_bs


class NeighbourIndex:
    """Exact L2 nearest-neighbour search among ``references`` (faiss flat index).

    ``max_k`` is the largest k that will be asked for: it decides whether the GPU index can
    serve (faiss GPU selects at most 2048 neighbours).
    """

    def __init__(self, references: np.ndarray, max_k: int) -> None:
        self.num_references = len(references)
        index = faiss.IndexFlatL2(references.shape[1])
        if faiss_gpu_available():
            if max_k <= GPU_MAX_K:
                index = faiss.index_cpu_to_all_gpus(index)
            else:
                warnings.warn(f"faiss GPU search supports k <= {GPU_MAX_K}; searching k={max_k} "
                              "neighbours with the CPU index instead")
        index.add(references)
        self.index = index

    def search(self, queries: np.ndarray, k: int,
               own_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """(len(queries), k) int64 ids of the ``k`` nearest references, nearest first.

        ``own_ids`` (self-retrieval): the reference id of each query, which is never returned.
        It is removed wherever it ranks (with duplicate embeddings it need not come first); when
        k + 1 exact ties push it out of the list, the last neighbour is dropped instead.
        """
        available = self.num_references - int(own_ids is not None)
        if not 0 < k <= available:
            raise ValueError(f"k={k} neighbours asked for, but there are {available} references")
        if own_ids is None:
            return self.index.search(queries, k)[1]
        return _without_self(self.index.search(queries, k + 1)[1], own_ids)


def kmeans_cluster_ids(embeddings: np.ndarray, num_clusters: int, iterations: int,
                       seed: int = 1234, cosine: bool = False) -> np.ndarray:
    """Cluster id (int64, N) of each row: faiss k-means with ``num_clusters`` centroids trained on
    every row (no subsampling) for ``iterations`` rounds (faiss stops earlier once the objective
    stops improving), then one pass assigning each row to its nearest final centroid.

    ``cosine``: assign each row instead to the L2-normalized centroid of largest inner product
    (Revisiting-DML's cosine k-means behind ``c_nmi``/``c_f1``; the caller normalizes the rows).
    """
    if iterations < 1:
        raise ValueError(f"--kmeans_iterations must be at least 1, got {iterations}")
    if not 0 < num_clusters <= len(embeddings):
        raise ValueError(f"cannot make {num_clusters} clusters of {len(embeddings)} embeddings")
    kmeans = faiss.Kmeans(
        embeddings.shape[1], num_clusters, niter=iterations, seed=seed, verbose=False,
        gpu=faiss_gpu_available(),
        # Use every point, and silence faiss's warning about few points per centroid, which
        # is the normal case here (SOP: ~5 images per class).
        min_points_per_centroid=1,
        max_points_per_centroid=math.ceil(len(embeddings) / num_clusters),
    )
    kmeans.train(embeddings)
    if cosine:
        centroids = kmeans.centroids / np.maximum(
            np.linalg.norm(kmeans.centroids, axis=1, keepdims=True), 1e-12)
        index = faiss.IndexFlatIP(embeddings.shape[1])
        if faiss_gpu_available():
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        return index.search(embeddings, 1)[1][:, 0]
    _, cluster_ids = kmeans.index.search(embeddings, 1)
    return cluster_ids[:, 0]
