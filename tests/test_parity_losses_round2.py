"""Parity, round two (issue 24, items 1, 3, 4, 5): the margin, quadruplet and arcface losses
against loops written from the published modules' exact tensor semantics (bool + bool is a
logical OR in torch; a (T, 1, D) tensor minus a (T, D) one broadcasts to T x T pairs; a row
constant added to every logit cancels in the softmax), compared with our defaults in float32 and
float64, loss and gradient, to 1e-5 relative; one test per named option that switches to the
other form; and, for every criterion that differentiates through distances, the float32 gradient
on a DAS-like batch (generated rows about 0.01 from their real row) against float64.
docs/PARITY.md gives the worked examples."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import batchminer
import criteria
import criteria.quadruplet as quadruplet_module
from batchminer._functional import pairwise_distances
from parameters import parse_options
from tests.fixtures import FixedMiner

pytestmark = pytest.mark.usefixtures("single_thread")

DTYPES = [torch.float32, torch.float64]


def batch(num_classes=10, per_class=3, dim=16, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    x = F.normalize(torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), dim=1)
    return x.to(dtype), labels


def mined_triplets(x, labels, miner="distance", seed=0):
    torch.manual_seed(seed)
    return batchminer.select(miner, parse_options([]))(x.float(), labels)


def grads(loss_fn, x, *params):
    """Loss and the gradients of x and of ``params`` (each zeroed first)."""
    x = x.detach().clone().requires_grad_()
    for p in params:
        p.grad = None
    loss = loss_fn(x)
    loss.backward()
    return [loss.detach(), x.grad] + [p.grad.clone() for p in params]


def assert_all_close(ours, theirs, rtol=1e-5):
    for index, (a, b) in enumerate(zip(ours, theirs)):
        scale = b.abs().max().clamp_min(1e-30)
        error = (a - b).abs().max() / scale
        assert error <= rtol, (index, float(error))


# ------------------------------------------------------------------ item 1: margin


def published_margin_loop(x, labels, triplets, beta, margin, nu, beta_constant=False):
    """The published calculate_margin_distance_loss: per triplet sqrt(|a-p|^2 + 1e-8), the
    anchor's beta, then ``sum((pos > 0) + (neg > 0))`` on bool tensors as the divisor."""
    d_ap, d_an, betas = [], [], []
    for a, p, n in triplets.tolist():
        d_ap.append(((x[a] - x[p]).pow(2).sum() + 1e-8).pow(0.5))
        d_an.append(((x[a] - x[n]).pow(2).sum() + 1e-8).pow(0.5))
        betas.append(beta[labels[a]])
    d_ap, d_an = torch.stack(d_ap), torch.stack(d_an)
    beta_t = beta[0] if beta_constant else torch.stack(betas)
    pos = F.relu(d_ap - beta_t + margin)
    neg = F.relu(beta_t - d_an + margin)
    count = torch.sum((pos > 0.0) + (neg > 0.0))  # bool + bool: torch's logical OR
    loss = (pos + neg).sum() if count == 0 else (pos + neg).sum() / count
    if nu:
        loss = loss + nu * beta_t.sum()
    return loss


def test_bool_plus_bool_is_a_logical_or_in_torch():
    """The quirk of item 1, pinned on torch itself: the published divisor counts triplets."""
    pos = torch.tensor([True, True, False])
    neg = torch.tensor([True, False, False])
    assert (pos + neg).dtype == torch.bool and int(torch.sum(pos + neg)) == 2


def margin_setup(dtype, seed=1):
    x, labels = batch(seed=seed, dtype=dtype)
    triplets = mined_triplets(x, labels)
    betas = torch.linspace(0.45, 0.75, 10, dtype=dtype)  # many triplets with one active term
    return x, labels, triplets, betas


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nu", [0.0, 0.1])
def test_margin_default_matches_the_published_loop(dtype, nu):
    x, labels, triplets, betas = margin_setup(dtype)
    ours = criteria.REGISTRY.get("margin")(FixedMiner(triplets), 10, margin=0.2, nu=nu).to(dtype)
    with torch.no_grad():
        ours.beta.copy_(betas)
    reference = nn.Parameter(betas.clone())
    assert ours.divisor == "active_triplets"
    got = grads(lambda z: ours(z, labels), x, ours.beta)
    expected = grads(lambda z: published_margin_loop(z, labels, triplets, reference, 0.2, nu),
                     x, reference)
    assert_all_close(got, expected)
    # the batch separates the two counts: both terms active on some triplets, one on others
    d = pairwise_distances(x.double())
    a, p, n = triplets.unbind(1)
    pos = d[a, p] - betas.double()[labels[a]] + 0.2 > 0
    neg = betas.double()[labels[a]] - d[a, n] + 0.2 > 0
    assert (pos & neg).any() and (pos ^ neg).any()
    assert ours.stats["active"] == (pos | neg).sum()


@pytest.mark.parametrize("dtype", DTYPES)
def test_margin_constant_beta_matches_the_published_loop(dtype):
    x, labels, triplets, _ = margin_setup(dtype, seed=2)
    ours = criteria.REGISTRY.get("margin")(FixedMiner(triplets), 10, margin=0.2, beta=0.6,
                                           nu=0.05, beta_constant=True)
    beta = torch.full((10,), 0.6, dtype=dtype)
    got = grads(lambda z: ours(z, labels), x)
    expected = grads(lambda z: published_margin_loop(z, labels, triplets, beta, 0.2, 0.05,
                                                     beta_constant=True), x)
    assert_all_close(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_margin_active_terms_option_divides_by_the_active_terms(dtype):
    x, labels, triplets, betas = margin_setup(dtype)
    opt = parse_options(["--loss", "margin", "--batch_mining", "distance",
                         "--loss_margin_divisor", "active_terms"])
    ours = criteria.select("margin", opt, 10, batchminer.select("distance", opt)).to(dtype)
    ours.miner = FixedMiner(triplets)
    assert ours.divisor == "active_terms"
    with torch.no_grad():
        ours.beta.copy_(betas)
    reference = nn.Parameter(betas.clone())

    def per_term_loop(z):
        terms = []
        for a, p, n in triplets.tolist():
            b = reference[labels[a]]
            terms += [F.relu((z[a] - z[p]).pow(2).sum().add(1e-8).sqrt() - b + 0.2),
                      F.relu(b - (z[a] - z[n]).pow(2).sum().add(1e-8).sqrt() + 0.2)]
        terms = torch.stack(terms)
        return terms.sum() / (terms > 0).sum()

    got = grads(lambda z: ours(z, labels), x, ours.beta)
    assert_all_close(got, grads(per_term_loop, x, reference))
    published = grads(lambda z: published_margin_loop(z, labels, triplets, reference, 0.2, 0.0),
                      x, reference)
    assert (got[0] - published[0]).abs() > 0.05 * published[0]  # the option changes the loss


# ------------------------------------------------------------------ item 4: quadruplet


def quadruplet_setup(dtype, monkeypatch, seed=3):
    """T = B triplets (the published draw needs it) and a fixed fourth row per triplet, drawn
    by the published rule (a triplet index whose negative differs)."""
    x, labels = batch(num_classes=6, per_class=3, dim=8, seed=seed, dtype=dtype)
    triplets = mined_triplets(x, labels, seed=seed)
    assert len(triplets) == len(labels)
    negatives = triplets[:, 2]
    generator = torch.Generator().manual_seed(seed)
    fourth = torch.tensor([int(torch.nonzero(negatives != negatives[i]).squeeze(1)[
        torch.randint(int((negatives != negatives[i]).sum()), (1,), generator=generator)])
        for i in range(len(triplets))])
    monkeypatch.setattr(quadruplet_module, "random_choice",
                        lambda mask: (fourth, torch.ones(len(mask), dtype=torch.bool)))
    return x, labels, triplets, fourth


def published_quadruplet_loop(x, triplets, fourth, alpha_1, alpha_2):
    """The published forward with its broadcast written out: the second term pairs triplet i's
    (a, p, n) with **every** triplet j's fourth row and averages over the T x T pairs."""
    first, second = [], []
    for a, p, n in triplets.tolist():
        first.append(F.relu((x[a] - x[p]).norm() - (x[a] - x[n]).norm() + alpha_1))
        for m in fourth.tolist():
            second.append(F.relu((x[a] - x[p]).norm() - (x[n] - x[m]).norm() + alpha_2))
    return torch.stack(first).mean() + torch.stack(second).mean()


def test_published_quadruplet_indexing_broadcasts_to_all_pairs():
    """The published shapes, on torch itself: (T, 1) index arrays give (T, 1, D) rows, a list of
    T indices gives (T, D), and the norm of their difference is T x T."""
    x, _ = batch(num_classes=4, per_class=2, dim=5)
    negatives = torch.tensor([2, 4, 6, 0, 1, 3, 5, 7]).reshape(-1, 1)
    fourth = [1, 0, 3, 2, 5, 4, 7, 6]
    assert torch.norm(x[negatives, :] - x[fourth, :], p=2, dim=-1).shape == (8, 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quadruplet_default_matches_the_published_loop(dtype, monkeypatch):
    x, labels, triplets, fourth = quadruplet_setup(dtype, monkeypatch)
    ours = criteria.REGISTRY.get("quadruplet")(FixedMiner(triplets), 0.2, 0.3)
    assert ours.second_term == "all_pairs"
    got = grads(lambda z: ours(z, labels), x)
    expected = grads(lambda z: published_quadruplet_loop(z, triplets, fourth, 0.2, 0.3), x)
    assert_all_close(got, expected)
    own = criteria.REGISTRY.get("quadruplet")(FixedMiner(triplets), 0.2, 0.3,
                                              second_term="own_fourth")
    assert (own(x, labels) - got[0]).abs() > 0.01  # the option makes a difference here


def test_quadruplet_second_term_option_is_parsed():
    opt = parse_options(["--loss", "quadruplet", "--batch_mining", "distance",
                         "--loss_quadruplet_second_term", "own_fourth"])
    built = criteria.select("quadruplet", opt, 10, batchminer.select("distance", opt))
    assert built.second_term == "own_fourth"
    assert parse_options([]).loss_quadruplet_second_term == "all_pairs"


# ------------------------------------------------------------------ item 5: arcface


def published_arcface_loop(x, labels, class_weights, margin, scale):
    """The published forward, row by row: clamp every cosine to [1e-10, 1 - 1e-10], add the own
    class's correction cos(theta + m) - cos(theta) to **every** logit, cross-entropy."""
    w = F.normalize(class_weights, dim=1)
    losses = []
    for i in range(len(labels)):
        cos = (w @ x[i]).clamp(min=1e-10, max=1 - 1e-10)
        own = cos[labels[i]]
        correction = torch.cos(torch.acos(own) + margin) - own
        logits = scale * (cos + correction)
        losses.append(torch.logsumexp(logits, 0) - logits[labels[i]])
    return torch.stack(losses).mean()


def arcface_pair(dtype, formulation="published", seed=4):
    torch.manual_seed(seed)
    ours = criteria.REGISTRY.get("arcface")(6, 8, angular_margin=0.5, feature_scale=16,
                                            formulation=formulation).to(dtype)
    reference = nn.Parameter(ours.class_weights.detach().clone())
    x, labels = batch(num_classes=6, per_class=4, dim=8, seed=seed, dtype=dtype)
    return ours, reference, x, labels


@pytest.mark.parametrize("dtype", DTYPES)
def test_arcface_default_matches_the_published_loop(dtype):
    ours, reference, x, labels = arcface_pair(dtype)
    got = grads(lambda z: ours(z, labels), x, ours.class_weights)
    expected = grads(lambda z: published_arcface_loop(z, labels, reference, 0.5, 16.0),
                     x, reference)
    assert_all_close(got, expected)
    # its loss is the cross-entropy of the scaled clamped cosines, without margin
    cosine = x @ F.normalize(reference.detach(), dim=1).T
    plain = F.cross_entropy(16 * cosine.clamp(1e-10, 1 - 1e-10), labels)
    torch.testing.assert_close(got[0], plain)
    assert (cosine < 0).any()  # so the clamp at 1e-10 is exercised


@pytest.mark.parametrize("dtype", DTYPES)
def test_arcface_paper_option_puts_the_margin_on_the_own_logit(dtype):
    ours, reference, x, labels = arcface_pair(dtype, formulation="paper")

    def paper_loop(z):
        w = F.normalize(reference, dim=1)
        losses = []
        for i in range(len(labels)):
            cos = (w @ z[i]) / z[i].norm()
            theta = torch.acos(cos[labels[i]].clamp(-1 + 1e-7, 1 - 1e-7))
            logits = torch.cat([cos[:labels[i]], torch.cos(theta + 0.5)[None],
                                cos[labels[i] + 1:]]) * 16
            losses.append(torch.logsumexp(logits, 0) - logits[labels[i]])
        return torch.stack(losses).mean()

    got = grads(lambda z: ours(z, labels), x, ours.class_weights)
    assert_all_close(got, grads(paper_loop, x, reference))
    opt = parse_options(["--loss", "arcface", "--loss_arcface_formulation", "paper"])
    assert criteria.select("arcface", opt, 6).formulation == "paper"
    assert parse_options([]).loss_arcface_formulation == "published"


# ------------------------------------------------- item 3: float32 gradients on a DAS-like batch


def das_like_batch(real_classes=28, copies=3, dim=128, seed=5, normalized=True):
    """Real rows (2 per class) followed by ``copies`` generated rows per real row: each entry
    scaled by a factor in [0.99, 1.01) as DAS's DFS does, then renormalized (about 0.006-0.01
    from the real row); unnormalized variant: real rows of norm 1 to 3."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(real_classes).repeat_interleave(2)
    real = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    real = F.normalize(real, dim=1)
    if not normalized:
        real = real * (1 + 2 * torch.rand(len(labels), 1, generator=generator,
                                          dtype=torch.float64))
    scale = 0.99 + 0.02 * torch.rand(copies, *real.shape, generator=generator,
                                     dtype=torch.float64)
    generated = (real[None] * scale).reshape(-1, dim)
    if normalized:
        generated = F.normalize(generated, dim=1)
    x = torch.cat([real, generated]).float()  # float32 rows; float64 computes on the same values
    return x, labels.repeat(copies + 1)


def relative_gradient_error(loss_fn, x, stop=None):
    """||g32 - g64|| / ||g64|| for the same float32 input rows computed in float32 and float64."""
    g = {}
    for dtype in DTYPES:
        z = x.detach().to(dtype).clone().requires_grad_()
        loss_fn(z).backward()
        g[dtype] = z.grad.double()
    return float((g[torch.float32] - g[torch.float64]).norm() / g[torch.float64].norm())


TRIPLET_CASES = [
    ("triplet", dict(distance="squared")),
    ("triplet", dict(distance="plain")),
    ("contrastive", dict()),
    ("margin", dict(num_classes=28, beta=0.1)),  # beta < margin: near-duplicate pairs active
    ("snr", dict(reg_lambda=0.005)),
    ("quadruplet", dict()),
    ("quadruplet", dict(second_term="own_fourth")),
]


@pytest.mark.parametrize("name,kwargs", TRIPLET_CASES, ids=lambda v: str(v))
def test_float32_gradient_is_accurate_on_near_duplicate_rows(name, kwargs, monkeypatch):
    x, labels = das_like_batch()
    distances = pairwise_distances(x.double())
    nearest = distances[:56, 56:].min(dim=1).values
    assert 0.002 < float(nearest.median()) < 0.02  # generated rows about 0.01 from their row
    triplets = mined_triplets(x, labels)
    assert (distances[triplets[:, 0], triplets[:, 1]] < 0.02).sum() > 10  # near-duplicate pairs
    generator = torch.Generator().manual_seed(0)
    fourth = torch.randint(len(labels), (len(triplets),), generator=generator)
    monkeypatch.setattr(quadruplet_module, "random_choice",
                        lambda mask: (fourth, torch.ones(len(mask), dtype=torch.bool)))
    criterion = criteria.REGISTRY.get(name)(FixedMiner(triplets), **kwargs)

    def loss_fn(z):
        return criterion.to(z.dtype)(z, labels)

    assert relative_gradient_error(loss_fn, x) <= 1e-4


def test_the_das_like_batch_defeats_the_one_product_distance_matrix():
    """The check above can fail: the contrastive gradient through the float32 one-product
    distance matrix (our code before issue 24) is off by far more than 1e-4 on this batch."""
    x, labels = das_like_batch()
    a, p, n = mined_triplets(x, labels).unbind(1)

    def old_contrastive(z):
        d = pairwise_distances(z)
        return F.relu(d[a, p]).mean() + F.relu(1.0 - d[a, n]).mean()

    assert relative_gradient_error(old_contrastive, x) > 1e-3


def lifted_batch(offset):
    """Unnormalized DAS-like rows, off-centre by ``offset``, where class 0 drew the same image
    twice (class_random draws with replacement): its positives are all near-duplicates."""
    x, labels = das_like_batch(normalized=False, seed=7)
    x = x.double().view(4, 56, -1)
    generator = torch.Generator().manual_seed(1)
    x[0, 1] = x[0, 0]
    for copy in range(1, 4):
        x[copy, 1] = x[0, 0] * (0.99 + 0.02 * torch.rand(x.shape[-1], generator=generator,
                                                       dtype=torch.float64))
    return (x.reshape(224, -1) + offset).float(), labels


@pytest.mark.parametrize("offset", [0.0, 3.0])
@pytest.mark.parametrize("formulation", ["published", "corrected"])
def test_lifted_float32_gradient_is_accurate_on_near_duplicate_rows(formulation, offset):
    x, labels = lifted_batch(offset)
    tuples = batchminer.select("lifted", parse_options([]))(x, labels)
    criterion = criteria.REGISTRY.get("lifted")(FixedMiner(tuples), 1.0, 0.005, formulation)
    assert relative_gradient_error(lambda z: criterion(z, labels), x) <= 1e-4


def test_adversarial_separation_float32_gradient_is_accurate_on_near_duplicate_rows():
    x, labels = das_like_batch()
    triplets = mined_triplets(x, labels)
    torch.manual_seed(0)
    criterion = criteria.REGISTRY.get("adversarial_separation")(FixedMiner(triplets), 128,
                                                               weight=0.0, proj_dim=8)
    assert relative_gradient_error(lambda z: criterion.to(z.dtype)(z, labels), x) <= 1e-4


def test_contrastive_default_matches_the_published_pairwise_distance_loop():
    """The published contrastive loss calls nn.PairwiseDistance (|x - y + 1e-6|); ours agrees
    on a DAS-like batch in float64 to 1e-5 (before issue 24: 9e-4, from the missing eps)."""
    x, labels = das_like_batch()
    triplets = mined_triplets(x, labels)
    criterion = criteria.REGISTRY.get("contrastive")(FixedMiner(triplets), 0.0, 1.0)
    a, p, n = (t.tolist() for t in triplets.unbind(1))

    def published(z):
        distance = nn.PairwiseDistance(p=2)
        return (F.relu(distance(z[a, :], z[p, :]) - 0.0).mean()
                + F.relu(1.0 - distance(z[a, :], z[n, :])).mean())

    for dtype in DTYPES:
        z = x.to(dtype)
        assert_all_close(grads(lambda v: criterion(v, labels), z),
                         grads(published, z))
    assert math.isfinite(float(criterion(x, labels)))


def test_identical_rows_at_two_indices_get_no_spurious_gradient():
    """An image drawn twice gives identical rows: their distance is 0 with zero gradient (as
    ``torch.norm`` of a zero difference), not the float64 residue's arbitrary direction."""
    from criteria._functional import accurate_pairwise_distances
    x, _ = batch(num_classes=3, per_class=2, dim=8, dtype=torch.float32)
    x = torch.cat([x[:1], x]).requires_grad_()  # rows 0 and 1 identical
    distances = accurate_pairwise_distances(x)
    assert distances[0, 1] == 0 and distances[1, 0] == 0
    distances[0, 1].backward()
    assert torch.all(x.grad == 0)
    reference = x.detach().clone().requires_grad_()
    accurate_pairwise_distances(x)[0, 2].backward()
    (reference[0] - reference[2]).norm().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_parity_worked_examples():
    """docs/PARITY.md's margin and ArcFace examples."""
    # margin: a = 0; triplet 1 (p at 1.5, n at 1.2), triplet 2 (p at 0.8, n at 1.1)
    x = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.2], [-0.8, 0.0], [0.0, -1.1]])
    labels = torch.tensor([0, 0, 1, 0, 1])
    triplets = torch.tensor([[0, 1, 2], [0, 3, 4]])
    margin = criteria.REGISTRY.get("margin")
    published = margin(FixedMiner(triplets), 2, margin=0.2, beta=1.2, beta_constant=True)
    per_term = margin(FixedMiner(triplets), 2, margin=0.2, beta=1.2, beta_constant=True,
                      divisor="active_terms")
    assert math.isclose(published(x, labels).item(), 0.5, rel_tol=1e-5)
    assert math.isclose(per_term(x, labels).item(), 1.0 / 3.0, rel_tol=1e-5)
    # arcface: cosines 0.8 (own class 0) and 0.3 (class 1)
    embedding = torch.tensor([[0.8, 0.6]], dtype=torch.float64)
    along, across = embedding[0], torch.tensor([-0.6, 0.8], dtype=torch.float64)
    weights = torch.stack([0.8 * along + 0.6 * across, 0.3 * along + math.sqrt(0.91) * across])
    expected = {"published": 0.000335406, "paper": 0.148697465}
    for formulation, value in expected.items():
        arcface = criteria.REGISTRY.get("arcface")(2, 2, 0.5, 16.0, formulation=formulation)
        arcface = arcface.double()
        with torch.no_grad():
            arcface.class_weights.copy_(weights)
        loss = arcface(embedding, torch.tensor([0]))
        assert math.isclose(loss.item(), value, rel_tol=1e-5), formulation
