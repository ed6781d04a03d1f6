"""Batch miners: invariants that can fail (index range, label consistency, semihard window,
distance-weighted statistics, npair/lifted structure), on small random batches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import batchminer
from parameters import parse_options
from utilities.registry import UnknownNameError

TRIPLET_MINERS = ["random", "semihard", "softhard", "distance", "rho_distance", "parametric",
                  "random_distance"]


@pytest.fixture(scope="module")
def opt():
    return parse_options([])


def make_batch(num_classes=6, per_class=4, dim=16, seed=0, generated_copies=0):
    """Normalized random batch; with ``generated_copies`` the labels repeat like a DAS batch."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    labels = labels.repeat(generated_copies + 1)
    embeddings = F.normalize(torch.randn(len(labels), dim, generator=generator), dim=1)
    return embeddings, labels


def distances_of(embeddings):
    return torch.cdist(embeddings.double(), embeddings.double()).float()


def select(name, opt):
    if name not in batchminer.REGISTRY:
        pytest.skip(f"miner {name} not written yet")
    return batchminer.select(name, opt)


def test_unknown_miner_name_lists_valid_ones(opt):
    with pytest.raises(UnknownNameError, match="unknown batch miner 'nope' for --batch_mining; "
                                               "valid names: .*semihard"):
        batchminer.select("nope", opt)


@pytest.mark.parametrize("name", TRIPLET_MINERS + ["intra_random"])
def test_triplet_miners_shape_range_device(name, opt):
    torch.manual_seed(0)
    embeddings, labels = make_batch(generated_copies=1)
    triplets = select(name, opt)(embeddings, labels)
    assert triplets.dtype == torch.long and triplets.dim() == 2 and triplets.shape[1] == 3
    assert len(triplets) > 0
    assert triplets.min() >= 0 and triplets.max() < len(labels)
    assert triplets.device == embeddings.device
    anchors, positives, negatives = triplets.unbind(1)
    assert torch.all(anchors != positives)
    assert torch.all(labels[anchors] == labels[positives])


@pytest.mark.parametrize("name", [n for n in TRIPLET_MINERS if n != "rho_distance"])
def test_triplet_miners_negatives_have_other_labels(name, opt):
    torch.manual_seed(1)
    embeddings, labels = make_batch(generated_copies=2)
    triplets = select(name, opt)(embeddings, labels)
    assert torch.all(labels[triplets[:, 0]] != labels[triplets[:, 2]])


def test_triplet_miners_accept_precomputed_distances(opt):
    """A criterion passes its distance matrix; the miner must use it (here: a doctored one)."""
    embeddings, labels = make_batch(num_classes=3, per_class=3)
    distances = torch.ones(len(labels), len(labels))
    distances[0, 5] = 0.05  # the only negative of anchor 0 closer than the others
    miner = batchminer.select("semihard", opt)
    miner.margin = 0.01
    triplets = miner(embeddings, labels, distances)
    assert torch.all(triplets[triplets[:, 0] == 0][:, 2] == 5)


def test_semihard_window_and_fallback(opt):
    torch.manual_seed(0)
    embeddings, labels = make_batch(num_classes=8, per_class=4, dim=8)
    miner = batchminer.select("semihard", opt)
    miner.margin = 0.3
    triplets = miner(embeddings, labels)
    distances = distances_of(embeddings)
    a, p, n = triplets.unbind(1)
    # every positive pair appears once
    positive_pairs = (labels[:, None] == labels[None, :]).sum() - len(labels)
    assert len(triplets) == positive_pairs
    d_ap, d_an = distances[a, p], distances[a, n]
    negatives = labels[:, None] != labels[None, :]
    window = (negatives[a] & (distances[a] > d_ap[:, None])
              & (distances[a] < d_ap[:, None] + miner.margin))
    has_window = window.any(1)
    assert has_window.any() and (~has_window).any()  # both cases are exercised
    assert torch.all(d_an[has_window] > d_ap[has_window])
    assert torch.all(d_an[has_window] < d_ap[has_window] + miner.margin)
    hardest = distances[a].masked_fill(~negatives[a], float("inf")).min(1).values
    assert torch.allclose(d_an[~has_window], hardest[~has_window])
    assert math.isclose(float(miner.stats["semihard_fraction"]), float(has_window.float().mean()),
                        rel_tol=1e-6)


def test_semihard_draws_spread_over_the_window(opt):
    """Within the window the negative is random, not always the same one."""
    embeddings, labels = make_batch(num_classes=10, per_class=2, dim=4, seed=3)
    miner = batchminer.select("semihard", opt)
    miner.margin = 2.0  # every farther negative is in the window
    torch.manual_seed(0)
    draws = torch.stack([miner(embeddings, labels)[:, 2] for _ in range(30)])
    assert (draws != draws[0]).any(0).float().mean() > 0.8


def expected_distance_weights(embeddings, labels, anchor, lower, upper):
    """Numpy oracle of Wu et al.'s weights 1/q(d), d clipped to [lower, upper], negatives only."""
    x = embeddings.double().numpy()
    d = np.linalg.norm(x - x[anchor], axis=1).clip(lower, upper)
    n = x.shape[1]
    log_w = (2 - n) * np.log(d) - (n - 3) / 2 * np.log(1 - d ** 2 / 4)
    w = np.exp(log_w - log_w.max())
    w[labels.numpy() == labels[anchor].item()] = 0
    return w / w.sum()


def test_distance_miner_follows_inverse_density_weights(opt):
    """Chi-square goodness of fit of the sampled negatives of one anchor, fixed seed."""
    from scipy.stats import chisquare
    embeddings, labels = make_batch(num_classes=5, per_class=2, dim=4, seed=2)
    miner = batchminer.select("distance", opt)
    miner.lower_cutoff, miner.upper_cutoff = 0.3, 1.8
    expected = expected_distance_weights(embeddings, labels, 0, 0.3, 1.8)
    assert expected.max() < 0.8 and (expected > 0.01).sum() >= 4  # a non-trivial distribution
    torch.manual_seed(0)
    counts = np.zeros(len(labels))
    for _ in range(3000):
        triplets = miner(embeddings, labels)
        counts[int(triplets[0, 2])] += 1  # anchor 0 comes first
    support = expected > 0
    assert counts[~support].sum() == 0
    _, p_value = chisquare(counts[support], expected[support] * counts.sum())
    assert p_value > 1e-3


def test_distance_miner_prefers_rare_distances(opt):
    """In high dimension 1/q(d) strongly favours negatives nearer than sqrt(2)."""
    embeddings, labels = make_batch(num_classes=20, per_class=2, dim=64, seed=5)
    embeddings[3] = F.normalize(embeddings[0] + 0.6 * embeddings[3], dim=0)  # a close negative
    miner = batchminer.select("distance", opt)
    torch.manual_seed(0)
    hits = sum(int((t := miner(embeddings, labels))[t[:, 0] == 0][0, 2] == 3) for _ in range(50))
    assert hits > 40


def test_distance_cutoffs_must_be_ordered():
    from batchminer.distance import DistanceMiner
    with pytest.raises(ValueError, match="lower cutoff"):
        DistanceMiner(1.4, 0.5)


def test_random_miner_covers_valid_triplets(opt):
    embeddings, labels = make_batch(num_classes=3, per_class=2, dim=4)
    miner = batchminer.select("random", opt)
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        seen.update(map(tuple, miner(embeddings, labels).tolist()))
    assert len(seen) == 6 * 1 * 4  # anchors x positives x negatives
    assert all(labels[a] == labels[p] != labels[n] for a, p, n in seen)


def test_miners_without_any_positive_return_no_triplets(opt):
    embeddings, labels = make_batch(num_classes=6, per_class=1)
    for name in ["random", "semihard", "distance"]:
        assert len(batchminer.select(name, opt)(embeddings, labels)) == 0
