"""Evaluation: embeddings of a split, then the metrics named by ``--evaluation_metrics``.

``evaluate(model, eval_set, ...)`` is what ``main.py`` calls after each epoch;
``compute_metrics(names, embeddings, labels, ...)`` works on numpy arrays (tests, benchmarks).
"""
from .backend import EvaluationBackend, faiss_gpu_available, select_backend
from .compute import KMEANS_SEEDS, PUBLISHED_KMEANS_SEED, compute_metrics, evaluate, kmeans_seed
from .embeddings import compute_embeddings, sharded_embeddings

__all__ = ["EvaluationBackend", "select_backend", "compute_embeddings", "sharded_embeddings",
           "compute_metrics", "evaluate", "faiss_gpu_available", "kmeans_seed", "KMEANS_SEEDS",
           "PUBLISHED_KMEANS_SEED"]
