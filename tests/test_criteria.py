"""Criteria checked against pytorch-metric-learning (PML, an independent implementation) where the
formulas coincide, and against hand-computed cases where they differ on purpose.

PML normalizes embeddings inside its distances; so that gradients compare exactly, both sides get
the same raw tensor ``z``: ours sees ``F.normalize(z)``, PML sees ``z``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

import batchminer
import criteria
from parameters import parse_options
from tests.fixtures import FixedMiner
from utilities.registry import UnknownNameError

torch.set_default_dtype(torch.float32)


pytestmark = pytest.mark.usefixtures("single_thread")



def raw_batch(num_classes=5, per_class=4, dim=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    raw = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    return raw, labels


def loss_and_grad(loss_fn, raw):
    raw = raw.clone().requires_grad_(True)
    loss = loss_fn(raw)
    loss.backward()
    return loss.detach(), raw.grad


def assert_same(ours, theirs, raw, rtol=1e-6, atol=1e-8):
    loss_a, grad_a = loss_and_grad(ours, raw)
    loss_b, grad_b = loss_and_grad(theirs, raw)
    assert loss_a.item() > 0
    torch.testing.assert_close(loss_a, loss_b.to(loss_a.dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(grad_a, grad_b, rtol=rtol * 10, atol=atol * 10)


def all_triplets(labels):
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    valid = (same & ~eye)[:, :, None] & ~same[:, None, :]
    return valid.nonzero()


# ---------------------------------------------------------------- selection and refusal


def test_unknown_criterion_lists_valid_names(opt):
    with pytest.raises(UnknownNameError, match="unknown criterion 'nope' for --loss; valid names: "
                                               ".*multisimilarity.*triplet"):
        criteria.select("nope", opt, 10)


def test_unaccepted_miner_is_refused_with_the_accepted_list(opt):
    miner = batchminer.select("npair", opt)
    with pytest.raises(ValueError, match="criterion 'triplet' does not accept "
                                         "--batch_mining npair; "
                                         "accepted: random, semihard"):
        criteria.select("triplet", opt, 10, miner)
    with pytest.raises(ValueError, match="criterion 'lifted' does not accept --batch_mining "
                                         "semihard; accepted: lifted"):
        criteria.select("lifted", opt, 10, batchminer.select("semihard", opt))


def test_missing_miner_is_refused(opt):
    with pytest.raises(ValueError, match="criterion 'triplet' needs a batch miner"):
        criteria.select("triplet", opt, 10, None)


def test_every_criterion_declares_how_it_plugs_in():
    for name in criteria.REGISTRY.names():
        member = criteria.REGISTRY.get(name)
        assert issubclass(member, criteria.BaseCriterion)
        if member.requires_miner:
            assert member.accepted_miners, name
            assert all(m in batchminer.REGISTRY for m in member.accepted_miners), name


# ---------------------------------------------------------------- triplet


@pytest.mark.parametrize("distance", ["squared", "plain"])
def test_triplet_matches_pml_on_the_same_triplets(distance):
    """Default: the published squared distances (PML with LpDistance(power=2)); the option
    ``plain``: Euclidean distances (PML's default TripletMarginLoss)."""
    from pytorch_metric_learning.distances import LpDistance
    raw, labels = raw_batch()
    triplets = all_triplets(labels)[::3]
    ours = criteria.REGISTRY.get("triplet")(FixedMiner(triplets), margin=0.2, distance=distance)
    # PML's default reducer averages non-zero triplets only; the Revisiting-DML mean counts all.
    theirs = pml_losses.TripletMarginLoss(
        margin=0.2, reducer=pml_reducers.MeanReducer(),
        distance=LpDistance(power=2 if distance == "squared" else 1))
    assert_same(lambda z: ours(F.normalize(z, dim=1), labels),
                lambda z: theirs(z, labels, tuple(triplets.unbind(1))), raw)


def test_triplet_stats_count_generated_rows():
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    triplets = torch.tensor([[0, 1, 2], [0, 5, 2], [6, 3, 0], [1, 0, 3]])
    criterion = criteria.REGISTRY.get("triplet")(FixedMiner(triplets))
    embeddings = F.normalize(torch.randn(8, 4), dim=1)
    criterion(embeddings, labels, num_real=4)
    assert criterion.stats["tuples"].item() == 4
    assert criterion.stats["tuples_with_generated"].item() == 2
    criterion(embeddings, labels)
    assert criterion.stats["tuples_with_generated"].item() == 0


def test_triplet_hand_computed():
    # points on a line: d(a,p)=1, d(a,n)=1.1 -> relu(1 - 1.1 + 0.2) = 0.1; second triplet inactive
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.1], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    criterion = criteria.REGISTRY.get("triplet")(FixedMiner(torch.tensor([[0, 1, 2], [0, 1, 3]])),
                                                 distance="plain")
    assert math.isclose(criterion(embeddings, labels).item(), 0.05, rel_tol=1e-5)
    # published squared distances: relu(1 - 1.21 + 0.3) = 0.09 and 0 -> mean 0.045
    squared = criteria.REGISTRY.get("triplet")(FixedMiner(torch.tensor([[0, 1, 2], [0, 1, 3]])),
                                               margin=0.3)
    assert math.isclose(squared(embeddings, labels).item(), 0.045, rel_tol=1e-5)


# ---------------------------------------------------------------- multi-similarity


def test_multisimilarity_matches_pml_with_its_miner():
    raw, labels = raw_batch(num_classes=6, per_class=4, dim=8, seed=1)
    ours = criteria.REGISTRY.get("multisimilarity")(2.0, 40.0, 0.1, 0.5)
    pml_loss = pml_losses.MultiSimilarityLoss(alpha=2, beta=40, base=0.5)
    pml_miner = pml_miners.MultiSimilarityMiner(epsilon=0.1)
    assert_same(lambda z: ours(F.normalize(z, dim=1), labels),
                lambda z: pml_loss(z, labels, pml_miner(z, labels)), raw)
    # the formulas coincide only when every anchor keeps a positive and a negative
    assert ours.stats["valid_anchors"].item() == len(labels)


def test_multisimilarity_skips_anchors_with_an_empty_side():
    """Differs from PML on purpose: an anchor whose kept positives (or negatives) are empty adds
    nothing (Revisiting-DML / DAS code). Hand-computed on three points."""
    s = 0.3
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [s, math.sqrt(1 - s * s)]])
    labels = torch.tensor([0, 0, 1])
    ours = criteria.REGISTRY.get("multisimilarity")(2.0, 40.0, 0.1, 0.5)
    loss = ours(embeddings, labels)
    # anchors 0, 1: positive sim 1, negative sim 0.3 -> negative kept? 0.3 + 0.1 > 1 no -> skipped.
    # anchor 2: no positive -> skipped. Nothing valid -> 0.
    assert loss.item() == 0.0 and ours.stats["valid_anchors"].item() == 0
    # make the negative hard: sim 0.95 > 1 - 0.1 -> both sides kept for anchors 0 and 1
    s = 0.95
    embeddings[2] = torch.tensor([s, math.sqrt(1 - s * s)])
    loss = ours(embeddings, labels)
    expected = (1 / 2 * math.log(1 + math.exp(-2 * (1 - 0.5)))
                + 1 / 40 * math.log(1 + math.exp(40 * (s - 0.5))))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    assert ours.stats["tuples"].item() == 4  # (0,1), (0,2), (1,0), (1,2)


def test_multisimilarity_stats_and_bf16_input():
    labels = torch.arange(4).repeat(4)
    embeddings = F.normalize(torch.randn(16, 8), dim=1)
    ours = criteria.REGISTRY.get("multisimilarity")()
    loss32 = ours(embeddings, labels, num_real=4)
    stats = dict(ours.stats)
    loss16 = ours(embeddings.bfloat16(), labels, num_real=4)
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    used = stats["tuples"].item()
    assert 0 < stats["tuples_with_generated"].item() < used
    # only pairs among rows 0..3 are real-only: they are 4 rows of different classes (negatives)
    assert used - stats["tuples_with_generated"].item() <= 12


# ---------------------------------------------------------------- contrastive, margin


def test_contrastive_matches_pml_on_the_pairs_of_the_triplets():
    raw, labels = raw_batch(seed=2)
    triplets = all_triplets(labels)[::4]
    ours = criteria.REGISTRY.get("contrastive")(FixedMiner(triplets), pos_margin=0.3,
                                                neg_margin=1.2)
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.3, neg_margin=1.2,
                                        reducer=pml_reducers.MeanReducer())
    a, p, n = triplets.unbind(1)
    assert_same(lambda z: ours(F.normalize(z, dim=1), labels),
                lambda z: theirs(z, labels, (a, p, a, n)), raw)


def test_margin_matches_pml_including_the_beta_gradient():
    raw, labels = raw_batch(num_classes=4, per_class=3, dim=6, seed=3)
    triplets = all_triplets(labels)
    # PML divides by the number of active terms: our --loss_margin_divisor active_terms (the
    # default follows the published count of active triplets, tests/test_parity_losses_round2.py)
    ours = criteria.REGISTRY.get("margin")(FixedMiner(triplets), num_classes=4, margin=0.2,
                                           beta=1.2, divisor="active_terms").double()
    theirs = pml_losses.MarginLoss(margin=0.2, nu=0, beta=1.2, learn_beta=True, num_classes=4)
    betas = torch.tensor([1.1, 1.2, 1.3, 1.25], dtype=torch.float64)
    with torch.no_grad():
        ours.beta.copy_(betas)
        theirs.beta.data = betas.clone()
    assert_same(lambda z: ours(F.normalize(z, dim=1), labels),
                lambda z: theirs(z, labels, tuple(triplets.unbind(1))), raw)
    torch.testing.assert_close(ours.beta.grad, theirs.beta.grad.double(), rtol=1e-5, atol=1e-8)
    assert ours.param_groups() == [{"params": [ours.beta], "lr": 0.0005}]


def test_margin_beta_constant_and_nu():
    labels = torch.tensor([0, 0, 1, 1])
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.1], [0.0, 3.0]])
    triplets = torch.tensor([[0, 1, 2], [0, 1, 3]])
    constant = criteria.REGISTRY.get("margin")(FixedMiner(triplets), 2, beta_constant=True, nu=0.1)
    assert constant.param_groups() == [] and not list(constant.parameters())
    # d_ap = 1, d_an = 1.1, 3; beta 1.2, margin 0.2: pos 0, 0; neg 0.3, 0 -> one active term.
    # Published: nu x beta is added after the division, and a constant beta is a scalar.
    expected = 0.3 / 1 + 0.1 * 1.2
    assert math.isclose(constant(embeddings, labels).item(), expected, rel_tol=1e-5)
    learned = criteria.REGISTRY.get("margin")(FixedMiner(triplets), 2, nu=0.1)
    expected = 0.3 / 1 + 0.1 * 2 * 1.2  # learned beta: summed over the triplets' anchors
    assert math.isclose(learned(embeddings, labels).item(), expected, rel_tol=1e-5)


# ---------------------------------------------------------------- lifted, npair, angular


def test_lifted_matches_pml_generalized_lifted_structure():
    raw, labels = raw_batch(num_classes=4, per_class=3, dim=8, seed=4)
    raw = raw * 0.4  # unnormalized embeddings of moderate norm
    miner = batchminer.select("lifted", parse_options([]))
    # PML matches the corrected formulation only; the published default (norm over the wrong
    # axis) is pinned by a loop oracle in tests/test_parity_losses.py.
    ours = criteria.REGISTRY.get("lifted")(miner, neg_margin=1.0, l2_weight=0.0,
                                           formulation="corrected")
    theirs = pml_losses.GeneralizedLiftedStructureLoss(
        neg_margin=1.0, pos_margin=0, distance=pml_distances.LpDistance(normalize_embeddings=False))
    assert_same(lambda z: ours(z, labels), lambda z: theirs(z, labels), raw)


def test_lifted_and_npair_l2_regularizer_is_the_mean_norm():
    raw, labels = raw_batch(seed=5)
    opt = parse_options([])
    for name in ["lifted", "npair"]:
        miner = batchminer.select(name, opt)
        plain = criteria.REGISTRY.get(name)(miner, l2_weight=0.0)
        regularized = criteria.REGISTRY.get(name)(miner, l2_weight=0.005)
        torch.manual_seed(0)
        low = plain(raw, labels)
        torch.manual_seed(0)
        high = regularized(raw, labels)
        torch.testing.assert_close(high - low, 0.005 * raw.norm(dim=1).mean())


def npair_loop_oracle(x, anchors, positives, labels):
    """Per-anchor Python loop: log(1 + sum over other-class rows n of exp(a.n - a.p))."""
    total = 0.0
    for a, p in zip(anchors.tolist(), positives.tolist()):
        terms = [torch.dot(x[a], x[n]) - torch.dot(x[a], x[p])
                 for n in range(len(labels)) if labels[n] != labels[a]]
        total = total + torch.log(1 + torch.exp(torch.stack(terms)).sum())
    return total / len(anchors)


def test_npair_matches_a_loop_oracle():
    """PML's NPairsLoss takes one pair per class and the other pairs' positives as negatives;
    Revisiting-DML's (this one) takes every other-class row, so a loop oracle checks it."""
    raw, labels = raw_batch(num_classes=4, per_class=3, dim=6, seed=6)
    miner = batchminer.select("npair", parse_options([]))
    torch.manual_seed(0)
    anchors, positives, negatives = miner(raw, labels)
    fixed = FixedMiner((anchors, positives, negatives))
    ours = criteria.REGISTRY.get("npair")(fixed, l2_weight=0.0)
    assert_same(lambda z: ours(z, labels),
                lambda z: npair_loop_oracle(z, anchors, positives, labels), raw)


def test_angular_part_matches_pml_angular_loss():
    """angular(lambda=1, l2=0) - npair(l2=0) is the angular term alone, which PML computes with
    the same pairs and every other-class row as negatives. PML normalizes anchors and positives
    but not the negatives (Revisiting-DML and the paper normalize all three), so both sides get
    normalized rows here."""
    raw, labels = raw_batch(num_classes=5, per_class=3, dim=8, seed=7)
    miner = batchminer.select("npair", parse_options([]))
    torch.manual_seed(0)
    anchors, positives, negatives = miner(raw, labels)
    fixed = FixedMiner((anchors, positives, negatives))
    angular = criteria.REGISTRY.get("angular")(fixed, alpha_degrees=45, angular_weight=1.0,
                                               l2_weight=0.0)
    npair = criteria.REGISTRY.get("npair")(fixed, l2_weight=0.0)
    theirs = pml_losses.AngularLoss(alpha=45)
    some_negative = (labels != labels[0]).nonzero()[:1, 0]
    pml_pairs = (anchors, positives, anchors[:1], some_negative)
    assert_same(lambda z: (angular(F.normalize(z, dim=1), labels)
                           - npair(F.normalize(z, dim=1), labels)),
                lambda z: theirs(F.normalize(z, dim=1), labels, pml_pairs), raw)


# ---------------------------------------------------------------- quadruplet, snr, histogram


def test_quadruplet_hand_computed():
    # classes 0 (rows 0, 1), 1 (row 2), 2 (row 3): the fourth row for (0, 1, 2) can only be 3
    embeddings = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 2])
    ours = criteria.REGISTRY.get("quadruplet")(FixedMiner(torch.tensor([[0, 1, 2]])), 0.2, 0.3,
                                               fourth_by_class=True)
    # relu(0.5 - 0.6 + 0.2) + relu(0.5 - d(2, 3) + 0.3) = 0.1 + relu(0.5 - 0.4 + 0.3) = 0.1 + 0.4
    assert math.isclose(ours(embeddings, labels).item(), 0.5, rel_tol=1e-5)
    assert ours.stats["tuples"].item() == 1
    ours(embeddings, labels, num_real=3)  # row 3 (the fourth) is generated
    assert ours.stats["tuples_with_generated"].item() == 1


def test_snr_matches_pml_snr_distance_triplets():
    raw, labels = raw_batch(seed=8)
    triplets = all_triplets(labels)[::5]
    ours = criteria.REGISTRY.get("snr")(FixedMiner(triplets), margin=0.2, reg_lambda=0.0)
    # published: mean over the non-zero terms, PML's default AvgNonZeroReducer
    theirs = pml_losses.TripletMarginLoss(margin=0.2, distance=pml_distances.SNRDistance())
    assert_same(lambda z: ours(F.normalize(z, dim=1), labels),
                lambda z: theirs(z, labels, tuple(triplets.unbind(1))), raw)
    # the regularizer: reg_lambda x mean over the triplets' anchors of |sum of the entries|
    regularized = criteria.REGISTRY.get("snr")(FixedMiner(triplets), margin=0.2, reg_lambda=0.5)
    x = F.normalize(raw, dim=1)
    torch.testing.assert_close(regularized(x, labels) - ours(x, labels),
                               0.5 * x[triplets[:, 0]].sum(1).abs().mean())


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # inside PML's HistogramLoss
def test_histogram_matches_pml():
    """Revisiting-DML's nbins counts nodes; PML's n_bins counts intervals (nodes - 1)."""
    raw, labels = raw_batch(num_classes=4, per_class=5, dim=4, seed=9)
    ours = criteria.REGISTRY.get("histogram")(num_bins=21)
    theirs = pml_losses.HistogramLoss(n_bins=20)
    assert_same(lambda z: ours(F.normalize(z, dim=1), labels), lambda z: theirs(z, labels), raw,
                rtol=1e-5)
    assert ours.stats["tuples"].item() == 20 * 19 // 2


def test_histogram_hand_computed():
    # 3 nodes at -1, 0, 1. Positive pair similarity 0.5 -> half on node 0, half on node 1;
    # negative pairs at 0 (node 0) -> loss = h_neg . cumsum(h_pos) = 1 x 0.5
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    ours = criteria.REGISTRY.get("histogram")(num_bins=3)
    assert math.isclose(ours(embeddings, labels).item(), 0.5, rel_tol=1e-5)


# ---------------------------------------------------------------- proxy and classification losses


def test_proxynca_matches_a_loop_oracle():
    """Own proxy excluded from the denominator (as in the paper and Revisiting-DML); PML's
    ProxyNCALoss keeps it, so a loop oracle checks ours."""
    raw, labels = raw_batch(num_classes=4, per_class=2, dim=6, seed=10)
    ours = criteria.REGISTRY.get("proxynca")(num_classes=4, embed_dim=6, lr=0.1).double()
    proxies = ours.proxies.detach().clone()

    def oracle(z):
        total = 0.0
        for x, y in zip(F.normalize(z, dim=1), labels.tolist()):
            d = [((3 * x - 3 * F.normalize(p, dim=0)) ** 2).sum() for p in proxies]
            others = torch.stack([-d[c] for c in range(4) if c != y])
            total = total + d[y] + torch.logsumexp(others, dim=0)
        return total / len(labels)

    assert_same(lambda z: ours(z, labels), oracle, raw)
    assert ours.param_groups()[0]["lr"] == 0.1


def test_proxyanchor_matches_pml_including_the_proxy_gradient(opt):
    raw, labels = raw_batch(num_classes=6, per_class=2, dim=8, seed=11)
    labels = labels[:8]  # classes 4 and 5 have no positive in the batch
    raw = raw[:8]
    ours = criteria.REGISTRY.get("proxyanchor")(6, 8, margin=0.1, alpha=32).double()
    theirs = pml_losses.ProxyAnchorLoss(6, 8, margin=0.1, alpha=32)
    theirs.proxies.data = ours.proxies.detach().clone()
    assert_same(lambda z: ours(z, labels), lambda z: theirs(z, labels), raw, rtol=1e-5)
    torch.testing.assert_close(ours.proxies.grad, theirs.proxies.grad, rtol=1e-4, atol=1e-8)
    built = criteria.select("proxyanchor", opt, 6)
    assert built.param_groups()[0]["lr"] == opt.lr * 100


def test_softtriple_matches_pml_and_the_regularizer_by_hand():
    raw, labels = raw_batch(num_classes=3, per_class=3, dim=5, seed=12)
    ours = criteria.REGISTRY.get("softtriplet")(3, 5, centers_per_class=2, margin_delta=0.01,
                                                gamma=0.1, lam=8, reg_weight=0.0).double()
    theirs = pml_losses.SoftTripleLoss(3, 5, centers_per_class=2, la=8, gamma=0.1, margin=0.01)
    theirs.fc.data = ours.centers.detach().clone().T.contiguous()
    assert_same(lambda z: ours(z, labels), lambda z: theirs(z, labels), raw, rtol=1e-5)
    ours.reg_weight = 0.2
    w = F.normalize(ours.centers.detach(), dim=1)
    pairs = [(0, 1), (2, 3), (4, 5)]  # the two centers of each class
    regularizer = sum(torch.sqrt(2 + 1e-5 - 2 * w[i] @ w[j]) for i, j in pairs) / (3 * 2 * 1)
    x = raw.detach()
    with torch.no_grad():
        difference = ours(x, labels)
        ours.reg_weight = 0.0
        difference = difference - ours(x, labels)
    torch.testing.assert_close(difference, 0.2 * regularizer)


def test_arcface_matches_pml():
    raw, labels = raw_batch(num_classes=5, per_class=2, dim=8, seed=13)
    # PML follows the paper: our --loss_arcface_formulation paper (the default follows the
    # published loss, tests/test_parity_losses_round2.py)
    ours = criteria.REGISTRY.get("arcface")(5, 8, angular_margin=0.5, feature_scale=16,
                                            formulation="paper").double()
    theirs = pml_losses.ArcFaceLoss(5, 8, margin=math.degrees(0.5), scale=16)
    theirs.W.data = ours.class_weights.detach().clone().T.contiguous()
    assert_same(lambda z: ours(z, labels), lambda z: theirs(z, labels), raw, rtol=1e-5)


def test_normalized_softmax_matches_pml():
    raw, labels = raw_batch(num_classes=5, per_class=2, dim=8, seed=14)
    ours = criteria.REGISTRY.get("softmax")(5, 8, temperature=0.05).double()
    theirs = pml_losses.NormalizedSoftmaxLoss(5, 8, temperature=0.05)
    theirs.W.data = ours.class_weights.detach().clone().T.contiguous()
    assert_same(lambda z: ours(z, labels), lambda z: theirs(z, labels), raw, rtol=1e-5)


def test_proxy_losses_count_generated_rows(opt):
    labels = torch.arange(4).repeat(3)
    embeddings = F.normalize(torch.randn(12, opt.embed_dim), dim=1)
    for name in ["proxynca", "proxyanchor", "softtriplet", "arcface", "softmax"]:
        criterion = criteria.select(name, opt, 4)
        loss = criterion(embeddings.bfloat16(), labels, num_real=4)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name
        assert criterion.stats["tuples"].item() == 12, name
        assert criterion.stats["tuples_with_generated"].item() == 8, name
        assert criterion.param_groups() and all(g["lr"] > 0 for g in criterion.param_groups())


# ---------------------------------------------------------------- adversarial separation


def test_adversarial_separation_reverses_the_gradient_into_the_embedding(opt):
    torch.manual_seed(0)
    criterion = criteria.REGISTRY.get("adversarial_separation")(FixedMiner(None), embed_dim=6,
                                                               weight=1.0, proj_dim=8)
    x = F.normalize(torch.randn(5, 6), dim=1).requires_grad_(True)
    criterion.separation(x).backward()
    reversed_grad = x.grad.clone()
    regressor_grad = criterion.regressor[0].weight.grad.clone()
    # the same expression without the reversal layer
    x.grad = None
    criterion.zero_grad()
    source = F.normalize(x[:, :3], dim=1)
    target = F.normalize(x[:, 3:], dim=1)
    plain = -(target * F.normalize(criterion.regressor(source), dim=1)).pow(2).mean()
    plain.backward()
    torch.testing.assert_close(reversed_grad, -x.grad)
    torch.testing.assert_close(regressor_grad, criterion.regressor[0].weight.grad)
    built = criteria.select("adversarial_separation", opt, 4, batchminer.select("distance", opt))
    group = built.param_groups()[0]
    assert group["lr"] == opt.loss_adversarial_separation_lr
    assert sum(p.numel() for p in group["params"]) == sum(
        p.numel() for p in built.regressor.parameters())


def test_all_tuple_criteria_count_generated_rows(opt):
    torch.manual_seed(0)
    labels = torch.arange(6).repeat_interleave(2).repeat(4)
    embeddings = F.normalize(torch.randn(len(labels), opt.embed_dim), dim=1)
    for name in criteria.REGISTRY.names():
        member = criteria.REGISTRY.get(name)
        accepted = member.accepted_miners
        miner_name = "semihard" if "semihard" in accepted else accepted[0] if accepted else None
        miner = batchminer.select(miner_name, opt) if member.requires_miner else None
        criterion = criteria.select(name, opt, 6, miner)
        loss = criterion(embeddings, labels, num_real=24)
        assert torch.isfinite(loss), name
        tuples = criterion.stats["tuples"]
        with_generated = criterion.stats["tuples_with_generated"]
        assert tuples.dim() == 0 and not tuples.requires_grad, name
        assert 0 < with_generated.item() <= tuples.item(), name
        if name != "quadruplet":  # its random fourth row is most often generated
            assert with_generated.item() < tuples.item(), name
        criterion(embeddings, labels)
        assert criterion.stats["tuples_with_generated"].item() == 0, name


def test_criteria_compute_in_float32_inside_bf16_autocast(opt):
    """The training loop calls the criterion inside its autocast region; the loss must not be
    computed in bf16 (bf16 matmuls move the multi-similarity loss here by about 1e-4)."""
    torch.manual_seed(0)
    labels = torch.arange(8).repeat(4)
    embeddings = F.normalize(torch.randn(32, opt.embed_dim), dim=1)
    for name in ["multisimilarity", "proxyanchor", "histogram"]:
        criterion = criteria.select(name, opt, 8)
        reference = criterion(embeddings, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = criterion(embeddings, labels)
        assert inside.dtype == torch.float32, name
        torch.testing.assert_close(inside, reference, rtol=1e-6, atol=1e-6)


def test_accepted_miners_follow_from_the_miners_output(monkeypatch):
    """A criterion accepts exactly the miners returning what it consumes: a new triplet miner is
    accepted by every triplet criterion without any list to edit."""
    from batchminer._base import TRIPLETS, BaseMiner
    for name in batchminer.REGISTRY.names():
        assert batchminer.REGISTRY.get(name).output, name  # every miner says what it returns
    with batchminer.REGISTRY.scoped():
        batchminer.REGISTRY.register("zz_new_triplets")(
            type("NewMiner", (BaseMiner,), {"output": TRIPLETS}))
        for name in criteria.REGISTRY.names():
            member = criteria.REGISTRY.get(name)
            assert (("zz_new_triplets" in member.accepted_miners)
                    == (member.miner_output == TRIPLETS))
        assert criteria.REGISTRY.get("triplet").accepted_miners[-1] == "zz_new_triplets"
    assert "zz_new_triplets" not in batchminer.REGISTRY


def test_every_member_option_is_collected_once():
    """parameters.py collects each criterion's, miner's and sampler's declared options, each
    option once, and every --loss_/--miner_ option is declared by a registered member."""
    import datasampler
    import parameters
    parser = parameters.build_parser()
    names = [s for action in parser._actions for s in action.option_strings]
    assert len(names) == len(set(names))
    for registry in (criteria.REGISTRY, batchminer.REGISTRY, datasampler.REGISTRY):
        for name in registry.names():
            for option in registry.get(name).options:
                assert option.names[0] in names, (name, option)
    declared = {option.names[0] for registry in (criteria.REGISTRY, batchminer.REGISTRY)
                for name in registry.names() for option in registry.get(name).options}
    assert {n for n in names if n.startswith(("--loss_", "--miner_"))} == declared
