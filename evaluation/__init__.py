"""Evaluation: embeddings of a split, then the metrics named by ``--evaluation_metrics``.

``evaluate(model, eval_set, ...)`` is what ``main.py`` calls after each epoch;
``compute_metrics(names, embeddings, labels, ...)`` works on numpy arrays (tests, benchmarks).
"""
from .backend import EvaluationBackend, faiss_gpu_available, select_backend
from .compute import compute_metrics, evaluate
from .embeddings import compute_embeddings, sharded_embeddings

__all__ = ["EvaluationBackend", "select_backend", "compute_embeddings", "sharded_embeddings",
           "compute_metrics", "evaluate", "faiss_gpu_available"]
