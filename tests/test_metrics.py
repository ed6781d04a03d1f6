"""Metrics: hand-computed cases, ties and duplicates, and pytorch-metric-learning as an oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

import metrics
from evaluation import compute_metrics
from evaluation._blocks import _without_self
from evaluation.faiss_ops import NeighbourIndex
from metrics.f1 import F1
from metrics.nmi import NMI
from metrics.recall import Recall
from utilities.registry import UnknownNameError


def column(values) -> np.ndarray:
    """1-D positions as (N, 1) embeddings, so that every distance is easy to work out by hand."""
    return np.asarray(values, dtype=np.float32)[:, None]


# --- retrieval, self-retrieval mode ---------------------------------------------------------------
# positions 0, 1, 3, 10, 10.5 with labels 0, 1, 0, 1, 1. Ranked neighbours (self excluded):
#   0   -> 1(1) 3(0) 10(1) 10.5(1)     relevant: F T F F   R=1
#   1   -> 0(0) 3(0) 10(1) 10.5(1)     relevant: F F T T   R=2
#   3   -> 1(1) 0(0) 10(1) 10.5(1)     relevant: F T F F   R=1
#   10  -> 10.5(1) 3(0) 1(1) 0(0)      relevant: T F T F   R=2
#   10.5-> 10(1) 3(0) 1(1) 0(0)        relevant: T F T F   R=2
SELF_X = column([0.0, 1.0, 3.0, 10.0, 10.5])
SELF_Y = np.array([0, 1, 0, 1, 1])


def test_self_retrieval_by_hand():
    scores = compute_metrics(["recall@1", "recall@2", "recall@3", "map@r", "r_precision"],
                             SELF_X, SELF_Y)
    assert scores["recall@1"] == pytest.approx(2 / 5)
    assert scores["recall@2"] == pytest.approx(4 / 5)
    assert scores["recall@3"] == pytest.approx(1.0)
    # only the last two queries hit within their first R=2: 1/2 each (MAP@R: P(1) * 1 / R)
    assert scores["r_precision"] == pytest.approx(1 / 5)
    assert scores["map@r"] == pytest.approx(1 / 5)


# --- retrieval, query/gallery mode ----------------------------------------------------------------
# gallery positions 1..5 with labels A B A A B (R_A = 3, R_B = 2)
#   q=0   (A): A B A A B -> within R=3: T F T -> AP = (1/1 + 2/3)/3 = 5/9,  R-prec 2/3
#   q=5.2 (B): B A A B A -> within R=2: T F   -> AP = (1/1)/2 = 1/2,      R-prec 1/2
#   q=2.1 (A): B A A A B -> within R=3: F T T -> AP = (1/2 + 2/3)/3 = 7/18, R-prec 2/3
#   q=9   (C): no gallery sample of class C: a "lone" query, left out of every average
A, B, C = 0, 1, 2
GALLERY_X = column([1.0, 2.0, 3.0, 4.0, 5.0])
GALLERY_Y = np.array([A, B, A, A, B])
QUERY_X = column([0.0, 5.2, 2.1, 9.0])
QUERY_Y = np.array([A, B, A, C])


def test_query_gallery_by_hand():
    names = ["recall@1", "recall@2", "map@r", "r_precision"]
    scores = compute_metrics(names, GALLERY_X, GALLERY_Y, QUERY_X, QUERY_Y)
    assert scores["recall@1"] == pytest.approx(2 / 3)
    assert scores["recall@2"] == pytest.approx(1.0)
    assert scores["map@r"] == pytest.approx((5 / 9 + 1 / 2 + 7 / 18) / 3)
    assert scores["r_precision"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    without_lone = compute_metrics(names, GALLERY_X, GALLERY_Y, QUERY_X[:3], QUERY_Y[:3])
    assert without_lone == pytest.approx(scores)


def test_gallery_duplicate_of_a_query_counts_in_query_gallery_mode():
    scores = compute_metrics(["recall@1"], column([0.0, 5.0]), np.array([0, 1]),
                             column([0.0]), np.array([0]))
    assert scores["recall@1"] == 1.0


# --- ties and duplicates --------------------------------------------------------------------------
def test_a_query_never_counts_itself_among_exact_duplicates():
    # Four identical points with four different labels, and their four same-label partners far
    # away. Whatever order faiss gives the ties, the first 3 neighbours of each point are
    # duplicates of another class: counting the query itself would give Recall@1 = 1.
    x = column([0.0] * 4 + [100.0] * 4)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    scores = compute_metrics(["recall@1", "recall@3", "recall@7", "map@r", "r_precision"], x, y)
    assert scores["recall@1"] == 0.0
    assert scores["recall@3"] == 0.0
    assert scores["recall@7"] == 1.0
    assert scores["map@r"] == 0.0
    assert scores["r_precision"] == 0.0


def test_same_class_duplicates_are_hits():
    x = column([0.0, 0.0, 0.0, 50.0, 50.0])
    y = np.array([0, 0, 0, 1, 1])
    scores = compute_metrics(["recall@1", "map@r", "r_precision"], x, y)
    assert scores == {"recall@1": 1.0, "map@r": 1.0, "r_precision": 1.0}


def test_self_is_removed_wherever_it_ranks():
    ids = np.array([[5, 3, 7],    # own id 5 first
                    [2, 6, 1],    # own id 6 second (a tie ranked before it)
                    [0, 4, 9]])   # own id 8 missing: pushed out by ties, drop the last one
    kept = _without_self(ids.copy(), np.array([5, 6, 8]))
    np.testing.assert_array_equal(kept, [[3, 7], [2, 1], [0, 4]])


def test_search_never_returns_the_query_itself():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    index = NeighbourIndex(x, 21)
    rows = np.arange(10, 300, 7)
    ids = index.search(x[rows], 20, own_ids=rows)
    assert ids.shape == (len(rows), 20)
    assert not (ids == rows[:, None]).any()
    np.testing.assert_array_equal(ids, index.search(x[rows], 21)[:, 1:])


def test_recall_at_k_beyond_the_references_means_any_same_class_sample():
    scores = compute_metrics(["recall@1000"], SELF_X, SELF_Y)
    assert scores["recall@1000"] == 1.0


# --- clustering -----------------------------------------------------------------------------------
def test_f1_by_hand():
    # classes {0,1,2} {3,4}; clusters {0,1} {2,3,4}. Pairs sharing a class: 3 + 1 = 4; sharing a
    # cluster: 1 + 3 = 4; sharing both: {0,1} and {3,4} = 2. P = R = 2/4, F1 = 1/2.
    labels = np.array([0, 0, 0, 1, 1])
    clusters = np.array([7, 7, 3, 3, 3])
    assert F1("f1").score(labels, clusters) == pytest.approx(0.5)
    assert F1("f1").score(labels, np.array([0, 0, 0, 1, 1])) == 1.0
    # everything in one cluster: P = 4/10, R = 1 -> F1 = 2 * 0.4 / 1.4
    assert F1("f1").score(labels, np.zeros(5, dtype=int)) == pytest.approx(0.8 / 1.4)


def test_nmi_by_hand():
    labels = np.array([0, 0, 0, 1, 1])
    clusters = np.array([7, 7, 3, 3, 3])
    # joint probabilities: (0,7) 2/5, (0,3) 1/5, (1,3) 2/5; marginals 3/5 2/5 and 2/5 3/5
    mutual = (0.4 * math.log(0.4 / (0.6 * 0.4)) + 0.2 * math.log(0.2 / (0.6 * 0.6))
              + 0.4 * math.log(0.4 / (0.4 * 0.6)))
    entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))  # the same for labels and clusters
    assert NMI("nmi").score(labels, clusters) == pytest.approx(mutual / entropy)
    assert NMI("nmi").score(labels, np.array([5, 5, 5, 2, 2])) == pytest.approx(1.0)


def separated_clusters(num_classes: int, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, 16)).astype(np.float32) * 100
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centres[labels] + rng.standard_normal((len(labels), 16)).astype(np.float32)
    return x, labels


def test_kmeans_recovers_well_separated_classes():
    x, y = separated_clusters(4, 10)
    scores = compute_metrics(["nmi", "f1"], x, y)
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["f1"] == pytest.approx(1.0)


def test_query_gallery_clusters_queries_and_gallery_together():
    # The mechanism, not k-means' luck: one k-means run from faiss's seed 1234 (the published
    # evaluation's) may start two centroids in one class of this data, so clustering quality is
    # not asserted; the query/gallery figures must equal those of clustering all 30 rows at once.
    x, y = separated_clusters(3, 10)
    query = np.arange(len(y)) % 2 == 0
    scores = compute_metrics(["nmi", "f1", "recall@1"], x[~query], y[~query], x[query], y[query])
    together = compute_metrics(["nmi", "f1"], np.concatenate([x[query], x[~query]]),
                               np.concatenate([y[query], y[~query]]))
    assert scores["recall@1"] == 1.0  # every query's nearest gallery row is of its class
    assert (scores["nmi"], scores["f1"]) == (together["nmi"], together["f1"])
    gallery_only = compute_metrics(["nmi"], x[~query], y[~query])
    assert gallery_only["nmi"] != scores["nmi"]  # the queries did take part in the clustering


# --- against pytorch-metric-learning --------------------------------------------------------------
def pml_scores(*arrays) -> dict:
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        device=torch.device("cpu"))
    return calculator.get_accuracy(*arrays)


def random_set(num_samples: int, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    centres = rng.standard_normal((num_classes, 16))
    x = (centres[labels] + 1.5 * rng.standard_normal((num_samples, 16))).astype(np.float32)
    return x, labels


NAMES = ["recall@1", "r_precision", "map@r"]


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning_self_retrieval(seed):
    x, y = random_set(400, 25, seed)
    ours = compute_metrics(NAMES, x, y)
    theirs = pml_scores(x, y)
    assert 0.05 < ours["recall@1"] < 0.95  # a case where the metrics are informative
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning_query_gallery(seed):
    x, y = random_set(500, 30, seed)
    queries, gallery = slice(0, 200), slice(200, None)
    ours = compute_metrics(NAMES, x[gallery], y[gallery], x[queries], y[queries])
    theirs = pml_scores(x[queries], y[queries], x[gallery], y[gallery])
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-9)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-9)


# --- names ----------------------------------------------------------------------------------------
def test_parametrized_names_and_alias():
    metric = metrics.select("recall@25")
    assert isinstance(metric, Recall) and metric.k == 25
    x, y = random_set(120, 10, 3)
    scores = compute_metrics(["recall@4", "e_recall@4", "nmi", "recall@4"], x, y)
    assert list(scores) == ["recall@4", "e_recall@4", "nmi"]
    assert scores["e_recall@4"] == scores["recall@4"]


@pytest.mark.parametrize("name", ["recall", "recall@0", "recall@x", "map", "precision@1"])
def test_unknown_metric_lists_valid_names(name):
    with pytest.raises(UnknownNameError) as error:
        compute_metrics([name], SELF_X, SELF_Y)
    message = str(error.value)
    assert f"'{name}'" in message and "--evaluation_metrics" in message
    for valid in ("recall@K", "e_recall@K", "nmi", "f1", "map@r", "r_precision"):
        assert valid in message


def test_template_name_itself_asks_for_an_integer():
    with pytest.raises(UnknownNameError, match="positive integer"):
        metrics.select("recall@K")


# --- bad input ------------------------------------------------------------------------------------
def test_bad_input_messages():
    with pytest.raises(ValueError, match="NaN or infinite"):
        compute_metrics(["recall@1"], column([0.0, np.nan]), np.array([0, 0]))
    with pytest.raises(ValueError, match="expected 5 labels"):
        compute_metrics(["recall@1"], SELF_X, SELF_Y[:4])
    with pytest.raises(ValueError, match="give both or neither"):
        compute_metrics(["recall@1"], SELF_X, SELF_Y, query_embeddings=SELF_X)
    with pytest.raises(ValueError, match="dimension 2"):
        compute_metrics(["recall@1"], SELF_X, SELF_Y, np.zeros((2, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="kmeans_iterations"):
        compute_metrics(["nmi"], SELF_X, SELF_Y, kmeans_iterations=0)
