"""Batch samplers: class balance, determinism, resume position, rank shares, refusals."""
import numpy as np
import pytest

import datasampler
from parameters import parse_options
from utilities.registry import UnknownNameError


def labels_of(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_class_random_distinct_batches_hold_distinct_classes_with_samples_per_class_each():
    labels = labels_of([5] * 12)
    sampler = datasampler.select("class_random_distinct", labels, batch_size=8,
                                 samples_per_class=2, seed=3)
    batches = list(sampler)
    assert len(batches) == len(labels) // 8 == len(sampler)
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and set(counts) == {2}
        assert len(set(batch)) == 8


def test_batches_depend_only_on_seed_and_epoch():
    labels = labels_of([4] * 10)
    a = datasampler.select("class_random", labels, 8, 2, seed=1)
    b = datasampler.select("class_random", labels, 8, 2, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    c = datasampler.select("class_random", labels, 8, 2, seed=2)
    assert list(a) != list(c)


def test_resume_position_skips_served_batches():
    labels = labels_of([4] * 10)
    full = list(datasampler.select("random", labels, 8, 1, seed=0))
    resumed = datasampler.select("random", labels, 8, 1, seed=0)
    resumed.load_state_dict({"epoch": 0, "start_batch": 2})
    assert list(resumed) == full[2:]
    assert len(resumed) == len(full) - 2


@pytest.mark.parametrize("name", ["class_random", "class_random_distinct"])
def test_ranks_split_the_same_global_batch_by_whole_classes(name):
    labels = labels_of([3] * 16)
    single = list(datasampler.select(name, labels, 8, 2, seed=5))
    rank0 = list(datasampler.select(name, labels, 8, 2, seed=5, rank=0, world_size=2))
    rank1 = list(datasampler.select(name, labels, 8, 2, seed=5, rank=1, world_size=2))
    for whole, part0, part1 in zip(single, rank0, rank1):
        assert part0 + part1 == whole
        for part in (part0, part1):  # every rank holds whole class draws of 2 rows each
            assert len(part) == 4
            assert all(len(set(labels[part[i:i + 2]])) == 1 for i in range(0, 4, 2))
        if name == "class_random_distinct":
            assert not set(labels[part0]) & set(labels[part1])


def test_random_sampler_covers_each_index_at_most_once_per_epoch():
    labels = labels_of([7] * 5)
    batches = list(datasampler.select("random", labels, 10, 1, seed=0))
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 30


@pytest.mark.parametrize("name,kwargs,message", [
    ("class_random", dict(batch_size=9, samples_per_class=2),
     "--bs 9 is not divisible by --samples_per_class 2"),
    ("class_random", dict(batch_size=0, samples_per_class=2), "--bs must be a positive integer"),
    ("class_random_distinct", dict(batch_size=9, samples_per_class=2),
     "--bs 9 is not divisible by --samples_per_class 2"),
    ("class_random_distinct", dict(batch_size=8, samples_per_class=4),
     "larger than training class 'c2', which has 3"),
    ("class_random_distinct", dict(batch_size=40, samples_per_class=2),
     "needs 20 distinct classes"),
])
def test_class_random_refuses_impossible_batches(name, kwargs, message):
    labels = labels_of([5, 4, 3, 6])
    with pytest.raises(ValueError, match=message):
        datasampler.select(name, labels, class_names=["c0", "c1", "c2", "c3"], **kwargs)


def test_class_random_with_replacement_accepts_small_classes_and_few_classes():
    """The published sampler draws with replacement: a class smaller than samples_per_class and
    a batch of more class draws than classes both work (rows then repeat)."""
    labels = labels_of([5, 4, 3, 6])
    batches = list(datasampler.select("class_random", labels, 40, 4, seed=0))
    assert len(batches) == 1 and len(batches[0]) == 40
    groups = labels[np.array(batches[0])].reshape(10, 4)
    assert (groups == groups[:, :1]).all()


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(UnknownNameError, match="class_random, class_random_distinct, d2_coreset, "
                       "disthist_batchmatch, fid_batchmatch, greedy_coreset, random"):
        datasampler.select("balanced", np.zeros(4, dtype=int), 2, 1)


STORAGE_OPTIONS = ["--data_batchmatch_bigbs", "20", "--data_batchmatch_ncomps", "3",
                   "--data_sampler_lowproj_dim", "4", "--data_mb_mom", "0.5", "--data_mb_lr", "2"]
STORAGE_ATTRIBUTES = dict(bigbs=20, ncomps=3, lowproj_dim=4, mb_mom=0.5, mb_lr=2.0)
# per sampler: non-default values of its own --data_* options, and the attributes they must set
OWN_OPTIONS = {
    "random": ([], {}),
    "class_random": ([], {}),
    "class_random_distinct": ([], {}),
    "super_class_random": (["--data_num_super", "2"], dict(num_super=2)),
    "disthist_batchmatch": (STORAGE_OPTIONS, STORAGE_ATTRIBUTES),
    "fid_batchmatch": (STORAGE_OPTIONS, STORAGE_ATTRIBUTES),
    "d2_coreset": (STORAGE_OPTIONS + ["--data_d2_coreset_lambda", "2.5"],
                   dict(STORAGE_ATTRIBUTES, d2_lambda=2.5)),
    "greedy_coreset": (STORAGE_OPTIONS + ["--data_gc_softened"],
                       dict(STORAGE_ATTRIBUTES, softened=True)),
}


def test_every_sampler_is_covered_by_the_from_options_test():
    assert set(OWN_OPTIONS) == set(datasampler.REGISTRY.names())


@pytest.mark.parametrize("name", sorted(OWN_OPTIONS))
def test_from_options_builds_the_sampler_from_its_own_options(name):
    """Each sampler maps its --data_* options to its constructor (its own from_options)."""
    argv, attributes = OWN_OPTIONS[name]
    opt = parse_options(["--data_sampler", name, "--bs", "8", "--samples_per_class", "2",
                         "--seed", "7"] + argv)
    labels = labels_of([6] * 10)
    supers = labels // 5  # 2 super-classes of 5 classes each
    sampler = datasampler.from_options(opt.data_sampler, opt, labels,
                                       class_names=[f"c{i}" for i in range(10)],
                                       super_labels=supers, rank=1, world_size=2)
    assert type(sampler) is datasampler.REGISTRY.get(name)
    expected = dict(batch_size=8, samples_per_class=2, seed=7, rank=1, world_size=2,
                    **attributes)
    assert {key: getattr(sampler, key) for key in expected} == expected
    assert np.array_equal(sampler.labels, labels)


def test_super_class_random_from_options_gets_the_split_super_labels():
    opt = parse_options(["--data_sampler", "super_class_random", "--bs", "8",
                         "--samples_per_class", "2", "--data_num_super", "1"])
    labels = labels_of([6] * 10)
    supers = labels // 5
    sampler = datasampler.from_options(opt.data_sampler, opt, labels, super_labels=supers)
    for batch in sampler:
        assert len(set(supers[batch].tolist())) == 1  # one super-class per batch
    with pytest.raises(ValueError, match="only --dataset online_products"):
        datasampler.from_options(opt.data_sampler, opt, labels)
