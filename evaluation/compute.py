"""Metrics of a set of embeddings, and of a model on an evaluation split.

Each ingredient is computed once, only when a requested metric needs it: one kNN search for all
retrieval metrics of a space (chunked, and deeper only for the queries that need it), one k-means
for all clustering metrics of a space, one singular-value spectrum, one set of per-class direction
sums. The cosine ("c_") metrics work on L2-normalized embeddings; when the embeddings already are
(``normalize`` in the arch name) they share the Euclidean kNN search, which ranks identically.
Nothing of size N x N is ever built, so SOP-sized sets (60k x 512) fit in bounded memory (see
docs/PERFORMANCE.md and docs/EVALUATION.md).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse
import torch

import metrics as metric_registry
from datasets import QueryGallery
from metrics import (CLASS_DIRECTIONS, CLUSTERS, COSINE, EUCLIDEAN, NEIGHBOURS, SPECTRUM,
                     BaseMetric, ClassDirections, ClusterMetric, NeighbourMetric)

from .embeddings import sharded_embeddings
from .backend import EvaluationBackend, select_backend

# Neighbours searched for every query before the deeper search that only queries without a hit
# need (Recall@K with large K); see search_depths.
FIRST_PASS_DEPTH = 64
# Rows per step of the chunked Gram matrix (spectrum) and class sums (float64: 64 MiB at D = 512).
ROW_CHUNK = 16384
# Largest deviation of a row's L2 norm from 1 for which embeddings count as already normalized.
UNIT_NORM_TOLERANCE = 1e-4

# The k-means seed of NMI/F1: the published evaluation leaves faiss.Kmeans's seed unset, so it is
# faiss's default (ClusteringParameters.seed = 1234) whatever --seed is. "--kmeans_seed run"
# seeds it from --seed instead.
PUBLISHED_KMEANS_SEED = 1234
KMEANS_SEEDS = ("published", "run")

MetricValue = Union[float, np.ndarray]


def kmeans_seed(rule: str, run_seed: int) -> int:
    """The k-means seed for ``--kmeans_seed rule``: 1234 (``published``) or ``run_seed``
    (``run``, the run's ``--seed``)."""
    if rule not in KMEANS_SEEDS:
        raise ValueError(f"--kmeans_seed '{rule}' is not one of {', '.join(KMEANS_SEEDS)}")
    return PUBLISHED_KMEANS_SEED if rule == "published" else int(run_seed)


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
    index = backend.neighbour_index(references, k_deep + int(self_retrieval))
    totals = {metric.name: 0.0 for metric in neighbour_metrics}

    def relevance_of(rows: np.ndarray, k: int) -> np.ndarray:
        contiguous = rows[-1] - rows[0] + 1 == len(rows)  # then a view, not a copy
        chunk = queries[rows[0]:rows[-1] + 1] if contiguous else queries[rows]
        ids = index.search(chunk, k, own_ids=rows if self_retrieval else None)
        return reference_labels[ids] == query_labels[rows, None]

    def add(rows: np.ndarray, relevance: np.ndarray) -> None:
        for metric in neighbour_metrics:
            totals[metric.name] += float(metric.per_query(relevance, num_relevant[rows]).sum())

    first_chunk, deep_chunk = backend.search_chunk(k_first + 1), backend.search_chunk(k_deep + 1)
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
                      cosine: bool = False,
                      backend: Optional[EvaluationBackend] = None) -> Dict[str, float]:
    """Score one k-means clustering with as many clusters as there are classes (``cosine``:
    rows assigned to the normalized centroid of highest cosine similarity)."""
    num_classes = len(np.unique(labels))
    backend = backend or select_backend()
    cluster_ids = backend.kmeans_cluster_ids(embeddings, num_classes, kmeans_iterations, seed,
                                             cosine=cosine)
    return {metric.name: metric.score(labels, cluster_ids) for metric in cluster_metrics}


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows L2-normalized (float32); an all-zero row stays zero (as scikit-learn's normalize)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def is_unit_norm(*arrays: Optional[np.ndarray]) -> bool:
    """True when every row of every given array has L2 norm 1 (within UNIT_NORM_TOLERANCE)."""
    return all(np.abs(np.linalg.norm(a, axis=1) - 1.0).max() <= UNIT_NORM_TOLERANCE
               for a in arrays if a is not None)


def singular_values(embeddings: np.ndarray) -> np.ndarray:
    """All D singular values (float64, largest first; zeros beyond the rank) of the (N, D) matrix,
    uncentred: square roots of the eigenvalues of the D x D Gram matrix X^T X, accumulated in
    float64 over chunks of rows. Squaring costs accuracy on the smallest values only: relative
    error about 1e-14 (s_max / s)^2, 1e-8 at s = s_max / 1000 (a chunked QR avoids it but ran 25
    times slower with OpenBLAS)."""
    dimension = embeddings.shape[1]
    gram = np.zeros((dimension, dimension))
    for start in range(0, len(embeddings), ROW_CHUNK):
        rows = embeddings[start:start + ROW_CHUNK].astype(np.float64)
        gram += rows.T @ rows
    eigenvalues = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(eigenvalues, 0.0, None))


def class_directions(embeddings: np.ndarray, labels: np.ndarray) -> ClassDirections:
    """Per-class sums of the embeddings and of their directions, in float64, accumulated over
    row chunks with a sparse class-indicator product (O(C x D) memory)."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    unit_sums = np.zeros((len(classes), embeddings.shape[1]))
    sums = np.zeros_like(unit_sums)
    unit_squares = np.zeros(len(classes))
    for start in range(0, len(embeddings), ROW_CHUNK):
        rows = embeddings[start:start + ROW_CHUNK].astype(np.float64)
        members = inverse[start:start + ROW_CHUNK]
        indicator = scipy.sparse.csr_matrix(
            (np.ones(len(rows)), (members, np.arange(len(rows)))), shape=(len(classes), len(rows)))
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        units = rows / np.where(norms > 0, norms, 1.0)
        unit_sums += indicator @ units
        sums += indicator @ rows
        unit_squares += np.bincount(members, weights=(norms[:, 0] > 0).astype(np.float64),
                                    minlength=len(classes))
    means = sums / counts[:, None]
    mean_norms = np.linalg.norm(means, axis=1, keepdims=True)
    return ClassDirections(counts=counts.astype(np.float64), unit_sums=unit_sums,
                           unit_squares=unit_squares,
                           mean_directions=means / np.where(mean_norms > 0, mean_norms, 1.0))


def compute_metrics(metric_names: Sequence[str], embeddings: np.ndarray, labels: np.ndarray,
                    query_embeddings: Optional[np.ndarray] = None,
                    query_labels: Optional[np.ndarray] = None, kmeans_iterations: int = 20,
                    seed: int = PUBLISHED_KMEANS_SEED,
                    backend: Optional[EvaluationBackend] = None) -> Dict[str, MetricValue]:
    """Metrics named ``metric_names`` (keys as given) of numpy embeddings: floats, except the
    arrays of non-scalar metrics (``rho_spectrum@0``, whose ``scalar`` is False).

    Without queries, each row is a query against all other rows. With ``query_embeddings`` and
    ``query_labels`` (In-Shop), each query is searched among ``embeddings``/``labels`` (the
    gallery) only, and the clustering, spectrum and distance metrics use queries and gallery
    together. ``backend``: faiss or torch for the kNN search and k-means (default:
    ``select_backend()``). ``seed``: the k-means seed (see :func:`kmeans_seed`).
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

    def asking(requirement: str, space: Optional[str] = None) -> List[BaseMetric]:
        return [m for m in selected if m.requires == requirement
                and (space is None or m.space == space)]

    def everything() -> Tuple[np.ndarray, np.ndarray]:
        if queries is None:
            return references, reference_labels
        return np.concatenate([queries, references]), np.concatenate([query_labels,
                                                                      reference_labels])

    results: Dict[str, MetricValue] = {}
    euclidean, cosine = asking(NEIGHBOURS, EUCLIDEAN), asking(NEIGHBOURS, COSINE)
    if cosine and is_unit_norm(references, queries):
        euclidean, cosine = euclidean + cosine, []  # same ranking: one search serves both
    if euclidean:
        results.update(retrieval_scores(euclidean, references, reference_labels, queries,
                                        query_labels, backend))
    if cosine:
        results.update(retrieval_scores(cosine, unit_rows(references), reference_labels,
                                        None if queries is None else unit_rows(queries),
                                        query_labels, backend))
    for space in (EUCLIDEAN, COSINE):
        cluster_metrics = asking(CLUSTERS, space)
        if cluster_metrics:
            points, point_labels = everything()
            if space == COSINE:
                points = unit_rows(points)
            results.update(clustering_scores(cluster_metrics, points, point_labels,
                                             kmeans_iterations, seed, cosine=space == COSINE,
                                             backend=backend))
    if asking(SPECTRUM):
        spectrum = singular_values(everything()[0])
        results.update({m.name: m.score(spectrum) for m in asking(SPECTRUM)})
    if asking(CLASS_DIRECTIONS):
        directions = class_directions(*everything())
        results.update({m.name: m.score(directions) for m in asking(CLASS_DIRECTIONS)})
    return {metric.name: results[metric.name] for metric in selected}


EvalSet = Union[torch.utils.data.Dataset, QueryGallery,
                Tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]]


def evaluate(model: torch.nn.Module, eval_set: EvalSet, metric_names: Sequence[str],
             device: Union[str, torch.device], batch_size: int, num_workers: int,
             kmeans_iterations: int = 20, seed: int = PUBLISHED_KMEANS_SEED,
             backend: Optional[EvaluationBackend] = None) -> Optional[Dict[str, MetricValue]]:
    """Embed ``eval_set`` with ``model`` and compute ``metric_names`` on it: the evaluation of
    ``main.py`` after every epoch and of ``tools.evaluate``.

    ``eval_set`` is one dataset (each image a query against all the others) or a
    :class:`datasets.QueryGallery` (In-Shop; a plain ``(query, gallery)`` pair is taken as one).
    Metric names are checked before any image is embedded. Under torchrun every rank embeds a
    shard and rank 0 computes the metrics; the other ranks get None.
    """
    metric_registry.select_all(metric_names)
    if isinstance(eval_set, tuple) and not isinstance(eval_set, QueryGallery):
        if len(eval_set) != 2:
            raise ValueError(f"eval_set: expected one dataset or a (query, gallery) pair, got "
                             f"{len(eval_set)} items")
        eval_set = QueryGallery(*eval_set)

    def embed(dataset):
        return sharded_embeddings(model, dataset, device, batch_size, num_workers)

    if isinstance(eval_set, QueryGallery):
        queries, query_labels = embed(eval_set.query)
        gallery, gallery_labels = embed(eval_set.gallery)
    else:
        (gallery, gallery_labels), queries, query_labels = embed(eval_set), None, None
    if gallery is None:  # a torchrun rank other than 0
        return None
    return compute_metrics(metric_names, gallery, gallery_labels, queries, query_labels,
                           kmeans_iterations=kmeans_iterations, seed=seed, backend=backend)


__all__: List[str] = ["compute_metrics", "evaluate", "kmeans_seed", "KMEANS_SEEDS",
                       "PUBLISHED_KMEANS_SEED", "retrieval_scores", "clustering_scores",
                       "search_depths", "singular_values", "class_directions", "unit_rows"]
