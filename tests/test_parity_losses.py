"""Parity with the published DAS / Revisiting-DML losses, miners and batch sampler (issue 11,
docs/PARITY.md). Each published behaviour is pinned by a small loop written from the published
description (per anchor, explicit draws with a seeded generator), compared with the vectorized
code on fixed tuples or through the distribution of its random draws; each option that switches
to the alternative is tested too."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

import batchminer
import criteria
import datasampler
from parameters import parse_options
from tests.fixtures import FixedMiner

pytestmark = pytest.mark.usefixtures("single_thread")



def normalized_batch(num_classes=5, per_class=3, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return F.normalize(torch.randn(len(labels), dim, generator=generator), dim=1), labels


def value_and_grad(loss_fn, x):
    x = x.detach().clone().double().requires_grad_()
    loss = loss_fn(x)
    loss.backward()
    return loss.detach(), x.grad


# ------------------------------------------------------------------ class_random sampler (item 5)


def published_class_random_batch(members, batch_size, samples_per_class, rng):
    """The published sampler, one batch: bs/spc classes with replacement, spc images each with
    replacement (loop over class draws)."""
    batch = []
    for _ in range(batch_size // samples_per_class):
        cls = members[rng.integers(len(members))]
        batch.extend(int(cls[rng.integers(len(cls))]) for _ in range(samples_per_class))
    return batch


def test_class_random_repeats_classes_and_images_at_the_published_rate():
    """CUB-like: 100 classes, 56 class draws per batch -> 100 (1 - 0.99^56) = 43.0 distinct
    classes on average; 2 images from 5 -> the same image twice with probability 1/5. The loop
    oracle and the vectorized sampler agree on these rates."""
    labels = np.repeat(np.arange(100), 5)
    sampler = datasampler.select("class_random", labels, 112, 2, seed=0)
    members = [np.flatnonzero(labels == c) for c in range(100)]
    rng = np.random.default_rng(1)
    ours, oracle = [], []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        ours.extend(sampler)
        oracle.extend(published_class_random_batch(members, 112, 2, rng) for _ in range(4))
    expected = 100 * (1 - 0.99 ** 56)
    for batches in (ours, oracle):
        distinct = np.mean([len(np.unique(labels[b])) for b in batches])
        assert abs(distinct - expected) < 0.5, distinct
        pairs = np.array([b for b in batches]).reshape(-1, 2)
        same_image = np.mean(pairs[:, 0] == pairs[:, 1])
        assert abs(same_image - 0.2) < 0.02, same_image
        groups = labels[pairs]
        assert (groups[:, 0] == groups[:, 1]).all()  # a class draw keeps its two rows together


def test_class_random_distinct_never_repeats():
    labels = np.repeat(np.arange(100), 5)
    for batch in datasampler.select("class_random_distinct", labels, 112, 2, seed=0):
        assert len(np.unique(labels[batch])) == 56 and len(set(batch)) == 112


def test_class_random_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    labels = np.repeat(np.arange(30), 4)
    full = list(datasampler.select("class_random", labels, 12, 2, seed=3))
    again = datasampler.select("class_random", labels, 12, 2, seed=3)
    assert list(again) == full
    resumed = datasampler.select("class_random", labels, 12, 2, seed=3)
    resumed.load_state_dict({"epoch": 0, "start_batch": 4})
    assert list(resumed) == full[4:]


# ------------------------------------------------------------------ triplet distance (item 2)


def published_triplet_loop(x, triplets, margin):
    terms = [F.relu((x[a] - x[p]).pow(2).sum() - (x[a] - x[n]).pow(2).sum() + margin)
             for a, p, n in triplets.tolist()]
    return torch.stack(terms).mean()


def plain_triplet_loop(x, triplets, margin):
    terms = [F.relu((x[a] - x[p]).norm() - (x[a] - x[n]).norm() + margin)
             for a, p, n in triplets.tolist()]
    return torch.stack(terms).mean()


@pytest.mark.parametrize("distance,oracle", [("squared", published_triplet_loop),
                                             ("plain", plain_triplet_loop)])
def test_triplet_loss_matches_the_loop_on_fixed_triplets(distance, oracle):
    x, labels = normalized_batch()
    triplets = torch.tensor([[0, 1, 3], [1, 2, 7], [4, 3, 0], [9, 10, 14], [12, 13, 2]])
    criterion = criteria.REGISTRY.get("triplet")(FixedMiner(triplets), margin=0.5,
                                                 distance=distance)
    ours = value_and_grad(lambda z: criterion(z, labels), x)
    theirs = value_and_grad(lambda z: oracle(z, triplets, 0.5), x)
    torch.testing.assert_close(ours, theirs)


def test_triplet_default_is_squared_and_option_switches():
    assert parse_options([]).loss_triplet_distance == "squared"
    opt = parse_options(["--loss", "triplet", "--batch_mining", "semihard",
                         "--loss_triplet_distance", "plain"])
    criterion = criteria.select("triplet", opt, 10, batchminer.select("semihard", opt))
    assert criterion.distance == "plain"


# ------------------------------------------------------------------ semihard miner (item 3)


def published_semihard_allowed(distances, labels, anchor, positive, margin):
    """The published rule, for one anchor and its drawn positive: the set its negative is drawn
    from (the window, or every negative when the window is empty)."""
    negatives = [j for j in range(len(labels)) if labels[j] != labels[anchor]]
    d_ap = distances[anchor, positive]
    window = [j for j in negatives if d_ap < distances[anchor, j] < d_ap + margin]
    return (window or negatives), bool(window)


def test_semihard_one_triplet_per_anchor_follows_the_published_rule():
    x, labels = normalized_batch(num_classes=8, per_class=3, dim=4, seed=1)
    distances = torch.cdist(x.double(), x.double())
    miner = batchminer.REGISTRY.get("semihard")(margin=0.3)
    torch.manual_seed(0)
    seen_window = seen_fallback = 0
    for _ in range(20):
        triplets = miner(x, labels)
        assert triplets[:, 0].tolist() == list(range(len(labels)))  # one per anchor
        for a, p, n in triplets.tolist():
            assert p != a and labels[p] == labels[a]
            allowed, in_window = published_semihard_allowed(distances, labels, a, p, 0.3)
            assert n in allowed
            seen_window += in_window
            seen_fallback += not in_window
    assert seen_window and seen_fallback  # both branches exercised


def test_semihard_positive_is_random_and_fallback_is_a_random_negative():
    """Distribution checks: the positive is uniform among the other same-class rows, and with an
    empty window the negative is uniform among all negatives (not the hardest)."""
    x, labels = normalized_batch(num_classes=6, per_class=3, dim=4, seed=2)
    miner = batchminer.REGISTRY.get("semihard")(margin=1e-6)  # windows (almost surely) empty
    torch.manual_seed(0)
    draws = torch.stack([miner(x, labels)[0] for _ in range(1500)])  # anchor 0's triplets
    positives = np.bincount(draws[:, 1].numpy(), minlength=3)[1:3]
    assert chisquare(positives).pvalue > 1e-3
    negatives = np.bincount(draws[:, 2].numpy(), minlength=len(labels))[3:]
    assert chisquare(negatives).pvalue > 1e-3
    distances = torch.cdist(x, x)[0, 3:]
    hardest = int(distances.argmin())
    assert negatives[hardest] < 0.2 * negatives.sum()


def test_semihard_window_draws_are_uniform():
    x, labels = normalized_batch(num_classes=8, per_class=2, dim=4, seed=3)
    miner = batchminer.REGISTRY.get("semihard")(margin=10.0)  # window: every farther negative
    distances = torch.cdist(x.double(), x.double())
    farther = [j for j in range(2, len(labels)) if distances[0, j] > distances[0, 1]]
    torch.manual_seed(0)
    counts = np.bincount([int(miner(x, labels)[0, 2]) for _ in range(1200)],
                         minlength=len(labels))
    assert counts[[j for j in range(2, len(labels)) if j not in farther]].sum() == 0
    assert chisquare(counts[farther]).pvalue > 1e-3


def test_semihard_margin_defaults_to_the_running_loss_margin():
    opt = parse_options(["--loss", "margin", "--batch_mining", "semihard",
                         "--loss_margin_margin", "0.35"])
    assert opt.miner_semihard_margin == 0.35
    opt = parse_options(["--loss", "triplet", "--batch_mining", "semihard"])
    assert opt.miner_semihard_margin == opt.loss_triplet_margin
    assert not batchminer.select("semihard", opt).per_pair


# ------------------------------------------------------------------ distance miner (item 4)


def published_distance_probabilities(x, labels, anchor, lower, upper=None):
    """The published 1/q weights of one anchor in float64: d clamped below at ``lower`` (and
    above at ``upper`` for the option), same-class rows at 0, normalized."""
    x = x.double().numpy()
    dim = x.shape[1]
    probabilities = np.zeros(len(labels))
    for j in range(len(labels)):
        if labels[j] == labels[anchor]:
            continue
        d = max(np.linalg.norm(x[anchor] - x[j]), lower)
        if upper is not None:
            d = min(d, upper)
        probabilities[j] = d ** (2.0 - dim) * (1.0 - 0.25 * d * d) ** ((3.0 - dim) / 2.0)
    return probabilities / probabilities.sum()


@pytest.mark.parametrize("clip_upper", [False, True])
def test_distance_miner_negative_frequencies_follow_the_published_weights(clip_upper):
    x, labels = normalized_batch(num_classes=6, per_class=2, dim=3, seed=6)
    miner = batchminer.REGISTRY.get("distance")(lower_cutoff=0.3, upper_cutoff=0.7,
                                                clip_upper=clip_upper)
    expected = published_distance_probabilities(x, labels, 0, 0.3, 0.7 if clip_upper else None)
    other = published_distance_probabilities(x, labels, 0, 0.3, None if clip_upper else 0.7)
    assert np.abs(expected - other).max() > 0.09  # the option makes a visible difference
    torch.manual_seed(0)
    draws = 4000
    counts = np.bincount([int(miner(x, labels)[0, 2]) for _ in range(draws)],
                         minlength=len(labels))
    assert np.abs(counts / draws - expected).max() < 0.03
    assert np.abs(counts / draws - other).max() > 0.03


def test_distance_miner_positive_excludes_self_unless_alone():
    x = F.normalize(torch.randn(7, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])  # rows 5 and 6 are alone in their class
    miner = batchminer.select("distance", parse_options([]))
    torch.manual_seed(0)
    positives = torch.stack([miner(x, labels)[:, 1] for _ in range(300)])
    assert positives.shape[1] == 7  # every anchor gets a triplet
    assert torch.all(positives[:, 5] == 5) and torch.all(positives[:, 6] == 6)
    for anchor in range(5):
        picked = set(positives[:, anchor].tolist())
        assert anchor not in picked
        assert picked == {j for j in range(5) if labels[j] == labels[anchor] and j != anchor}


def test_rho_distance_clamps_below_only_by_default():
    opt = parse_options([])
    assert not batchminer.select("rho_distance", opt).clip_upper
    opt = parse_options(["--miner_rho_distance_clip_upper", "--miner_distance_clip_upper"])
    assert batchminer.select("rho_distance", opt).clip_upper
    assert batchminer.select("distance", opt).clip_upper


# ------------------------------------------------------------------ other miners


def test_random_miner_draws_distinct_triplets_uniformly():
    """Published: ``random.sample`` of bs triplets among all valid ones. Labels [0,0,1,1]: 8 valid
    triplets, 4 drawn without replacement, so each is in a draw with probability 1/2."""
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.randn(4, 3)
    miner = batchminer.select("random", parse_options([]))
    torch.manual_seed(0)
    counts = {}
    for _ in range(800):
        triplets = miner(x, labels)
        assert len(triplets) == 4 and len({tuple(t) for t in triplets.tolist()}) == 4
        for a, p, n in triplets.tolist():
            assert a != p and labels[a] == labels[p] and labels[a] != labels[n]
            counts[(a, p, n)] = counts.get((a, p, n), 0) + 1
    assert len(counts) == 8
    assert all(abs(c / 800 - 0.5) < 0.07 for c in counts.values())


def test_intra_random_draws_classes_uniformly_among_those_present():
    """Published: class uniform over the batch's classes (not over rows), then a, p, n drawn
    with replacement inside it. Class 1 holds 2 of 8 rows but is drawn half of the time."""
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    miner = batchminer.select("intra_random", parse_options([]))
    torch.manual_seed(0)
    triplets = torch.cat([miner(torch.randn(8, 3), labels) for _ in range(200)])
    assert torch.all(labels[triplets] == labels[triplets[:, :1]])
    share = float((labels[triplets[:, 0]] == 1).float().mean())
    assert abs(share - 0.5) < 0.05
    coincide = float((triplets[:, 0] == triplets[:, 1]).float().mean())
    assert 0.2 < coincide < 0.4  # with replacement: a == p with prob. 1/6 or 1/2


def test_random_distance_uses_permuted_labels():
    """Published: the labels are shuffled first, so the true labels of (a, p) often differ."""
    x, labels = normalized_batch(num_classes=6, per_class=2, dim=4)
    miner = batchminer.select("random_distance", parse_options([]))
    torch.manual_seed(0)
    triplets = torch.cat([miner(x, labels) for _ in range(50)])
    same = float((labels[triplets[:, 0]] == labels[triplets[:, 1]]).float().mean())
    assert same < 0.5  # with the true labels it would be 1
    assert torch.all(triplets[:, 0] != triplets[:, 1])


# ------------------------------------------------------------------ lifted (item 8)


def published_lifted_loop(x, labels, neg_margin, l2_weight, eps=1e-6):
    """The published loss, per anchor with the published PairwiseDistance call written out: the
    norm over the set members for each embedding dimension, then logsumexp over dimensions."""
    terms = []
    for a in range(len(labels)):
        pos = [j for j in range(len(labels)) if labels[j] == labels[a] and j != a]
        neg = [j for j in range(len(labels)) if labels[j] != labels[a]]
        if not pos:
            continue
        pos_norms = torch.stack([torch.sqrt(sum((x[a, d] - x[j, d] + eps) ** 2 for j in pos))
                                 for d in range(x.shape[1])])
        neg_norms = torch.stack([torch.sqrt(sum((x[a, d] - x[j, d] + eps) ** 2 for j in neg))
                                 for d in range(x.shape[1])])
        terms.append(F.relu(torch.logsumexp(pos_norms, 0)
                            + torch.logsumexp(neg_margin - neg_norms, 0)))
    return torch.stack(terms).mean() + l2_weight * x.norm(dim=1).mean()


def corrected_lifted_loop(x, labels, neg_margin, l2_weight):
    terms = []
    for a in range(len(labels)):
        pos = [(x[a] - x[j]).norm() for j in range(len(labels))
               if labels[j] == labels[a] and j != a]
        neg = [neg_margin - (x[a] - x[j]).norm() for j in range(len(labels))
               if labels[j] != labels[a]]
        if pos:
            terms.append(F.relu(torch.logsumexp(torch.stack(pos), 0)
                                + torch.logsumexp(torch.stack(neg), 0)))
    return torch.stack(terms).mean() + l2_weight * x.norm(dim=1).mean()


@pytest.mark.parametrize("formulation,oracle", [("published", published_lifted_loop),
                                                ("corrected", corrected_lifted_loop)])
def test_lifted_matches_the_loop_with_gradients(formulation, oracle):
    generator = torch.Generator().manual_seed(4)
    x = 2.0 * torch.randn(10, 5, generator=generator) + 3.0  # unnormalized, off-centre
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    miner = batchminer.select("lifted", parse_options([]))
    criterion = criteria.REGISTRY.get("lifted")(miner, neg_margin=1.0, l2_weight=0.005,
                                                formulation=formulation)
    ours = value_and_grad(lambda z: criterion(z, labels), x)
    theirs = value_and_grad(lambda z: oracle(z, labels, 1.0, 0.005), x)
    torch.testing.assert_close(ours, theirs)


def test_lifted_worked_example_of_docs_parity():
    """docs/PARITY.md: anchor (0,0), positives (1,0), (0,1), negative (2,0), margin 1."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    only_anchor_0 = FixedMiner((torch.tensor([0]), (labels == 0)[None] & (torch.arange(4) != 0),
                                (labels != 0)[None]))
    published = criteria.REGISTRY.get("lifted")(only_anchor_0, 1.0, 0.0)
    corrected = criteria.REGISTRY.get("lifted")(only_anchor_0, 1.0, 0.0, "corrected")
    # corrected: logsumexp(1, 1) + logsumexp(1 - 2) = 1 + ln 2 - 1 = 0.693
    assert math.isclose(corrected(x, labels).item(), math.log(2.0), rel_tol=1e-5)
    # published: per-dimension norms over the positives (1, 1), over the negative (2, 0):
    # logsumexp(1, 1) + logsumexp(1 - 2, 1 - 0) = 1.693 + 1.127 = 2.820
    expected = 1 + math.log(2.0) + math.log(math.exp(-1.0) + math.exp(1.0))
    assert math.isclose(published(x, labels).item(), expected, rel_tol=1e-4)
    assert parse_options([]).loss_lifted_formulation == "published"


# ------------------------------------------------------------------ N-pair (item 9)


def published_npair_loop(x, anchors, positives, negatives, l2_weight, divisor):
    x = x / divisor
    loss = 0
    for a, p, neg in zip(anchors, positives, negatives):
        inner = torch.stack([x[a] @ (x[n] - x[p]) for n in neg])
        loss = loss + torch.log(torch.exp(inner).sum() + 1) / len(anchors)
        loss = loss + l2_weight * x.norm(dim=1).mean() / len(anchors)
    return loss


@pytest.mark.parametrize("divisor", [1.0, 4.0])
def test_npair_matches_the_published_loop_with_its_divisor(divisor):
    generator = torch.Generator().manual_seed(6)
    x = 3.0 * torch.randn(8, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    anchors = torch.arange(8)
    positives = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    negatives = labels[None, :] != labels[:, None]
    miner = FixedMiner((anchors, positives, negatives))
    criterion = criteria.REGISTRY.get("npair")(miner, l2_weight=0.005, divisor=divisor)
    neg_lists = [negatives[a].nonzero().squeeze(1).tolist() for a in range(8)]
    ours = value_and_grad(lambda z: criterion(z, labels), x)
    theirs = value_and_grad(lambda z: published_npair_loop(z, anchors.tolist(), positives.tolist(),
                                                           neg_lists, 0.005, divisor), x)
    torch.testing.assert_close(ours, theirs)


def test_npair_divisor_defaults_by_arch():
    for arch, divisor in [("resnet50_frozen", 1.0), ("bninception_frozen", 4.0)]:
        opt = parse_options(["--loss", "npair", "--batch_mining", "npair", "--arch", arch])
        criterion = criteria.select("npair", opt, 10, batchminer.select("npair", opt))
        assert criterion.divisor == divisor
    opt = parse_options(["--loss", "npair", "--batch_mining", "npair", "--loss_npair_divisor", "4"])
    assert criteria.select("npair", opt, 10, batchminer.select("npair", opt)).divisor == 4.0


# ------------------------------------------------------------------ other criteria


def test_quadruplet_fourth_rows_follow_the_published_index_rule():
    """Published: triplet i's fourth row is an index k drawn among the triplet indices whose
    negative differs from triplet i's negative (read as a batch row). Spy on the draw's mask."""
    import criteria.quadruplet as quadruplet_module
    x, labels = normalized_batch(num_classes=4, per_class=2)
    triplets = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 3, 4], [3, 2, 0], [4, 5, 6], [5, 4, 6],
                             [6, 7, 0], [7, 6, 2]])
    masks = []
    original = quadruplet_module.random_choice
    quadruplet_module.random_choice = lambda mask: (masks.append(mask), original(mask))[1]
    try:
        criteria.REGISTRY.get("quadruplet")(FixedMiner(triplets), 0.2, 0.2)(x, labels)
        criteria.REGISTRY.get("quadruplet")(FixedMiner(triplets), 0.2, 0.2,
                                            fourth_by_class=True)(x, labels)
    finally:
        quadruplet_module.random_choice = original
    negatives = triplets[:, 2]
    assert torch.equal(masks[0], negatives[None, :] != negatives[:, None])
    by_class = ((labels[None, :] != labels[triplets[:, 0]][:, None])
                & (labels[None, :] != labels[negatives][:, None]))
    assert torch.equal(masks[1], by_class)
    opt = parse_options(["--loss", "quadruplet", "--batch_mining", "distance",
                         "--loss_quadruplet_fourth_by_class"])
    assert criteria.select("quadruplet", opt, 10, batchminer.select("distance", opt)
                           ).fourth_by_class


def test_quadruplet_own_fourth_option_matches_a_loop_with_the_same_fourth_rows(monkeypatch):
    """Control the fourth-row draw: with ``--loss_quadruplet_second_term own_fourth`` the loss is
    the one-to-one loop on those rows (the published all-pairs default is pinned in
    tests/test_parity_losses_round2.py)."""
    import criteria.quadruplet as quadruplet_module
    x, labels = normalized_batch(num_classes=4, per_class=2, seed=7)
    triplets = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 3, 4], [3, 2, 0], [4, 5, 6], [5, 4, 6],
                             [6, 7, 0], [7, 6, 2]])
    fourth = torch.tensor([2, 4, 0, 2, 1, 0, 1, 6])  # rows k with negatives[k] != negatives[i]
    negatives = triplets[:, 2]
    assert torch.all(negatives[fourth] != negatives)
    monkeypatch.setattr(quadruplet_module, "random_choice",
                        lambda mask: (fourth, torch.ones(len(mask), dtype=torch.bool)))
    criterion = criteria.REGISTRY.get("quadruplet")(FixedMiner(triplets), 0.2, 0.3,
                                                    second_term="own_fourth")

    def loop(z):
        first = [F.relu((z[a] - z[p]).norm() - (z[a] - z[n]).norm() + 0.2)
                 for a, p, n in triplets.tolist()]
        second = [F.relu((z[a] - z[p]).norm() - (z[n] - z[m]).norm() + 0.3)
                  for (a, p, n), m in zip(triplets.tolist(), fourth.tolist())]
        return torch.stack(first).mean() + torch.stack(second).mean()

    torch.testing.assert_close(value_and_grad(lambda z: criterion(z, labels), x),
                               value_and_grad(loop, x))


def test_snr_has_no_regularizer_with_the_distance_miner():
    opt = parse_options(["--loss", "snr", "--batch_mining", "distance"])
    assert criteria.select("snr", opt, 10, batchminer.select("distance", opt)).reg_lambda == 0.0
    opt = parse_options(["--loss", "snr", "--batch_mining", "semihard"])
    assert criteria.select("snr", opt, 10, batchminer.select("semihard", opt)).reg_lambda == 0.005


def test_contrastive_stop_gradient_options():
    x, labels = normalized_batch()
    triplets = torch.tensor([[0, 1, 3], [4, 5, 9]])
    for stop_pos, stop_neg in [(False, False), (True, False), (False, True)]:
        criterion = criteria.REGISTRY.get("contrastive")(FixedMiner(triplets), 0.0, 1.5,
                                                         stop_pos, stop_neg)
        _, grad = value_and_grad(lambda z: criterion(z, labels), x)
        assert (grad[1].abs().sum() == 0) == stop_pos
        assert (grad[3].abs().sum() == 0) == stop_neg
        assert grad[0].abs().sum() > 0


def test_proxyanchor_proxies_use_the_published_kaiming_init():
    torch.manual_seed(0)
    criterion = criteria.REGISTRY.get("proxyanchor")(200, 128)
    assert abs(float(criterion.proxies.detach().std()) - math.sqrt(2.0 / 200)) < 0.005
