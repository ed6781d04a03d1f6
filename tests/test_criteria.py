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
from utilities.registry import UnknownNameError

torch.set_default_dtype(torch.float32)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread avoids thread contention on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def opt():
    return parse_options([])


class FixedMiner:
    """Returns the tuples it was given, so that both implementations see the same ones."""

    registry_name = "fixed"

    def __init__(self, tuples):
        self.tuples = tuples
        self.stats = {}

    def __call__(self, embeddings, labels, distances=None):
        return self.tuples


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
    miner = batchminer.select("distance", opt)
    miner.registry_name = "npair"  # pretend: a miner triplet does not accept
    with pytest.raises(ValueError, match="criterion 'triplet' does not accept --batch_mining npair; "
                                         "accepted: random, semihard"):
        criteria.select("triplet", opt, 10, miner)


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


def test_triplet_matches_pml_on_the_same_triplets():
    raw, labels = raw_batch()
    triplets = all_triplets(labels)[::3]
    ours = criteria.REGISTRY.get("triplet")(FixedMiner(triplets), margin=0.2)
    # PML's default reducer averages non-zero triplets only; the Revisiting-DML mean counts all.
    theirs = pml_losses.TripletMarginLoss(margin=0.2, reducer=pml_reducers.MeanReducer())
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
    criterion = criteria.REGISTRY.get("triplet")(FixedMiner(torch.tensor([[0, 1, 2], [0, 1, 3]])))
    assert math.isclose(criterion(embeddings, labels).item(), 0.05, rel_tol=1e-5)


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
