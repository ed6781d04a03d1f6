"""Tests of das/sampling.py (densely-anchored sampling) against a per-sample loop oracle and
hand-computed cases."""
from __future__ import annotations

import copy
from typing import List

import pytest
import torch
import torch.nn.functional as F

from das import DenselyAnchoredSampling, build_producer
from parameters import build_parser


# --------------------------------------------------------------------------------- helpers
class RecordingDAS(DenselyAnchoredSampling):
    """Draws as usual (or fixed, when ``fixed_factor`` / ``fixed_slot`` are set) and records the
    draws so that the loop oracle can replay them."""

    fixed_slot = None  # "newest": the most recently written slot of the class's bank

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drawn_factors: List[torch.Tensor] = []
        self.drawn_slots: List[torch.Tensor] = []

    def sample_scale_factors(self, shape, device):
        factors = super().sample_scale_factors(shape, device)
        self.drawn_factors.append(factors.clone())
        return factors

    def sample_bank_slots(self, fill, num_produce):
        slots = super().sample_bank_slots(fill, num_produce)
        if self.fixed_slot == "newest":
            # The labels are not passed in; tests using this set self.current_labels.
            newest = (self.mts_write_position[self.current_labels] - 1) % self.mts_bank_size
            slots = torch.where(fill > 0, newest, 0).expand(num_produce, -1).clone()
        self.drawn_slots.append(slots.clone())
        return slots


class LoopDAS:
    """Independent oracle: DAS written as plain per-sample Python loops over a ring buffer.

    ``rule``: "fifo" pushes a class's pairs one by one; "published" does the same unless the class
    brings more than Q pairs, which then fill slots 0..Q-1 (its last Q) with the pointer left
    where it was (tests/test_parity_round2.py checks this against the published bank's lines)."""

    def __init__(self, num_classes, embed_dim, num_produce, normalize, k, bank_size, mts_scale,
                 rule="published"):
        self.rule = rule
        self.counter = [[0] * embed_dim for _ in range(num_classes)]
        self.bank = [[torch.zeros(embed_dim) for _ in range(bank_size)] for _ in range(num_classes)]
        self.position = [0] * num_classes
        self.fill = [0] * num_classes
        self.num_produce, self.normalize, self.k = num_produce, normalize, k
        self.bank_size, self.mts_scale, self.dim = bank_size, mts_scale, embed_dim

    def push(self, c, difference):
        self.bank[c][self.position[c]] = difference
        self.position[c] = (self.position[c] + 1) % self.bank_size
        self.fill[c] = min(self.fill[c] + 1, self.bank_size)

    def push_class(self, c, differences):
        if self.rule == "published" and len(differences) > self.bank_size:
            for slot, difference in enumerate(differences[-self.bank_size:]):
                self.bank[c][slot] = difference
            self.fill[c] = self.bank_size
            return
        for difference in differences:
            self.push(c, difference)

    def chosen(self, c):
        return sorted(range(self.dim), key=lambda d: (-self.counter[c][d], d))[:self.k]

    def step(self, embeddings, labels, factors, slots):
        rows = [embeddings[i].clone() for i in range(len(labels))]
        ys = [int(v) for v in labels]
        for row, c in zip(rows, ys):
            values = row.tolist()
            for d in sorted(range(self.dim), key=lambda d: -values[d])[:self.k]:
                self.counter[c][d] += 1
        pairs = {c: [] for c in ys}
        for i, ci in enumerate(ys):
            for j, cj in enumerate(ys):
                if i != j and ci == cj and not torch.equal(rows[i], rows[j]):
                    pairs[ci].append(rows[i] - rows[j])
        for c, differences in pairs.items():
            self.push_class(c, differences)
        generated = []
        for n in range(self.num_produce):
            for i, c in enumerate(ys):
                g = rows[i].clone()
                for k, d in enumerate(self.chosen(c)):
                    g[d] = g[d] * factors[n, i, k]
                if self.fill[c] > 0:
                    g = g + self.mts_scale * self.bank[c][int(slots[n, i])]
                if self.normalize:
                    g = g / g.norm().clamp_min(1e-12)
                generated.append(g)
        return torch.cat([embeddings, torch.stack(generated)]), labels.repeat(self.num_produce + 1)


def make_das(cls=DenselyAnchoredSampling, **overrides):
    settings = dict(num_classes=6, embed_dim=16, num_produce=3, normalize=True, dfs_num_scale=4,
                    dfs_scale_left=0.5, dfs_scale_right=2.0, mts_bank_size=3, mts_scale=0.5,
                    detach=False, aux_loss=False, aux_loss_weight=1.0)
    settings.update(overrides)
    return cls(**settings)


# Batches over a subset of classes: class sizes 1 (no pair), 2 (2 pairs) and 3 (6 pairs > Q=3).
LABEL_SEQUENCE = [
    [0, 0, 1, 1, 2, 2, 2],
    [3, 1, 3, 4],
    [2, 5, 2, 0, 0, 0, 1],
    [5, 5, 5, 3],
    [4, 1, 4, 1, 0],
]


def random_batch(labels, dim, generator):
    return torch.randn(len(labels), dim, generator=generator), torch.tensor(labels)


# --------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("rule", ["published", "fifo"])
@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_loop_oracle_under_recorded_draws(sync_free, normalize, rule):
    torch.manual_seed(0)
    das = make_das(RecordingDAS, normalize=normalize, mts_bank=rule)
    das.sync_free_bank_writes = sync_free
    oracle = LoopDAS(6, 16, 3, normalize, 4, 3, 0.5, rule=rule)
    data = torch.Generator().manual_seed(1)
    for labels in LABEL_SEQUENCE * 2:
        embeddings, labels = random_batch(labels, 16, data)
        out, out_labels = das(embeddings, labels)
        expected, expected_labels = oracle.step(embeddings, labels, das.drawn_factors[-1],
                                                das.drawn_slots[-1])
        assert das.dfs_counter.tolist() == oracle.counter
        for c in range(6):
            assert das.chosen_dimensions(torch.tensor([c]))[0].tolist() == oracle.chosen(c)
        assert das.mts_fill.tolist() == oracle.fill
        assert das.mts_write_position.tolist() == oracle.position
        torch.testing.assert_close(das.mts_bank, torch.stack([torch.stack(b) for b in oracle.bank]),
                                   rtol=0, atol=0)
        assert torch.equal(out_labels, expected_labels)
        torch.testing.assert_close(out, expected)


def test_matches_oracle_with_fixed_factor_and_newest_slot():
    # "newest" = the slot before the pointer: the most recent write only under the fifo rule.
    das = make_das(RecordingDAS, dfs_scale_left=1.5, dfs_scale_right=1.5, normalize=False,
                   mts_bank="fifo")
    das.fixed_slot = "newest"
    oracle = LoopDAS(6, 16, 3, False, 4, 3, 0.5, rule="fifo")
    data = torch.Generator().manual_seed(2)
    for labels in LABEL_SEQUENCE:
        embeddings, labels = random_batch(labels, 16, data)
        das.current_labels = labels
        out, _ = das(embeddings, labels)
        assert torch.all(das.drawn_factors[-1] == 1.5)
        expected, _ = oracle.step(embeddings, labels, das.drawn_factors[-1], das.drawn_slots[-1])
        torch.testing.assert_close(out, expected, rtol=0, atol=0)  # no normalization: exact


# --------------------------------------------------------------------------------- hand cases
def test_counter_equals_hand_counts():
    das = make_das(num_classes=3, embed_dim=4, dfs_num_scale=2)
    das(torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]]), torch.tensor([0, 0]))
    das(torch.tensor([[0.0, 9.0, 8.0, -1.0], [5.0, 0.0, 6.0, 1.0]]), torch.tensor([2, 0]))
    das(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), torch.tensor([2]))
    assert das.dfs_counter.tolist() == [[2, 1, 2, 1], [0, 0, 0, 0], [1, 1, 2, 0]]
    # Class 0's most counted: dims 0 and 2 (2 each); class 2: dim 2 (2), then dim 0 (tie with 1,
    # broken towards the lower index).
    assert das.chosen_dimensions(torch.tensor([0, 2, 1])).tolist() == [[0, 2], [2, 0], [0, 1]]


def test_bank_is_fifo_with_wrap_around():
    # The fifo rule (--das_mts_bank fifo; it was the default before issue 24).
    das = make_das(num_classes=2, embed_dim=2, dfs_num_scale=1, mts_bank_size=3, mts_bank="fifo")
    a, b, c, d = (torch.tensor(v) for v in ([1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [4.0, -1.0]))
    das(torch.stack([a, b]), torch.tensor([1, 1]))  # pushes a-b, b-a into slots 0, 1
    assert das.mts_fill.tolist() == [0, 2] and das.mts_write_position.tolist() == [0, 2]
    das(torch.stack([c, d]), torch.tensor([1, 1]))  # pushes c-d (slot 2), d-c (slot 0: wraps)
    assert das.mts_fill.tolist() == [0, 3] and das.mts_write_position.tolist() == [0, 1]
    expected = torch.stack([d - c, b - a, c - d])
    assert torch.equal(das.mts_bank[1], expected)
    assert torch.equal(das.mts_bank[0], torch.zeros(3, 2))
    # Three rows bring 6 pairs, more than Q = 3: only the last three, in push order.
    das(torch.stack([a, b, c]), torch.tensor([1, 1, 1]))
    # Push order: a-b, a-c, b-a, b-c, c-a, c-b at slots 1, 2, 0, 1, 2, 0.
    assert torch.equal(das.mts_bank[1], torch.stack([c - b, b - c, c - a]))
    assert das.mts_write_position.tolist() == [0, 1]


@pytest.mark.parametrize("sync_free", [False, True])
def test_published_bank_overflow_keeps_pointer(sync_free):
    # The default rule: more than Q pairs fill slots 0..Q-1 and the pointer stays put.
    das = make_das(num_classes=2, embed_dim=2, dfs_num_scale=1, mts_bank_size=3)
    das.sync_free_bank_writes = sync_free
    a, b, c, d = (torch.tensor(v) for v in ([1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [4.0, -1.0]))
    das(torch.stack([a, b]), torch.tensor([1, 1]))  # a-b, b-a into slots 0, 1; pointer 2
    das(torch.stack([a, b, c]), torch.tensor([1, 1, 1]))  # 6 pairs > 3: the last three
    assert torch.equal(das.mts_bank[1], torch.stack([b - c, c - a, c - b]))
    assert das.mts_write_position.tolist() == [0, 2] and das.mts_fill.tolist() == [0, 3]
    das(torch.stack([c, d]), torch.tensor([1, 1]))  # c-d at slot 2, d-c at slot 0 (wraps)
    assert torch.equal(das.mts_bank[1], torch.stack([d - c, c - a, c - d]))
    assert das.mts_write_position.tolist() == [0, 1]


@pytest.mark.parametrize("sync_free", [False, True])
def test_bank_never_holds_zero_or_cross_class_differences(sync_free):
    das = make_das(num_classes=3, embed_dim=8, mts_bank_size=50)
    das.sync_free_bank_writes = sync_free
    data = torch.Generator().manual_seed(3)
    row = torch.randn(8, generator=data)
    negative_zero = row.clone()
    negative_zero[0] = 0.0
    positive_zero = negative_zero.clone()
    negative_zero[0] = -0.0
    embeddings = torch.stack([row, row.clone(), torch.randn(8, generator=data), negative_zero,
                              positive_zero, torch.randn(8, generator=data)])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    das(embeddings, labels)
    # Class 0: rows 0 and 1 are identical, so only pairs with row 2 count: 4 differences.
    # Class 1: -0.0 and +0.0 are the same value: nothing. Class 2: one row: nothing.
    assert das.mts_fill.tolist() == [4, 0, 0]
    allowed = {tuple((embeddings[i] - embeddings[j]).tolist())
               for i in range(6) for j in range(6) if labels[i] == labels[j] and i != j}
    for stored in das.mts_bank[0, :4]:
        assert stored.abs().sum() > 0
        assert tuple(stored.tolist()) in allowed
    assert torch.equal(das.mts_bank[1:], torch.zeros(2, 50, 8))


def test_class_seen_first_time_gets_no_shift():
    das = make_das(RecordingDAS, normalize=False, mts_scale=10.0)
    embeddings = torch.randn(3, 16)
    out, _ = das(embeddings, torch.tensor([4, 2, 2]))
    assert das.mts_fill[4] == 0 and torch.isfinite(out).all()
    factors, dims = das.drawn_factors[-1], das.chosen_dimensions(torch.tensor([4]))[0]
    for n in range(3):
        expected = embeddings[0].clone()
        expected[dims] *= factors[n, 0]
        assert torch.equal(out[3 + 3 * n], expected)
        assert not torch.equal(out[3 + 3 * n + 1], embeddings[1])  # class 2 is shifted


def test_empty_bank_adds_no_shift_even_with_stale_contents():
    das = make_das(RecordingDAS, normalize=False, mts_scale=1.0)
    das.mts_bank.fill_(5.0)  # stale values, but fill 0 says the banks are empty
    embeddings = torch.randn(2, 16)
    out, _ = das(embeddings, torch.tensor([1, 3]))
    multiplier = torch.ones(3, 2, 16).scatter_(
        2, das.chosen_dimensions(torch.tensor([1, 3])).expand(3, -1, -1), das.drawn_factors[-1])
    assert torch.equal(out[2:], (embeddings * multiplier).view(6, 16))


def test_bank_slots_are_drawn_uniformly_from_filled_slots():
    das = make_das()
    torch.manual_seed(0)
    fill = torch.tensor([0, 1, 3, 10])
    slots = das.sample_bank_slots(fill, 6000)
    assert slots.shape == (6000, 4) and slots.dtype == torch.long
    assert torch.all(slots[:, :2] == 0)
    for column, filled in ((2, 3), (3, 10)):
        counts = torch.bincount(slots[:, column], minlength=filled)
        assert counts.shape == (filled,)  # never at or beyond fill
        assert counts.min() > 0.8 * 6000 / filled and counts.max() < 1.2 * 6000 / filled


def test_scale_factors_in_range_and_only_on_chosen_dims():
    das = make_das(RecordingDAS, num_produce=50, normalize=False, mts_scale=0.0,
                   dfs_scale_left=0.7, dfs_scale_right=1.3)
    embeddings = torch.rand(7, 16) + 0.5
    labels = torch.tensor([0, 0, 1, 1, 1, 3, 5])
    out, _ = das(embeddings, labels)
    ratio = out[7:].view(50, 7, 16) / embeddings
    chosen = torch.zeros(7, 16, dtype=torch.bool)
    chosen.scatter_(1, das.chosen_dimensions(labels), True)
    chosen = chosen.expand(50, -1, -1)
    assert torch.all(ratio[~chosen] == 1.0)
    assert ratio[chosen].min() >= 0.7 and ratio[chosen].max() < 1.3
    assert ratio[chosen].std() > 0.1  # drawn, not constant
    # A class seen once so far scales its row's K largest dimensions (all counted once: ties go
    # to the lower dimension first).
    top = embeddings.topk(4, dim=1).indices
    assert torch.equal(das.chosen_dimensions(torch.tensor([3]))[0], top[5].sort().values)


def test_normalize_on_and_off():
    torch.manual_seed(0)
    normalized = make_das()
    raw = copy.deepcopy(normalized)
    raw.normalize = False
    embeddings, labels = 3.0 * torch.randn(7, 16), torch.tensor(LABEL_SEQUENCE[0])
    torch.manual_seed(5)
    out_normalized, _ = normalized(embeddings, labels)
    torch.manual_seed(5)
    out_raw, _ = raw(embeddings, labels)
    torch.testing.assert_close(out_normalized[7:].norm(dim=1), torch.ones(21))
    assert (out_raw[7:].norm(dim=1) - 1).abs().min() > 0.1
    torch.testing.assert_close(out_normalized[7:], F.normalize(out_raw[7:], dim=1))
    assert torch.equal(out_normalized[:7], embeddings) and torch.equal(out_raw[:7], embeddings)


def test_detach_stops_gradient_through_generated_rows():
    for detach in (True, False):
        das = make_das(RecordingDAS, detach=detach, normalize=False)
        embeddings = torch.randn(7, 16, requires_grad=True)
        out, _ = das(embeddings, torch.tensor(LABEL_SEQUENCE[0]))
        out[7:].sum().backward()
        if detach:
            assert embeddings.grad is None or torch.all(embeddings.grad == 0)
        else:
            # d/dE of sum_n (E * multiplier_n + shift_n) is sum_n multiplier_n.
            multiplier = torch.ones(3, 7, 16)
            dims = das.chosen_dimensions(torch.tensor(LABEL_SEQUENCE[0]))
            multiplier.scatter_(2, dims.expand(3, -1, -1), das.drawn_factors[-1])
            torch.testing.assert_close(embeddings.grad, multiplier.sum(0))


class TinyPairLoss(torch.nn.Module):
    """A small deterministic criterion with the codebase's signature (mean same-class distance
    minus mean other-class distance), used when criteria/ has no multi-similarity loss yet."""

    def forward(self, embeddings, labels, num_real=None):
        distances = torch.cdist(embeddings, embeddings)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        return distances[same].mean() - distances[~same].mean()


def pick_criterion():
    try:
        import criteria
        if "multisimilarity" in criteria.REGISTRY:
            opt = build_parser().parse_args([])
            return criteria.select("multisimilarity", opt, num_classes=6)
    except Exception:  # another developer's criterion in progress must not break this test
        pass
    return TinyPairLoss()


@pytest.mark.parametrize("aux_loss", [False, True])
def test_compute_loss_equals_hand_made_sum(aux_loss):
    criterion = pick_criterion()
    das = make_das(aux_loss=aux_loss, aux_loss_weight=0.3)
    warm = torch.Generator().manual_seed(4)
    das(*random_batch(LABEL_SEQUENCE[2], 16, warm))
    twin = copy.deepcopy(das)
    embeddings = F.normalize(torch.randn(7, 16), dim=1)
    labels = torch.tensor(LABEL_SEQUENCE[0])
    torch.manual_seed(11)
    loss = das.compute_loss(criterion, embeddings, labels)
    torch.manual_seed(11)
    all_embeddings, all_labels = twin(embeddings, labels)
    expected = criterion(all_embeddings, all_labels, num_real=7)
    if aux_loss:
        expected = criterion(embeddings, labels, num_real=7) + 0.3 * expected
    assert loss.abs() > 0
    torch.testing.assert_close(loss, expected)
    assert ("loss_real" in das.stats) == aux_loss


# --------------------------------------------------------------------------------- interface
def test_shapes_label_order_dtype_and_stats():
    das = make_das(num_produce=2)
    embeddings = torch.randn(7, 16).to(torch.bfloat16)
    labels = torch.tensor(LABEL_SEQUENCE[0])
    out, out_labels = das(embeddings, labels)
    assert out.shape == (21, 16) and out.dtype == torch.float32
    assert torch.equal(out[:7], embeddings.float())
    assert out_labels.tolist() == LABEL_SEQUENCE[0] * 3
    distance = das.stats["real_generated_distance"]
    assert distance.dim() == 0 and not distance.requires_grad
    expected = (out[7:].view(2, 7, 16) - embeddings.float()).norm(dim=2).mean()
    torch.testing.assert_close(distance, expected)


def test_seeding_torch_makes_runs_repeatable():
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        das = make_das()
        data = torch.Generator().manual_seed(8)
        for labels in LABEL_SEQUENCE:
            out, _ = das(*random_batch(labels, 16, data))
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])


def test_state_dict_round_trip_continues_identically():
    das = make_das()
    data = torch.Generator().manual_seed(9)
    for labels in LABEL_SEQUENCE[:3]:
        das(*random_batch(labels, 16, data))
    state = das.state_dict()
    assert set(state) == {"dfs_counter", "mts_bank", "mts_write_position", "mts_fill"}
    assert state["mts_bank"].shape == (6, 3, 16) and state["dfs_counter"].shape == (6, 16)
    restored = make_das()
    restored.load_state_dict(state)
    batch = random_batch(LABEL_SEQUENCE[3], 16, data)
    torch.manual_seed(10)
    expected, _ = das(*batch)
    torch.manual_seed(10)
    got, _ = restored(*batch)
    assert torch.equal(expected, got)
    for name, value in das.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name


def test_bad_inputs_are_refused():
    das = make_das()
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        das(torch.randn(2, 16), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="--embed_dim"):
        das(torch.randn(2, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one label per embedding"):
        das(torch.randn(2, 16), torch.tensor([0, 1, 1]))


def options(*argv):
    return build_parser().parse_args(list(argv))


def test_build_producer():
    assert build_producer(options(), num_classes=10) is None
    das = build_producer(options("--embedding_producer_used", "--embed_dim", "32",
                                 "--das_dfs_num_scale", "8", "--das_not_normalize", "--detach",
                                 "--das_mts_num_transformation_bank", "5"), num_classes=10)
    assert isinstance(das, DenselyAnchoredSampling)
    assert (das.embed_dim, das.dfs_num_scale, das.normalize, das.detach) == (32, 8, False, True)
    assert das.mts_bank.shape == (10, 5, 32) and das.num_produce == 3
    with pytest.raises(ValueError, match="--produce_type 'MoCo'.*valid values: DAS"):
        build_producer(options("--embedding_producer_used", "--produce_type", "MoCo"), 10)
    with pytest.raises(ValueError, match="--das_dfs_num_scale 200.*--embed_dim 128"):
        build_producer(options("--embedding_producer_used", "--das_dfs_num_scale", "200"), 10)
    with pytest.raises(ValueError, match="--das_dfs_scale_left 2.5.*--das_dfs_scale_right 2.0"):
        build_producer(options("--embedding_producer_used", "--das_dfs_scale_left", "2.5"), 10)


def test_own_generator_makes_draws_independent_of_global_rng():
    outputs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        das = make_das()
        das.generator = torch.Generator().manual_seed(3)
        data = torch.Generator().manual_seed(4)
        for labels in LABEL_SEQUENCE:
            out, _ = das(*random_batch(labels, 16, data))
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
