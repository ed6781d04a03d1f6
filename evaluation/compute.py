"""Metrics of a set of embeddings, and of a model on an evaluation split.

Each ingredient is computed once, only when a requested metric needs it: one kNN search for all
retrieval metrics (chunked, and deeper only for the queries that need it), one k-means for all
clustering metrics. Nothing of size N x N is ever built, so SOP-sized sets (60k x 512) fit in
bounded memory (see docs/PERFORMANCE.md and docs/EVALUATION.md).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

import metrics as metric_registry
from metrics import CLUSTERS, NEIGHBOURS, ClusterMetric, NeighbourMetric

from .embeddings import compute_embeddings
from .backend import EvaluationBackend, select_backend
from .faiss_ops import NeighbourIndex, chunk_size, kmeans_cluster_ids

# Neighbours searched for every query before the deeper search that only queries without a hit
# need (Recall@K with large K); see search_depths.
FIRST_PASS_DEPTH = 64


def _checked(embeddings: np.ndarray, labels: np.ndarray,
             what: str) -> Tuple[np.ndarray, np.ndarray]:
    """C-contiguous float32 embeddings and int64 labels, or a ValueError naming the problem."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"{what}: expected a non-empty (N, D) array, got shape {embeddings.shape}")
    if labels.shape != (len(embeddings),):
        raise ValueError(f"{what}: expected {len(embeddings)} labels in a 1-D array, got shape "
                         f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{what}: embeddings contain NaN or infinite values (did training "
                         "diverge?)")
    return embeddings, labels.astype(np.int64, copy=False)


def _count_relevant(reference_labels: np.ndarray, query_labels: np.ndarray,
                    self_retrieval: bool) -> np.ndarray:
    """R per query: the references sharing its label, itself excluded in self-retrieval."""
    classes, counts = np.unique(reference_labels, return_counts=True)
    position = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    num_relevant = np.where(classes[position] == query_labels, counts[position], 0)
    return num_relevant - int(self_retrieval)


def search_depths(neighbour_metrics: Sequence[NeighbourMetric], num_relevant: np.ndarray,
                  available: int) -> Tuple[int, int]:
    """(k_first, k_deep): neighbours searched for every query, then for the queries that have no
    relevant neighbour among their first k_first ones.

    Metrics settled by the first hit (Recall@K) need the deep list only for those queries; the
    others (MAP@R, R-precision) read at most R <= k_first neighbours. At SOP scale, faiss's
    selection of 1,001 neighbours costs a third more than that of 65 (single-core CPU time per
    4,096 queries: 3.0 s against 2.27 s), and few queries need the deep list (1% in
    bench/eval_scale.py).
    """
    needed_by_all = max((m.neighbours_needed(num_relevant) for m in neighbour_metrics
                         if not m.settled_by_first_hit), default=0)
    needed = max(m.neighbours_needed(num_relevant) for m in neighbour_metrics)
    k_deep = min(available, needed)
    k_first = min(k_deep, max(needed_by_all, FIRST_PASS_DEPTH))
    return k_first, k_deep


def retrieval_scores(neighbour_metrics: Sequence[NeighbourMetric], references: np.ndarray,
                     reference_labels: np.ndarray, queries: Optional[np.ndarray] = None,
                     query_labels: Optional[np.ndarray] = None,
                     backend: Optional[EvaluationBackend] = None) -> Dict[str, float]:
    """Average each metric over the queries that have at least one relevant reference.

    One faiss index serves every metric; queries are searched in chunks (bounded memory), first
    k_first deep, then k_deep deep for those that need it (see :func:`search_depths`).
    """
    self_retrieval = queries is None
    if self_retrieval:
        queries, query_labels = references, reference_labels
    num_relevant = _count_relevant(reference_labels, query_labels, self_retrieval)
    scored = np.flatnonzero(num_relevant > 0)
    if scored.size == 0:
        warnings.warn("no query has a same-class sample among the references; retrieval metrics "
                      "are reported as 0")
        return {metric.name: 0.0 for metric in neighbour_metrics}
    k_first, k_deep = search_depths(neighbour_metrics, num_relevant,
                                    len(references) - int(self_retrieval))
    backend = backend or select_backend()
    index = (backend.neighbour_index(references, k_deep + int(self_retrieval))
             if backend.name == "torch" else NeighbourIndex(references, k_deep + int(self_retrieval)))
    totals = {metric.name: 0.0 for metric in neighbour_metrics}

    def relevance_of(rows: np.ndarray, k: int) -> np.ndarray:
        contiguous = rows[-1] - rows[0] + 1 == len(rows)  # then a view, not a copy
        chunk = queries[rows[0]:rows[-1] + 1] if contiguous else queries[rows]
        ids = index.search(chunk, k, own_ids=rows if self_retrieval else None)
        return reference_labels[ids] == query_labels[rows, None]

    def add(rows: np.ndarray, relevance: np.ndarray) -> None:
        for metric in neighbour_metrics:
            totals[metric.name] += float(metric.per_query(relevance, num_relevant[rows]).sum())

    first_chunk, deep_chunk = chunk_size(k_first + 1), chunk_size(k_deep + 1)
    for start in range(0, len(scored), first_chunk):
        rows = scored[start:start + first_chunk]
        relevance = relevance_of(rows, k_first)
        if k_deep > k_first:
            missed = ~relevance.any(axis=1)
            missed_rows = rows[missed]
            for deep_start in range(0, len(missed_rows), deep_chunk):
                deep_rows = missed_rows[deep_start:deep_start + deep_chunk]
                add(deep_rows, relevance_of(deep_rows, k_deep))
            rows, relevance = rows[~missed], relevance[~missed]
        add(rows, relevance)
    return {name: total / len(scored) for name, total in totals.items()}


def clustering_scores(cluster_metrics: Sequence[ClusterMetric], embeddings: np.ndarray,
                      labels: np.ndarray, kmeans_iterations: int, seed: int,
                      backend: Optional[EvaluationBackend] = None) -> Dict[str, float]:
    """Score one k-means clustering with as many clusters as there are classes."""
    num_classes = len(np.unique(labels))
    backend = backend or select_backend()
    if backend.name == "torch":
        cluster_ids = backend.kmeans_cluster_ids(embeddings, num_classes, kmeans_iterations, seed)
    else:
        cluster_ids = kmeans_cluster_ids(embeddings, num_classes, kmeans_iterations, seed)
    return {metric.name: metric.score(labels, cluster_ids) for metric in cluster_metrics}


def compute_metrics(metric_names: Sequence[str], embeddings: np.ndarray, labels: np.ndarray,
                    query_embeddings: Optional[np.ndarray] = None,
                    query_labels: Optional[np.ndarray] = None, kmeans_iterations: int = 20,
                    seed: int = 0, backend: Optional[EvaluationBackend] = None) -> Dict[str, float]:
    """Metrics named ``metric_names`` (keys as given, values in [0, 1]) of numpy embeddings.

    Without queries, each row is a query against all other rows. With ``query_embeddings`` and
    ``query_labels`` (In-Shop), each query is searched among ``embeddings``/``labels`` (the
    gallery) only, and the clustering metrics cluster queries and gallery together.
    ``backend``: faiss or torch for the kNN search and k-means (default: ``select_backend()``).
    """
    selected = metric_registry.select_all(metric_names)
    references, reference_labels = _checked(embeddings, labels, "embeddings")
    if (query_embeddings is None) != (query_labels is None):
        raise ValueError("query_embeddings and query_labels go together: give both or neither")
    queries = None
    if query_embeddings is not None:
        queries, query_labels = _checked(query_embeddings, query_labels, "query_embeddings")
        if queries.shape[1] != references.shape[1]:
            raise ValueError(f"query embeddings have dimension {queries.shape[1]} but gallery "
                             f"embeddings have {references.shape[1]}")

    results: Dict[str, float] = {}
    neighbour_metrics = [m for m in selected if m.requires == NEIGHBOURS]
    if neighbour_metrics:
        results.update(retrieval_scores(neighbour_metrics, references, reference_labels, queries,
                                        query_labels, backend))
    cluster_metrics = [m for m in selected if m.requires == CLUSTERS]
    if cluster_metrics:
        if queries is not None:
            everything = np.concatenate([queries, references])
            everything_labels = np.concatenate([query_labels, reference_labels])
        else:
            everything, everything_labels = references, reference_labels
        results.update(clustering_scores(cluster_metrics, everything, everything_labels,
                                         kmeans_iterations, seed, backend))
    return {metric.name: results[metric.name] for metric in selected}


EvalSet = Union[torch.utils.data.Dataset, Tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]]


def evaluate(model: torch.nn.Module, eval_set: EvalSet, metric_names: Sequence[str],
             device: Union[str, torch.device], batch_size: int, num_workers: int,
             kmeans_iterations: int = 20, seed: int = 0,
             backend: Optional[EvaluationBackend] = None) -> Dict[str, float]:
    """Embed ``eval_set`` with ``model`` and compute ``metric_names`` on it.

    ``eval_set`` is one dataset (each image a query against all the others) or a
    ``(query_dataset, gallery_dataset)`` pair (In-Shop). Metric names are checked before any image
    is embedded.
    """
    metric_registry.select_all(metric_names)
    if isinstance(eval_set, (tuple, list)):
        if len(eval_set) != 2:
            raise ValueError(f"eval_set: expected one dataset or a (query, gallery) pair, got "
                             f"{len(eval_set)} items")
        query_set, gallery_set = eval_set
        queries, query_labels = compute_embeddings(model, query_set, device, batch_size,
                                                   num_workers)
        gallery, gallery_labels = compute_embeddings(model, gallery_set, device, batch_size,
                                                     num_workers)
        return compute_metrics(metric_names, gallery, gallery_labels, queries, query_labels,
                               kmeans_iterations=kmeans_iterations, seed=seed, backend=backend)
    embeddings, labels = compute_embeddings(model, eval_set, device, batch_size, num_workers)
    return compute_metrics(metric_names, embeddings, labels, kmeans_iterations=kmeans_iterations,
                           seed=seed, backend=backend)


__all__: List[str] = ["compute_metrics", "evaluate", "retrieval_scores", "clustering_scores",
                       "search_depths"]
