"""Evaluation: embeddings of a dataset, evaluate() on one split and on query/gallery, and the
sharing of the kNN search and k-means between metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import transforms

import evaluation
import evaluation._blocks
import evaluation.compute as compute_module
import evaluation.faiss_ops as faiss_module
from datasets import ImageDataset, Split
from evaluation import compute_embeddings, compute_metrics, evaluate
from utilities.registry import UnknownNameError


class TinyEmbedder(nn.Module):
    """Conv + BatchNorm + linear head; records the mode and grad state its forward ran in."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, dim)
        self.calls = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, self.features[1].training, torch.is_grad_enabled()))
        return self.head(self.features(images))


def tiny_dataset(num_images: int = 20, num_classes: int = 4, seed: int = 0) -> ImageDataset:
    """Images whose brightness depends on the class, so that a random network separates them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % num_classes
    images = [np.clip(rng.normal(40 + 50 * label, 10, (8, 8, 3)), 0, 255).astype(np.uint8)
              for label in labels]
    split = Split(images, labels, [f"c{i}" for i in range(num_classes)])
    return ImageDataset(split, transforms.ToTensor())


@pytest.fixture
def model() -> TinyEmbedder:
    torch.manual_seed(0)
    return TinyEmbedder()


def test_compute_embeddings_runs_in_eval_mode_and_restores_every_module(model):
    model.train()
    model.features[1].eval()  # a frozen BatchNorm, as a `frozen` backbone keeps it
    dataset = tiny_dataset()
    embeddings, labels = compute_embeddings(model, dataset, "cpu", batch_size=7, num_workers=0)

    assert embeddings.shape == (20, 6) and embeddings.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, dataset.labels)
    assert len(model.calls) == 3  # batches of 7, 7, 6
    assert all(call == (False, False, False) for call in model.calls)
    assert model.training and model.head.training
    assert not model.features[1].training

    model.eval()
    with torch.no_grad():
        expected = model(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_compute_embeddings_keeps_eval_mode(model):
    model.eval()
    compute_embeddings(model, tiny_dataset(), "cpu", batch_size=8, num_workers=0)
    assert not any(module.training for module in model.modules())


def test_compute_embeddings_restores_mode_after_an_error():
    class TupleModel(TinyEmbedder):
        def forward(self, images):
            return super().forward(images), None

    model = TupleModel().train()
    with pytest.raises(TypeError, match=r"TupleModel.forward must return a \(batch, dim\)"):
        compute_embeddings(model, tiny_dataset(), "cpu", batch_size=8, num_workers=0)
    assert model.training and model.features[1].training


def test_evaluate_single_split_equals_metrics_of_its_embeddings(model):
    dataset = tiny_dataset()
    names = ["recall@1", "recall@2", "nmi", "f1", "map@r", "r_precision"]
    scores = evaluate(model, dataset, names, "cpu", batch_size=8, num_workers=0)
    assert list(scores) == names
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    embeddings, labels = compute_embeddings(model, dataset, "cpu", 8, 0)
    assert scores == pytest.approx(compute_metrics(names, embeddings, labels))


def test_evaluate_query_gallery_pair(model):
    queries, gallery = tiny_dataset(8, seed=1), tiny_dataset(12, seed=2)
    names = ["recall@1", "map@r", "nmi"]
    scores = evaluate(model, (queries, gallery), names, "cpu", batch_size=5, num_workers=0)
    q, q_labels = compute_embeddings(model, queries, "cpu", 5, 0)
    g, g_labels = compute_embeddings(model, gallery, "cpu", 5, 0)
    assert scores == pytest.approx(compute_metrics(names, g, g_labels, q, q_labels))


def test_evaluate_checks_metric_names_before_embedding(model):
    with pytest.raises(UnknownNameError, match="valid names: .*recall@K"):
        evaluate(model, tiny_dataset(), ["recall@1", "acc"], "cpu", 8, 0)
    assert model.calls == []


# --- what is computed, and how often --------------------------------------------------------------
@pytest.fixture
def call_log(monkeypatch):
    """Record the kNN indexes built, their searches' k, and the k-means runs of compute_metrics."""
    log = {"indexes": 0, "knn_k": [], "kmeans": 0}
    real_kmeans = faiss_module.kmeans_cluster_ids

    class CountingIndex(faiss_module.NeighbourIndex):
        def __init__(self, *args, **kwargs):
            log["indexes"] += 1
            super().__init__(*args, **kwargs)

        def search(self, queries, k, own_ids=None):
            log["knn_k"].append(k)
            return super().search(queries, k, own_ids)

    def kmeans(*args, **kwargs):
        log["kmeans"] += 1
        return real_kmeans(*args, **kwargs)

    monkeypatch.setattr(faiss_module, "NeighbourIndex", CountingIndex)
    monkeypatch.setattr(faiss_module, "kmeans_cluster_ids", kmeans)
    return log


def blobs(num_samples: int = 60, num_classes: int = 5):
    rng = np.random.default_rng(0)
    labels = np.arange(num_samples) % num_classes
    return rng.standard_normal((num_samples, 8)).astype(np.float32) + labels[:, None], labels


def test_one_knn_search_serves_every_retrieval_metric(call_log):
    x, y = blobs()  # 12 samples per class: R = 11
    compute_metrics(["recall@1", "recall@4", "map@r", "r_precision"], x, y)
    assert call_log == {"indexes": 1, "knn_k": [11], "kmeans": 0}


def test_one_kmeans_serves_every_clustering_metric_and_no_search_runs(call_log):
    x, y = blobs()
    compute_metrics(["nmi", "f1"], x, y)
    assert call_log == {"indexes": 0, "knn_k": [], "kmeans": 1}


def test_deep_search_only_for_queries_without_a_hit(call_log, monkeypatch):
    rng = np.random.default_rng(0)
    y = np.arange(300) % 30  # classes of 10, barely separated: many queries miss in their first 9
    x = (rng.standard_normal((300, 8)) + 0.7 * rng.standard_normal((30, 8))[y]).astype(np.float32)
    names = ["recall@1", "recall@2", "recall@50", "map@r", "r_precision"]
    monkeypatch.setattr(compute_module, "FIRST_PASS_DEPTH", 1000)
    one_pass = compute_metrics(names, x, y)
    assert call_log["knn_k"] == [50]
    call_log["knn_k"].clear()
    monkeypatch.setattr(compute_module, "FIRST_PASS_DEPTH", 3)
    two_passes = compute_metrics(names, x, y)
    assert call_log["knn_k"] == [9, 50]  # k_first = max(R = 9, 3); then only the misses
    assert 0.1 < one_pass["recall@2"] < 0.9 and one_pass["recall@50"] > one_pass["recall@2"]
    assert two_passes == pytest.approx(one_pass, abs=1e-12)


def test_chunked_retrieval_equals_unchunked(call_log, monkeypatch):
    x, y = blobs(700, 7)
    names = ["recall@1", "recall@8", "map@r", "r_precision"]
    whole = compute_metrics(names, x, y)
    monkeypatch.setattr(evaluation._blocks, "SEARCH_CHUNK_BYTES", 1)
    monkeypatch.setattr(evaluation._blocks, "MIN_CHUNK_QUERIES", 64)
    call_log["knn_k"].clear()
    assert compute_metrics(names, x, y) == pytest.approx(whole, abs=1e-12)
    assert len(call_log["knn_k"]) == 11  # ceil(700 / 64) chunks
