"""The published (Revisiting-DML / DAS) metric names: hand-computed cases, a plain loop
implementation of the published definitions, and pytorch-metric-learning where it has the metric."""
from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from scipy.spatial.distance import cdist
from scipy.stats import entropy
from sklearn.decomposition import TruncatedSVD
from sklearn.metrics import normalized_mutual_info_score

import evaluation.compute as compute_module
import evaluation._blocks
import evaluation.faiss_ops
import metrics
from evaluation import compute_metrics
from metrics.rho_spectrum import RhoSpectrum
from utilities.registry import UnknownNameError

PUBLISHED = ["e_recall@1", "e_recall@4", "mAP", "mAP_c", "mAP_1000", "mAP_lim", "c_recall@1",
             "c_recall@4", "c_nmi", "c_f1", "c_mAP_c", "c_mAP_1000", "c_mAP_lim", "dists@intra",
             "dists@inter", "dists@intra_over_inter", "rho_spectrum@0", "rho_spectrum@1",
             "rho_spectrum@-1", "rho_spectrum@2", "rho_spectrum@10"]
MAP_DEPTHS = {"mAP": None, "mAP_1000": 1000, "mAP_lim": 1023, "mAP_c": "class"}


def column(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None]


def random_set(num_samples: int, num_classes: int, seed: int, dim: int = 16, equal=False):
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_samples) % num_classes if equal
              else rng.integers(0, num_classes, num_samples))
    centres = rng.standard_normal((num_classes, dim))
    # an offset and varied norms, so that cosine and Euclidean rankings differ
    x = (centres[labels] + 1.5 * rng.standard_normal((num_samples, dim)) + 0.8)
    x *= rng.uniform(0.3, 3.0, (num_samples, 1))
    return x.astype(np.float32), labels


# --- a plain loop implementation of the published definitions -------------------------------------
def loop_map(x, y, depth, cosine=False, queries=None, query_labels=None):
    """Revisiting-DML's mAP family, one query at a time: rank every reference (stable order on
    ties), read the first L, sum P(i) at the hits, divide by the class size counting the query."""
    self_retrieval = queries is None
    if self_retrieval:
        queries, query_labels = x, y
    if cosine:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    values = []
    for i in range(len(queries)):
        if cosine:
            order = np.argsort(-(x.astype(np.float64) @ queries[i]), kind="stable")
        else:
            order = np.argsort(((x.astype(np.float64) - queries[i]) ** 2).sum(1), kind="stable")
        if self_retrieval:
            order = order[order != i]
        relevant = y[order] == query_labels[i]
        class_size = int((y == query_labels[i]).sum()) + (0 if self_retrieval else 1)
        if class_size - 1 == 0:
            continue  # lone query: left out, the codebase's convention
        length = {None: len(order), "class": class_size}.get(depth, depth)
        total, hits = 0.0, 0
        for rank in range(min(length, len(order))):
            if relevant[rank]:
                hits += 1
                total += hits / (rank + 1)
        values.append(total / class_size)
    return float(np.mean(values))


def loop_recall(x, y, k, cosine=False):
    if cosine:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    hits = []
    for i in range(len(x)):
        score = -(x @ x[i]) if cosine else ((x - x[i]) ** 2).sum(1)
        order = [j for j in np.argsort(score, kind="stable") if j != i]
        hits.append(float(y[i] in y[order[:k]]))
    return float(np.mean(hits))


def loop_dists(x, y):
    """Per-class mean of scipy's pairwise cosine distances (i != j), and the mean cosine distance
    between normalized class means, as in the published dists metric."""
    intra = []
    for label in np.unique(y):
        members = x[y == label].astype(np.float64)
        if len(members) > 1:
            intra.append(cdist(members, members, "cosine").sum() / (len(members) ** 2 - len(members)))  # noqa: E501
        else:
            intra.append(np.nan)
    intra = np.array(intra)
    intra[np.isnan(intra)] = np.nanmax(intra)
    means = np.stack([x[y == label].astype(np.float64).mean(0) for label in np.unique(y)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    between = cdist(means, means, "cosine")
    inter = between.sum() / (len(means) ** 2 - len(means))
    return intra.mean(), inter


def published_rho(x, mode):
    """The published CPU path: scikit-learn's TruncatedSVD with D - 1 components."""
    svd = TruncatedSVD(n_components=x.shape[1] - 1, n_iter=7, random_state=42)
    svd.fit(x.astype(np.float64))
    s = svd.singular_values_
    if mode != 0:
        s = s[abs(mode) - 1:]
    s = s / s.sum()
    uniform = np.ones(len(s)) / len(s)
    if mode > 0:
        return entropy(uniform, s)
    if mode < 0:
        return entropy(s, uniform)
    return s


# --- hand-computed --------------------------------------------------------------------------------
# positions 0, 1, 3, 10, 10.5 with labels 0, 1, 0, 1, 1 (class sizes 2 and 3, query included).
#   0    (n=2): 1 F, 3 T, 10 F, 10.5 F -> hit at rank 2: sum P = 1/2;       mAP 1/4,  mAP_c (L=2) 1/4  # noqa: E501
#   1    (n=3): 0 F, 3 F, 10 T, 10.5 T -> hits at 3, 4: 1/3 + 2/4 = 5/6;    mAP 5/18, mAP_c (L=3) 1/9  # noqa: E501
#   3    (n=2): 1 F, 0 T, 10 F, 10.5 F -> 1/2;                              mAP 1/4,  mAP_c 1/4
#   10   (n=3): 10.5 T, 3 F, 1 T, 0 F  -> 1 + 2/3 = 5/3;                    mAP 5/9,  mAP_c 5/9
#   10.5 (n=3): as 10                                                      mAP 5/9,  mAP_c 5/9
SELF_X = column([0.0, 1.0, 3.0, 10.0, 10.5])
SELF_Y = np.array([0, 1, 0, 1, 1])


def test_map_family_by_hand():
    scores = compute_metrics(["mAP", "mAP_c", "mAP_1000", "mAP_lim", "e_recall@1"], SELF_X, SELF_Y)
    assert scores["mAP"] == pytest.approx(17 / 45)  # (1/4 + 5/18 + 1/4 + 5/9 + 5/9) / 5
    assert scores["mAP_c"] == pytest.approx(31 / 90)  # (1/4 + 1/9 + 1/4 + 5/9 + 5/9) / 5
    assert scores["mAP_1000"] == scores["mAP_lim"] == scores["mAP"]  # depth capped at N - 1
    assert scores["e_recall@1"] == pytest.approx(2 / 5)


def test_map_c_of_a_perfect_ranking_is_r_over_class_size():
    x = column([0.0, 0.1, 0.2, 5.0, 5.1])  # classes of 3 and 2, perfectly separated
    y = np.array([0, 0, 0, 1, 1])
    scores = compute_metrics(["mAP_c", "mAP", "map@r"], x, y)
    assert scores["map@r"] == pytest.approx(1.0)
    assert scores["mAP_c"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 5)
    assert scores["mAP"] == pytest.approx(scores["mAP_c"])


def test_dists_by_hand():
    # class 0: (1,0), (0,1): cosine distance 1; class 1: (1,0), (3,0): 0; class 2: one sample,
    # so it takes the largest class value, 1. Class mean directions: (1,1)/sqrt2, (1,0), (0,-1).
    x = np.array([[1, 0], [0, 1], [1, 0], [3, 0], [0, -1]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2])
    scores = compute_metrics(["dists@intra", "dists@inter", "dists@intra_over_inter"], x, y)
    half = 1 / math.sqrt(2)
    inter = ((1 - half) + (1 + half) + 1) / 3
    assert scores["dists@intra"] == pytest.approx(2 / 3)
    assert scores["dists@inter"] == pytest.approx(inter)
    assert scores["dists@intra_over_inter"] == pytest.approx((2 / 3) / inter)


def test_rho_spectrum_by_hand():
    # rows 3 e1, 2 e2, 1 e3 in 4 dimensions: singular values 3, 2, 1, 0; the published spectrum
    # keeps D - 1 = 3 of them: 3, 2, 1 -> normalized 1/2, 1/3, 1/6.
    x = np.array([[3, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    y = np.array([0, 1, 2])
    names = ["rho_spectrum@0", "rho_spectrum@1", "rho_spectrum@-1", "rho_spectrum@2",
             "rho_spectrum@-3"]
    scores = compute_metrics(names, x, y)
    s = np.array([1 / 2, 1 / 3, 1 / 6])
    np.testing.assert_allclose(scores["rho_spectrum@0"], s, rtol=1e-12)
    assert scores["rho_spectrum@1"] == pytest.approx(np.sum(1 / 3 * np.log((1 / 3) / s)))
    assert scores["rho_spectrum@-1"] == pytest.approx(np.sum(s * np.log(s * 3)))
    # @2 drops the largest: 2, 1 -> 2/3, 1/3
    assert scores["rho_spectrum@2"] == pytest.approx(0.5 * np.log(0.75) + 0.5 * np.log(1.5))
    assert scores["rho_spectrum@-3"] == pytest.approx(0.0)  # one value left: uniform
    with pytest.raises(ValueError, match="at most 3"):
        compute_metrics(["rho_spectrum@4"], x, y)


def test_rho_spectrum_is_infinite_when_a_kept_singular_value_is_zero():
    x = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)  # rank 2 < D - 1 = 3
    assert compute_metrics(["rho_spectrum@1"], x, np.array([0, 1]))["rho_spectrum@1"] == math.inf


# --- against the plain loop implementation --------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_the_loop_implementation(seed):
    x, y = random_set(300, 12, seed)
    names = ["mAP", "mAP_c", "mAP_1000", "mAP_lim", "c_mAP_c", "c_mAP_1000", "c_mAP_lim",
             "e_recall@1", "e_recall@4", "c_recall@1", "c_recall@4"]
    ours = compute_metrics(names, x, y)
    for name, depth in MAP_DEPTHS.items():
        assert ours[name] == pytest.approx(loop_map(x, y, depth), abs=1e-6), name
        if name != "mAP":
            assert ours["c_" + name] == pytest.approx(loop_map(x, y, depth, cosine=True),
                                                      abs=1e-6), name
    for k in (1, 4):
        assert ours[f"e_recall@{k}"] == pytest.approx(loop_recall(x, y, k))
        assert ours[f"c_recall@{k}"] == pytest.approx(loop_recall(x, y, k, cosine=True))
    assert ours["c_recall@1"] != ours["e_recall@1"]  # the two spaces differ on these embeddings
    assert ours["c_mAP_c"] != ours["mAP_c"]


def test_map_depths_1000_and_1023_differ_beyond_a_thousand_references():
    x, y = random_set(1100, 3, 2, dim=4, equal=True)  # classes of 367: hits beyond rank 1000
    ours = compute_metrics(["mAP", "mAP_1000", "mAP_lim"], x, y)
    assert ours["mAP_1000"] < ours["mAP_lim"] < ours["mAP"]
    for name in ("mAP_1000", "mAP_lim"):
        assert ours[name] == pytest.approx(loop_map(x, y, MAP_DEPTHS[name]), abs=1e-6), name


def test_map_family_query_gallery_matches_the_loop_implementation():
    x, y = random_set(260, 8, 3)
    queries, gallery = slice(0, 100), slice(100, None)
    ours = compute_metrics(list(MAP_DEPTHS), x[gallery], y[gallery], x[queries], y[queries])
    for name, depth in MAP_DEPTHS.items():
        expected = loop_map(x[gallery], y[gallery], depth, queries=x[queries],
                            query_labels=y[queries])
        assert ours[name] == pytest.approx(expected, abs=1e-6), name


@pytest.mark.parametrize("seed", [0, 1])
def test_dists_match_scipy_pairwise_cosine_distances(seed):
    x, y = random_set(200, 15, seed)
    y[0] = 99  # a class of one sample
    ours = compute_metrics(["dists@intra", "dists@inter", "dists@intra_over_inter"], x, y)
    intra, inter = loop_dists(x, y)
    assert ours["dists@intra"] == pytest.approx(intra, rel=1e-9)
    assert ours["dists@inter"] == pytest.approx(inter, rel=1e-9)
    assert ours["dists@intra_over_inter"] == pytest.approx(intra / inter, rel=1e-9)


@pytest.mark.parametrize("mode", [0, 1, -1, 2, 5, -5])
def test_rho_spectrum_matches_the_published_truncated_svd(mode):
    x, y = random_set(300, 10, 4, dim=12)
    ours = compute_metrics([f"rho_spectrum@{mode}"], x, y)[f"rho_spectrum@{mode}"]
    np.testing.assert_allclose(ours, published_rho(x, mode), rtol=1e-7, atol=1e-12)


def test_cosine_clustering_is_kmeans_of_directions_with_cosine_assignment():
    x, y = random_set(240, 6, 5)
    ours = compute_metrics(["c_nmi", "nmi"], x, y, seed=3)
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    kmeans = faiss.Kmeans(x.shape[1], 6, niter=20, seed=3, min_points_per_centroid=1,
                          max_points_per_centroid=40)
    kmeans.train(units)
    directions = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
    cluster_ids = np.argmax(units @ directions.T, axis=1)
    assert ours["c_nmi"] == pytest.approx(normalized_mutual_info_score(y, cluster_ids))
    assert ours["c_nmi"] != ours["nmi"]


def test_cosine_clustering_recovers_separated_directions():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    directions = np.eye(3, 8)[y] + 0.02 * rng.standard_normal((60, 8))
    x = (directions * rng.uniform(0.5, 5.0, (60, 1))).astype(np.float32)  # norms vary widely
    assert compute_metrics(["c_nmi", "c_f1"], x, y) == pytest.approx({"c_nmi": 1.0, "c_f1": 1.0})


# --- cosine variants of normalized embeddings -----------------------------------------------------
def test_cosine_variants_of_normalized_embeddings_equal_the_euclidean_ones_in_one_search(
        monkeypatch):
    x, y = random_set(200, 10, 6)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    searches = []
    real_search = evaluation.faiss_ops.NeighbourIndex.search

    def counting_search(self, queries, k, own_ids=None):
        searches.append(k)
        return real_search(self, queries, k, own_ids)

    monkeypatch.setattr(evaluation.faiss_ops.NeighbourIndex, "search", counting_search)
    scores = compute_metrics(["e_recall@1", "c_recall@1", "mAP_c", "c_mAP_c", "mAP_1000",
                              "c_mAP_1000"], x, y)
    assert len(searches) == 1
    for name in ("recall@1", "mAP_c", "mAP_1000"):
        euclidean = "e_recall@1" if name == "recall@1" else name
        assert scores["c_" + name] == scores[euclidean]


def test_cosine_variants_equal_the_euclidean_ones_of_the_normalized_embeddings():
    x, y = random_set(200, 10, 7)
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = compute_metrics(["c_recall@2", "c_mAP_lim", "c_f1"], x, y)
    euclidean = compute_metrics(["recall@2", "mAP_lim", "f1"], units, y)
    assert cosine["c_recall@2"] == pytest.approx(euclidean["recall@2"])
    assert cosine["c_mAP_lim"] == pytest.approx(euclidean["mAP_lim"])
    assert 0 < cosine["c_f1"] <= 1


# --- against pytorch-metric-learning --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["self", "query_gallery"])
def test_map_family_matches_pytorch_metric_learning_up_to_the_class_size_factor(mode):
    """pytorch-metric-learning's mean_average_precision reads the first k neighbours and divides
    by R; the published family divides by the class size R + 1. With every class of the same
    size, the two differ by the constant factor R / (R + 1)."""
    x, y = random_set(240, 8, 8, equal=True)  # classes of 30
    if mode == "self":
        arrays, num_references, relevant = (x, y), len(x) - 1, 29
        ours = compute_metrics(["mAP", "mAP_c"], x, y)
    else:
        queries = np.arange(len(x)) % 30 < 6  # 6 queries and 24 gallery samples per class
        arrays = (x[queries], y[queries], x[~queries], y[~queries])
        num_references, relevant = int((~queries).sum()), 24
        ours = compute_metrics(["mAP", "mAP_c"], x[~queries], y[~queries], x[queries], y[queries])
    factor = relevant / (relevant + 1)
    for name, k in (("mAP", num_references), ("mAP_c", relevant + 1)):
        calculator = AccuracyCalculator(include=("mean_average_precision",), k=k,
                                        device=torch.device("cpu"))
        theirs = calculator.get_accuracy(*arrays)["mean_average_precision"]
        assert ours[name] == pytest.approx(theirs * factor, abs=1e-9), name
    assert 0.1 < ours["mAP"] < 0.9


# --- bounded memory: chunks change nothing --------------------------------------------------------
def test_chunked_computation_equals_unchunked(monkeypatch):
    x, y = random_set(700, 9, 9)
    names = ["mAP", "mAP_c", "c_mAP_lim", "dists@intra", "dists@inter", "rho_spectrum@1",
             "rho_spectrum@-2"]
    whole = compute_metrics(names, x, y)
    monkeypatch.setattr(evaluation._blocks, "SEARCH_CHUNK_BYTES", 1)
    monkeypatch.setattr(evaluation._blocks, "MIN_CHUNK_QUERIES", 64)
    monkeypatch.setattr(compute_module, "ROW_CHUNK", 50)
    chunked = compute_metrics(names, x, y)
    assert chunked == pytest.approx(whole, rel=1e-9, abs=1e-12)


# --- names ----------------------------------------------------------------------------------------
def test_every_published_name_is_accepted():
    x, y = random_set(150, 6, 10)
    scores = compute_metrics(PUBLISHED, x, y)
    assert list(scores) == PUBLISHED
    assert isinstance(scores["rho_spectrum@0"], np.ndarray)
    assert not metrics.select("rho_spectrum@0").scalar and metrics.select("rho_spectrum@-1").scalar
    for name in PUBLISHED:
        if name != "rho_spectrum@0":
            assert np.isfinite(scores[name]), name
    assert isinstance(metrics.select("rho_spectrum@-7"), RhoSpectrum)
    assert metrics.select("rho_spectrum@-7").mode == -7


@pytest.mark.parametrize("name", ["map", "mAP@R", "dists@outer", "rho_spectrum", "rho_spectrum@x",
                                  "c_recall@0", "c_map_c"])
def test_unknown_published_looking_names_list_the_valid_ones(name):
    with pytest.raises(UnknownNameError) as error:
        metrics.select(name)
    message = str(error.value)
    assert f"'{name}'" in message
    for valid in ("mAP_c", "c_recall@K", "dists@intra_over_inter", "rho_spectrum@N"):
        assert valid in message


def test_template_rho_spectrum_asks_for_an_integer():
    with pytest.raises(UnknownNameError, match="integer in place of N"):
        metrics.select("rho_spectrum@N")


# --- main.py: published names on the command line -------------------------------------------------
FAST = ["--arch", "resnet18_normalize", "--not_pretrained", "--crop_size", "32", "--kernels", "0",
        "--lr", "1e-3", "--log_every", "5", "--n_epochs", "1", "--bs", "16",
        "--samples_per_class", "4"]


def test_main_logs_published_metrics_and_the_spectrum_as_a_histogram(generated_folder, tmp_path):
    import csv
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import main
    from utilities import run_folder as rf

    names = ["e_recall@1", "c_recall@1", "mAP_c", "c_mAP_lim", "dists@intra_over_inter",
             "rho_spectrum@0", "rho_spectrum@-1", "c_nmi"]
    folder = main.main(["--dataset", "folder", "--source", str(generated_folder),
                        "--evaluation_metrics", *names, "--storage_metrics", "mAP_c",
                        "--save_path", str(tmp_path), *FAST])
    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        row = list(csv.DictReader(handle))[-1]
    for name in names:
        assert (f"test/{name}" in row) == (name != "rho_spectrum@0"), name
    assert float(row["test/c_recall@1"]) == float(row["test/e_recall@1"])  # normalized embeddings
    events = EventAccumulator(folder, size_guidance={"histograms": 0})
    events.Reload()
    assert "epoch/test/rho_spectrum@0" in events.Tags()["histograms"]
    assert "selected by test/mAP_c" in open(os.path.join(folder, rf.SUMMARY_FILE)).read()


def test_main_refuses_the_spectrum_array_as_storage_metric(generated_folder, tmp_path, capsys):
    import main

    code = main.run(["--dataset", "folder", "--source", str(generated_folder),
                     "--evaluation_metrics", "recall@1", "rho_spectrum@0", "--storage_metric",
                     "rho_spectrum@0", "--save_path", str(tmp_path), *FAST])
    assert code == 2
    assert "--storage_metric rho_spectrum@0 is an array" in capsys.readouterr().err
