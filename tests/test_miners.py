"""Batch miners: invariants that can fail (index range, label consistency, semihard window,
distance-weighted statistics, npair/lifted structure), on small random batches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import batchminer
from batchminer._base import TRIPLETS
from parameters import parse_options
from utilities.registry import UnknownNameError

# The miners returning (T, 3) triplets, from their ``output`` attribute; intra_random (its
# published (a, a, a) rows) is tested on its own.
TRIPLET_MINERS = [name for name in batchminer.returning(TRIPLETS) if name != "intra_random"]


pytestmark = pytest.mark.usefixtures("single_thread")


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
    if name not in ("rho_distance", "intra_random"):  # (a, a, p) rows on purpose, tested below
        assert torch.all(anchors != positives)
    if name != "random_distance":  # it permutes the labels on purpose (tests/test_parity_losses)
        assert torch.all(labels[anchors] == labels[positives])


@pytest.mark.parametrize("name", [n for n in TRIPLET_MINERS
                                  if n not in ("rho_distance", "random_distance")])
def test_triplet_miners_negatives_have_other_labels(name, opt):
    torch.manual_seed(1)
    embeddings, labels = make_batch(generated_copies=2)
    triplets = select(name, opt)(embeddings, labels)
    assert torch.all(labels[triplets[:, 0]] != labels[triplets[:, 2]])


def test_triplet_miners_accept_precomputed_distances(opt):
    """A criterion passes its distance matrix; the miner must use it (here: a doctored one)."""
    embeddings, labels = make_batch(num_classes=3, per_class=3)
    distances = torch.ones(len(labels), len(labels))
    distances[0, 5] = 1.005  # the only negative of anchor 0 in its semihard window (1, 1.01)
    miner = batchminer.select("semihard", opt)
    miner.margin = 0.01
    triplets = miner(embeddings, labels, distances)
    assert torch.all(triplets[triplets[:, 0] == 0][:, 2] == 5)


def test_semihard_per_pair_option_window_and_hardest_fallback(opt):
    """``--miner_semihard_per_pair`` (not published): every positive pair, hardest fallback."""
    torch.manual_seed(0)
    embeddings, labels = make_batch(num_classes=8, per_class=4, dim=8)
    opt.miner_semihard_per_pair = True
    miner = batchminer.select("semihard", opt)
    assert miner.per_pair
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


def test_softhard_picks_hard_pairs_when_they_exist(opt):
    torch.manual_seed(0)
    embeddings, labels = make_batch(num_classes=6, per_class=4, dim=6)
    miner = batchminer.select("softhard", opt)
    triplets = miner(embeddings, labels)
    assert len(triplets) == len(labels)
    distances = distances_of(embeddings)
    a, p, n = triplets.unbind(1)
    same = labels[:, None] == labels[None, :]
    farthest_positive = distances.masked_fill(~same | torch.eye(len(labels), dtype=torch.bool),
                                              -1).max(1).values
    closest_negative = distances.masked_fill(same, 9).min(1).values
    has_hard_negative = ((distances < farthest_positive[:, None]) & ~same).any(1)[a]
    has_hard_positive = ((distances > closest_negative[:, None]) & same).any(1)[a]
    assert has_hard_negative.any() and has_hard_positive.any()
    assert torch.all(distances[a, n][has_hard_negative] < farthest_positive[a][has_hard_negative])
    assert torch.all(distances[a, p][has_hard_positive] > closest_negative[a][has_hard_positive])


def test_rho_distance_pushes_positives_with_probability_cp(opt):
    embeddings, labels = make_batch(num_classes=10, per_class=4, dim=16)
    miner = batchminer.select("rho_distance", opt)
    assert miner.push_probability == 0.2
    torch.manual_seed(0)
    pushed = total = 0
    for _ in range(50):
        triplets = miner(embeddings, labels)
        a, p, n = triplets.unbind(1)
        push = a == p
        assert torch.all(labels[n[push]] == labels[a[push]]) and torch.all(n[push] != a[push])
        assert torch.all(labels[n[~push]] != labels[a[~push]])
        pushed += int(push.sum())
        total += len(triplets)
    assert abs(pushed / total - 0.2) < 0.03
    miner.push_probability = 0.0
    triplets = miner(embeddings, labels)
    assert torch.all(triplets[:, 0] != triplets[:, 1])


def test_rho_distance_rejects_a_bad_probability():
    from batchminer.rho_distance import RhoDistanceMiner
    with pytest.raises(ValueError, match="--miner_rho_distance_cp"):
        RhoDistanceMiner(push_probability=1.5)


def test_parametric_matches_its_target_over_bins(opt):
    """Uniform target: each non-empty distance bin of an anchor is drawn equally often, although
    the batch's own distances crowd around sqrt(2)."""
    from batchminer.parametric import ParametricMiner
    embeddings, labels = make_batch(num_classes=40, per_class=2, dim=3, seed=4)
    miner = ParametricMiner("uniform", num_bins=4, support=(0.0, 2.0))
    distances = distances_of(embeddings)[0]
    negatives = labels != labels[0]
    bins = miner.bin_of(distances)[negatives]
    occupied = torch.unique(bins)
    assert len(occupied) >= 3
    torch.manual_seed(0)
    drawn = torch.stack([miner(embeddings, labels)[0, 2] for _ in range(1200)])
    drawn_bins = miner.bin_of(distances[drawn])
    shares = torch.stack([(drawn_bins == b).float().mean() for b in occupied])
    assert torch.all((shares - 1 / len(occupied)).abs() < 0.06), shares
    with pytest.raises(ValueError, match="unknown mode 'nope'"):
        ParametricMiner("nope")


def test_parametric_hard_target_prefers_close_negatives(opt):
    from batchminer.parametric import ParametricMiner
    embeddings, labels = make_batch(num_classes=20, per_class=2, dim=4, seed=6)
    distances = distances_of(embeddings)
    torch.manual_seed(0)
    mean_distance = {}
    for mode in ["uniform", "veryhards"]:
        miner = ParametricMiner(mode)
        triplets = torch.cat([miner(embeddings, labels) for _ in range(20)])
        mean_distance[mode] = distances[triplets[:, 0], triplets[:, 2]].mean()
    assert mean_distance["veryhards"] < mean_distance["uniform"] - 0.2


def test_intra_random_stays_inside_the_class(opt):
    embeddings, labels = make_batch(num_classes=4, per_class=3)
    torch.manual_seed(0)
    triplets = batchminer.select("intra_random", opt)(embeddings, labels)
    a, p, n = triplets.unbind(1)
    assert len(triplets) == len(labels)
    assert torch.all(labels[a] == labels[p]) and torch.all(labels[a] == labels[n])


def test_npair_has_exactly_one_positive_per_anchor(opt):
    torch.manual_seed(0)
    embeddings, labels = make_batch(num_classes=5, per_class=3, generated_copies=1)
    labels = torch.cat([labels, torch.tensor([99])])  # a row without any positive
    embeddings = torch.cat([embeddings, embeddings[:1]])
    anchors, positives, negatives = batchminer.select("npair", opt)(embeddings, labels)
    assert anchors.shape == positives.shape and anchors.dim() == 1
    assert negatives.shape == (len(anchors), len(labels)) and negatives.dtype == torch.bool
    assert torch.equal(anchors, torch.arange(len(labels) - 1))
    assert torch.all(labels[positives] == labels[anchors]) and torch.all(positives != anchors)
    assert torch.equal(negatives, labels[anchors][:, None] != labels[None, :])


def test_lifted_masks_hold_all_positives_and_negatives(opt):
    embeddings, labels = make_batch(num_classes=3, per_class=3)
    labels[-1] = 7  # alone in its class: not an anchor
    anchors, positives, negatives = batchminer.select("lifted", opt)(embeddings, labels)
    assert torch.equal(anchors, torch.arange(len(labels) - 1))
    same = labels[anchors][:, None] == labels[None, :]
    assert torch.equal(negatives, ~same)
    assert torch.equal(positives, same & (anchors[:, None] != torch.arange(len(labels))))
    assert positives.sum(1).min() >= 1


def test_miners_set_detached_scalar_stats(opt):
    embeddings, labels = make_batch(generated_copies=1)
    for name in ["semihard", "softhard", "distance", "rho_distance"]:
        miner = batchminer.select(name, opt)
        miner(embeddings.requires_grad_(), labels)
        assert miner.stats and all(v.dim() == 0 and not v.requires_grad
                                   for v in miner.stats.values()), name


def test_miners_without_any_positive_return_no_triplets(opt):
    embeddings, labels = make_batch(num_classes=6, per_class=1)
    for name in TRIPLET_MINERS:
        if name == "distance":  # published: an anchor alone in its class is its own positive
            triplets = batchminer.select(name, opt)(embeddings, labels)
            assert len(triplets) == 6 and torch.all(triplets[:, 0] == triplets[:, 1]), name
        else:
            assert len(batchminer.select(name, opt)(embeddings, labels)) == 0, name
    # published intra_random: (a, a, a) triplets when every class has one row
    triplets = batchminer.select("intra_random", opt)(embeddings, labels)
    assert torch.all(triplets == triplets[:, :1])
    for name in ["npair", "lifted"]:
        assert len(batchminer.select(name, opt)(embeddings, labels)[0]) == 0, name


def test_gram_backward_and_pairwise_distances():
    """The hand-written Gram backward (one matrix product) against autograd's numerical check,
    and the matrix-product distances against torch.cdist."""
    from batchminer._functional import gram, pairwise_distances
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram, (x,))
    torch.testing.assert_close(pairwise_distances(x.detach()), torch.cdist(x.detach(), x.detach()),
                               atol=1e-6, rtol=1e-6)
    distances = pairwise_distances(x)
    distances[~torch.eye(6, dtype=torch.bool)].sum().backward()
    assert torch.isfinite(x.grad).all()  # the clamped diagonal gives no inf/nan


def test_parametric_miner_reads_its_published_option_names():
    opt = parse_options(["--miner_parametric_mode", "hards", "--miner_parametric_n_support", "7",
                         "--miner_parametric_support_lim", "0.5", "1.5"])
    miner = batchminer.select("parametric", opt)
    assert (miner.mode, miner.num_bins, miner.support) == ("hards", 7, (0.5, 1.5))
