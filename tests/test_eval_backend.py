"""The torch evaluation backend (kNN as blocked matrix products + topk, k-means as torch
iterations) against the faiss CPU path, and the backend choice."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from evaluation import compute_metrics, select_backend
from evaluation.backend import EvaluationBackend
from evaluation.faiss_ops import NeighbourIndex
from evaluation.faiss_ops import kmeans_cluster_ids as faiss_kmeans
from evaluation.torch_ops import TorchNeighbourIndex, kmeans_cluster_ids

TORCH = EvaluationBackend("torch", torch.device("cpu"))
FAISS = EvaluationBackend("faiss")


@pytest.fixture(autouse=True)
def fixed_threads():
    saved, faiss_saved = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(saved)
    faiss.omp_set_num_threads(faiss_saved)


def clustered(num: int, classes: int, dim: int = 16, noise: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(num) % classes
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    points = centres[labels] + noise * rng.standard_normal((num, dim)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), labels.astype(np.int64)


def test_torch_search_finds_faiss_neighbours_in_small_blocks():
    references, _ = clustered(300, 10)
    queries, _ = clustered(70, 10, seed=1)
    # 600 bytes per block: 1 query x 150 references, forcing many blocks
    torch_ids = TorchNeighbourIndex(references, 20, block_bytes=1200).search(queries, 20)
    faiss_ids = NeighbourIndex(references, 20).search(queries, 20)
    assert torch_ids.shape == (70, 20) and torch_ids.dtype == np.int64
    assert (torch_ids == faiss_ids).mean() > 0.99  # equal up to float ties
    # self-retrieval: the query's own id is never returned
    own = np.arange(len(references))
    ids = TorchNeighbourIndex(references, 6).search(references, 5, own_ids=own)
    assert ids.shape == (300, 5) and not (ids == own[:, None]).any()
    assert (ids == NeighbourIndex(references, 6).search(references, 5, own_ids=own)).mean() > 0.99


def test_torch_search_matches_a_plain_loop():
    references, _ = clustered(40, 4, dim=5, seed=2)
    ids = TorchNeighbourIndex(references, 3, block_bytes=64).search(references[:7], 3)
    for row, query in enumerate(references[:7]):
        distances = [float(((query - r) ** 2).sum()) for r in references]
        assert list(ids[row]) == sorted(range(len(references)), key=distances.__getitem__)[:3]


def test_retrieval_metrics_agree_with_faiss():
    names = ["recall@1", "recall@4", "recall@16", "map@r", "r_precision"]
    x, y = clustered(400, 40, noise=0.9)
    faiss_scores = compute_metrics(names, x, y, backend=FAISS)
    torch_scores = compute_metrics(names, x, y, backend=TORCH)
    for name in names:
        assert torch_scores[name] == pytest.approx(faiss_scores[name], abs=1e-3), name
    # query vs gallery (In-Shop)
    q, qy = clustered(100, 40, noise=0.9, seed=3)
    a = compute_metrics(names, x, y, q, qy, backend=FAISS)
    b = compute_metrics(names, x, y, q, qy, backend=TORCH)
    assert all(b[n] == pytest.approx(a[n], abs=1e-3) for n in names)


def test_kmeans_nmi_agrees_with_faiss_within_noise():
    """Mean NMI over 4 seeds each: one seed's NMI varies by about 0.03 on this set."""
    x, y = clustered(1500, 60, noise=0.8)
    torch_ids = kmeans_cluster_ids(x, 60, 20, seed=0)
    assert torch_ids.shape == (1500,) and torch_ids.dtype == np.int64
    nmi_torch = np.mean([normalized_mutual_info_score(y, kmeans_cluster_ids(x, 60, 20, seed))
                         for seed in range(4)])
    nmi_faiss = np.mean([normalized_mutual_info_score(y, faiss_kmeans(x, 60, 20, seed))
                         for seed in range(4)])
    assert abs(nmi_torch - nmi_faiss) < 0.015
    assert np.array_equal(torch_ids, kmeans_cluster_ids(x, 60, 20, seed=0))  # seeded


def test_kmeans_one_iteration_matches_a_plain_loop():
    x, _ = clustered(50, 5, dim=4, seed=4)
    init = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:5].numpy()
    centroids = x[init].astype(np.float64)
    assign = np.array([np.argmin(((centroids - p) ** 2).sum(1)) for p in x])
    centroids = np.stack([x[assign == c].mean(0) if (assign == c).any() else centroids[c]
                          for c in range(5)])
    expected = np.array([np.argmin(((centroids - p) ** 2).sum(1)) for p in x])
    assert np.array_equal(kmeans_cluster_ids(x, 5, 1, seed=7, block_bytes=40), expected)


def test_kmeans_refills_empty_clusters():
    # 3 distinct points, 6 duplicates each: an initial pick of duplicates leaves clusters empty
    x = np.repeat(np.eye(3, dtype=np.float32), 6, axis=0)
    ids = kmeans_cluster_ids(x, 3, 5, seed=0)
    assert len(set(ids[::6].tolist())) == 3  # each distinct point gets its own cluster


def test_backend_choice():
    assert select_backend("auto", "cpu").name == "faiss"
    assert select_backend("torch", "cpu") == TORCH
    # a CUDA device without the faiss GPU build: torch on that device (nothing runs here)
    chosen = select_backend("auto", "cuda:0")
    assert chosen.name == "torch" and chosen.device == torch.device("cuda:0")
    assert select_backend("faiss", "cuda:0").name == "faiss"
    with pytest.raises(ValueError, match="--eval_backend 'gpu' is not one of auto, faiss, torch"):
        select_backend("gpu")
