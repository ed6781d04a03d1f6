"""The storage samplers (d2_coreset, greedy_coreset, disthist_batchmatch, fid_batchmatch):
each against a plain loop implementation of the published selection drawing the same random
numbers, batch invariants, the storage hook, exact resume (sampler and main.py), and a main.py
run per sampler."""
from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import multivariate_normal, wasserstein_distance

import datasampler
import main
from tests.fixtures import stop_after
from utilities import checkpoint as ckpt
from utilities import run_folder as rf

NAMES = ["d2_coreset", "greedy_coreset", "disthist_batchmatch", "fid_batchmatch"]
LABELS = np.repeat(np.arange(9), [5, 6, 7, 5, 8, 6, 5, 7, 6])  # 55 images, unequal classes
BS, SPC, BIGBS, NCOMPS, DIM = 12, 3, 24, 6, 5


def make(name, seed=3, **options):
    options = dict(dict(bigbs=BIGBS, ncomps=NCOMPS), **options)
    return datasampler.select(name, LABELS, options.pop("bs", BS), SPC, seed=seed, **options)


def storage(seed=0, n=len(LABELS), dim=DIM):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, dim))).float()


def epoch_batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


# ----------------------------------------------------------------------------- plain references
def members(c):
    return np.flatnonzero(LABELS == c)


def ref_project(rng, points, lowproj):
    if lowproj <= 0:
        return points
    bound = 1 / math.sqrt(points.shape[1])
    return points @ rng.uniform(-bound, bound, size=(points.shape[1], lowproj))


def ref_sqdist(points):
    n = len(points)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = sum((points[i, t] - points[j, t]) ** 2 for t in range(points.shape[1]))
    return out


def ref_fillers(rng, anchors):
    draws = rng.random((len(anchors), SPC - 1))
    batch = []
    for a, row in zip(anchors, draws):
        pool = members(LABELS[a])
        batch.append(a)
        batch.extend(pool[int(math.floor(r * len(pool)))] for r in row)
    return batch


def ref_greedy(rng, store, groups, softened=False, lowproj=-1):
    cand = rng.choice(len(store), size=BIGBS, replace=False)
    d = ref_sqdist(ref_project(rng, store[cand], lowproj))
    score = [math.sqrt(sum(v * v for v in row)) for row in d]
    picks = []
    for k in range(groups):
        if k == 0:
            pick = int(rng.integers(0, len(score)))
        elif softened:
            top = [i for i, s in enumerate(score) if s >= np.percentile(score, 97)]
            pick = top[rng.integers(0, len(top))]
        else:
            pick = max(range(len(score)), key=lambda i: score[i])
        picks.append(pick)
        score = [min(s, d[i][pick]) for i, s in enumerate(score)]
    return ref_fillers(rng, cand[picks])


def ref_d2(rng, store, groups, lam=1.0):
    cand = rng.choice(len(store), size=BIGBS, replace=False)
    x = store[cand]
    mean, cov = x.mean(0), np.cov(x.T)
    d = ref_sqdist(x)
    anchor = rng.multivariate_normal(mean, cov)
    start = min(range(len(x)), key=lambda i: np.linalg.norm(x[i] - anchor))
    idxs = [i for i in range(len(x)) if i != start]
    picks, dist_w = [start], d[:, start].copy()
    normal_w = multivariate_normal.pdf(x, mean, cov)
    while len(picks) < groups:  # the published loop
        nw = normal_w[idxs] / normal_w[idxs].sum()
        p = nw * dist_w[idxs] ** lam
        p /= p.sum()
        at = rng.choice(len(idxs), p=p)
        picks.append(idxs[at])
        del idxs[at]
        dist_w = dist_w + d[:, picks[-1]]
    return ref_fillers(rng, cand[picks])


def ref_bigbatch_and_candidates(rng, groups):
    draws = BIGBS // SPC
    classes = rng.integers(0, 9, size=draws)
    offsets = rng.random((draws, SPC))
    big, big_classes = [], []
    for c, row in zip(classes, offsets):
        pool = members(c)
        big.extend(pool[int(math.floor(r * len(pool)))] for r in row)
        big_classes.extend([c] * SPC)
    positions = {}
    for i, c in enumerate(big_classes):
        positions.setdefault(c, []).append(i)
    present = sorted(positions)
    width = max(len(v) for v in positions.values())
    chosen = rng.integers(0, len(present), size=(NCOMPS, groups))
    keys = rng.random((NCOMPS, groups, width))
    subsets = []
    for comp in range(NCOMPS):
        subset = []
        for g in range(groups):
            pos = positions[present[chosen[comp, g]]]
            order = sorted(range(len(pos)), key=lambda i: keys[comp, g, i])
            subset.extend(pos[i] for i in order[:SPC])
        subsets.append(subset)
    return np.array(big), subsets


def ref_disthist(rng, store, groups):
    big, subsets = ref_bigbatch_and_candidates(rng, groups)
    x = store[big]

    def pair_dists(rows):
        return [math.sqrt(sum((x[a, t] - x[b, t]) ** 2 for t in range(x.shape[1])))
                for i, a in enumerate(rows) for b in rows[i + 1:]]

    big_d = pair_dists(list(range(len(x))))
    rng_range = (min(big_d), max(big_d))
    big_h, _ = np.histogram(big_d, bins=50, range=rng_range)
    big_h = big_h / big_h.sum()
    costs = []
    for subset in subsets:
        sub = x[subset]
        h, _ = np.histogram(pair_dists(subset), bins=50, range=rng_range)
        h = h / h.sum()
        wd = wasserstein_distance(big_h, h) + wasserstein_distance(h, big_h)
        costs.append(np.linalg.norm(x.mean(0) - sub.mean(0)) + np.linalg.norm(x.std(0) - sub.std(0))
                     + 75 * wd)
    return list(big[subsets[int(np.argmin(costs))]])


def ref_fid(rng, store, groups):
    big, subsets = ref_bigbatch_and_candidates(rng, groups)
    x = store[big]
    mean_b, cov_b = x.mean(0).reshape(-1, 1), np.cov(x.T)
    fids = []
    for subset in subsets:
        sub = x[subset]
        mean_s, cov_s = sub.mean(0).reshape(-1, 1), np.cov(sub.T)
        eps = np.eye(len(cov_s)) * 1e-8
        root = scipy.linalg.sqrtm((cov_b + eps) @ (cov_s + eps)).real
        diff = mean_b - mean_s
        fids.append((diff.T @ diff).item() + np.trace(cov_b) + np.trace(cov_s) - 2 * np.trace(root))
    return list(big[subsets[int(np.argmin(fids))]])


REFERENCES = {"greedy_coreset": ref_greedy, "d2_coreset": ref_d2,
              "disthist_batchmatch": ref_disthist, "fid_batchmatch": ref_fid}


def reference_epoch(name, seed, epoch, store, **kwargs):
    rng = np.random.default_rng([seed, epoch])
    n_batches = len(LABELS) // BS
    return [[int(i) for i in REFERENCES[name](rng, store.double().numpy(), BS // SPC, **kwargs)]
            for _ in range(n_batches)]


@pytest.mark.parametrize("name", NAMES)
def test_sampler_matches_a_plain_loop_implementation_of_the_published_selection(name):
    sampler = make(name)
    sampler.refresh_storage(storage())
    assert epoch_batches(sampler, 2) == reference_epoch(name, 3, 2, storage())


def test_greedy_coreset_softened_and_projected_match_the_reference():
    sampler = make("greedy_coreset", softened=True, lowproj_dim=3)
    sampler.refresh_storage(storage(1))
    expected = reference_epoch("greedy_coreset", 3, 0, storage(1), softened=True, lowproj=3)
    assert epoch_batches(sampler, 0) == expected


def test_d2_coreset_lambda_matches_the_reference():
    sampler = make("d2_coreset", d2_lambda=2.0)
    sampler.refresh_storage(storage(2))
    assert epoch_batches(sampler, 1) == reference_epoch("d2_coreset", 3, 1, storage(2), lam=2.0)


def test_greedy_coreset_picks_the_farthest_points():
    """Hand-made case: bigbs = all 6 points on a line; after a first pick at 0 the farthest
    point (10) comes next, then the one farthest from both (5)."""
    labels = np.arange(6)
    sampler = datasampler.select("greedy_coreset", labels, 3, 1, seed=0, bigbs=6)
    sampler.refresh_storage(torch.tensor([[0.], [1.], [5.], [9.], [10.], [4.]]))
    rng = np.random.default_rng(0)
    batch = sampler.draw_batch(rng, sampler.storage.double().numpy())
    x = sampler.storage[:, 0].numpy()
    first, second, third = batch
    assert abs(x[second] - x[first]) == np.abs(x - x[first]).max()
    spread = np.minimum(np.abs(x - x[first]), np.abs(x - x[second]))
    assert spread[third] == spread.max()


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", NAMES)
def test_batches_have_the_batch_size_valid_indices_and_class_groups(name):
    sampler = make(name)
    sampler.refresh_storage(storage())
    batches = epoch_batches(sampler)
    assert len(batches) == len(LABELS) // BS == len(sampler)
    for batch in batches:
        assert len(batch) == BS and all(0 <= i < len(LABELS) for i in batch)
        groups = LABELS[np.array(batch)].reshape(-1, SPC)
        assert (groups == groups[:, :1]).all()  # every group of samples_per_class: one class


@pytest.mark.parametrize("name", NAMES)
def test_batches_are_a_function_of_seed_epoch_and_storage(name):
    a, b = make(name), make(name)
    a.refresh_storage(storage())
    b.refresh_storage(storage())
    assert epoch_batches(a, 1) == epoch_batches(b, 1)
    assert epoch_batches(a, 1) != epoch_batches(a, 2)
    c = make(name)
    c.refresh_storage(storage(5))
    # batch-match candidates do not depend on the storage, the choice among them does
    assert any(epoch_batches(c, e) != epoch_batches(a, e) for e in range(5))


@pytest.mark.parametrize("name", NAMES)
def test_ranks_take_their_part_of_the_same_global_batch(name):
    whole = make(name)
    whole.refresh_storage(storage())
    parts = []
    for rank in range(2):
        sampler = datasampler.select(name, LABELS, 12, SPC, seed=3, rank=rank, world_size=2,
                                     bigbs=BIGBS, ncomps=NCOMPS)
        sampler.refresh_storage(storage())
        parts.append(epoch_batches(sampler))
    assert [a + b for a, b in zip(*parts)] == epoch_batches(whole)


def test_update_storage_writes_rows_and_the_last_duplicate_wins():
    sampler = make("greedy_coreset")
    sampler.refresh_storage(storage())
    before = sampler.storage.clone()
    sampler.update_storage(torch.tensor([4, 7, 4]),
                           torch.tensor([[1.] * DIM, [2.] * DIM, [3.] * DIM]))
    assert torch.equal(sampler.storage[4], torch.full((DIM,), 3.))
    assert torch.equal(sampler.storage[7], torch.full((DIM,), 2.))
    untouched = [i for i in range(len(LABELS)) if i not in (4, 7)]
    assert torch.equal(sampler.storage[untouched], before[untouched])


def test_refresh_with_momentum_follows_the_published_update():
    sampler = make("fid_batchmatch", mb_mom=0.5, mb_lr=2.0)
    first, second = storage(0), storage(1)
    sampler.refresh_storage(first)
    sampler.refresh_storage(second)
    delta = 0.5 * (second - first)  # m * 0 + (1 - m)(new - old)
    assert torch.allclose(sampler.storage, second + 2.0 * delta)


def test_refresh_refuses_a_storage_of_the_wrong_size():
    sampler = make("d2_coreset")
    with pytest.raises(ValueError, match=r"\(55, dim\) embeddings"):
        sampler.refresh_storage(torch.zeros(54, DIM))


@pytest.mark.parametrize("name, kwargs, message", [
    ("greedy_coreset", dict(bigbs=56), "exceeds the 55 training images"),
    ("d2_coreset", dict(bigbs=3), "smaller than the 4 class groups"),
    ("disthist_batchmatch", dict(bigbs=2), "at least one class group"),
    ("fid_batchmatch", dict(lowproj_dim=0), "--data_sampler_lowproj_dim must be positive"),
    ("fid_batchmatch", dict(bs=10), "not divisible by --samples_per_class"),
])
def test_bad_options_are_refused_naming_the_flag(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(name, **kwargs)


def test_other_samplers_keep_no_storage():
    sampler = datasampler.select("class_random", LABELS, BS, SPC)
    assert not sampler.needs_embeddings
    with pytest.raises(TypeError, match="keeps no embedding storage"):
        sampler.refresh_storage(storage())


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("name", NAMES)
def test_sampler_state_round_trip_mid_epoch_continues_exactly(name):
    """Two batches served and written back, state saved (through torch.save, weights_only load
    as checkpoints are), then the rest of the epoch and the next epoch: identical."""
    writes = np.random.default_rng(9)

    def embeddings_of(batch):
        return torch.from_numpy(writes.normal(size=(len(batch), DIM))).float()

    full = make(name)
    full.refresh_storage(storage())
    full.set_epoch(0)
    served = []
    for step, batch in enumerate(full):
        served.append((batch, embeddings_of(batch)))
        full.update_storage(torch.tensor(batch), served[-1][1])
        full.start_batch = step + 1
        if step == 1:
            buffer = io.BytesIO()
            torch.save(full.state_dict(), buffer)
    full.start_batch = 0
    next_epoch = epoch_batches(full, 1)

    buffer.seek(0)
    resumed = make(name)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.set_epoch(0)
    rest = []
    for step, batch in enumerate(resumed, start=2):
        rest.append(batch)
        resumed.update_storage(torch.tensor(batch), served[step][1])
    assert rest == [b for b, _ in served[2:]]
    resumed.start_batch = 0
    assert torch.equal(resumed.storage, full.storage)
    assert epoch_batches(resumed, 1) == next_epoch


# ----------------------------------------------------------------------------- main.py
def run_args(source, name, epochs=1):
    return ["--dataset", "folder", "--source", str(source), "--n_epochs", str(epochs),
            "--bs", "8", "--samples_per_class", "2", "--arch", "resnet18_frozen_normalize",
            "--not_pretrained", "--crop_size", "32", "--kernels", "0", "--lr", "1e-3",
            "--embed_dim", "16", "--evaluation_metrics", "recall@1", "--log_every", "1",
            "--data_sampler", name, "--data_batchmatch_bigbs", "16",
            "--data_batchmatch_ncomps", "3"]


def figures(folder):
    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"}
                for row in csv.DictReader(handle)]


@pytest.mark.parametrize("name", NAMES)
def test_main_trains_with_each_storage_sampler(name, generated_folder, tmp_path, single_thread):
    folder = main.main(run_args(generated_folder, name) + ["--save_path", str(tmp_path),
                                                           "--data_storage_update_every", "2"])
    rows = figures(folder)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    state = ckpt.load_checkpoint(os.path.join(folder, rf.LAST_CHECKPOINT))
    stored = state["sampler"]["storage"]
    assert stored.shape[1] == 16 and torch.isfinite(stored).all()
    assert state["sampler"]["batches"].shape[1] == 8


def test_main_builds_the_sampler_from_its_options(generated_folder, tmp_path, monkeypatch,
                                                  single_thread):
    """main.py hands the run's options to the sampler's from_options: the training's sampler
    carries the typed --data_* values."""
    built = []
    build = datasampler.from_options

    def spy(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(datasampler, "from_options", spy)
    main.main(run_args(generated_folder, "d2_coreset") + [
        "--save_path", str(tmp_path), "--data_d2_coreset_lambda", "2.5",
        "--data_sampler_lowproj_dim", "4", "--data_mb_mom", "0.5", "--data_mb_lr", "2"])
    (sampler,) = built
    assert type(sampler).registry_name == "d2_coreset"
    assert (sampler.bigbs, sampler.ncomps, sampler.lowproj_dim, sampler.mb_mom, sampler.mb_lr,
            sampler.d2_lambda) == (16, 3, 4, 0.5, 2.0, 2.5)
    assert (sampler.batch_size, sampler.samples_per_class) == (8, 2)


StopAfter = stop_after(5)

def test_main_stopped_mid_epoch_and_resumed_equals_the_uninterrupted_run(
        generated_folder, tmp_path, monkeypatch, single_thread):
    args = run_args(generated_folder, "disthist_batchmatch", epochs=2) + [
        "--data_idx_full_prec", "--data_storage_update_every", "3", "--data_mb_mom", "0.5"]
    uninterrupted = main.main(args + ["--save_path", str(tmp_path / "full")])
    monkeypatch.setattr(main, "StopRequest", StopAfter)
    with pytest.raises(SystemExit):
        main.main(args + ["--save_path", str(tmp_path), "--savename", "stop"])
    state = ckpt.load_checkpoint(str(tmp_path / "stop" / rf.LAST_CHECKPOINT))
    assert state["sampler"]["start_batch"] > 0 and state["sampler"]["storage"] is not None
    monkeypatch.undo()
    main.main(["--resume", str(tmp_path / "stop")])
    assert figures(str(tmp_path / "stop")) == figures(uninterrupted)
    final = ckpt.load_checkpoint(str(tmp_path / "stop" / rf.LAST_CHECKPOINT))["sampler"]
    reference = ckpt.load_checkpoint(os.path.join(uninterrupted, rf.LAST_CHECKPOINT))["sampler"]
    assert torch.equal(final["storage"], reference["storage"])
