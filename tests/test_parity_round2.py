"""Issue 24, items 2, 6, 7 and 9: the published code's behaviour as our default, the other form
as a named option.

* MTS memory bank (das/sampling.py, ``--das_mts_bank``): a plain-loop reference of the published
  bank (``modules/embedding_producer.py``: one bank object per class, filled once per batch per
  class with that class's nonzero ordered differences; an integer write pointer updated in place)
  against ours, bank contents and pointer after every step.
* k-means seed of NMI/F1 (evaluation/, ``--kmeans_seed``): faiss's default seed by default.
* ``--tf32`` / ``--cudnn_deterministic``: the flags they set (utilities/seeding.py).
"""
from __future__ import annotations

import argparse
import math
from typing import List

import numpy as np
import pytest
import torch

import evaluation
from das import DenselyAnchoredSampling, build_producer
from evaluation.torch_ops import kmeans_cluster_ids as torch_kmeans
from parameters import build_parser, parse_command_line, parse_options
from training.loop import evaluate_all
from utilities.options import ConfigError, check_saved_options
from utilities.seeding import set_backend_flags


# ----------------------------------------------------------------------------- item 2: MTS bank
class PublishedBank:
    """One class's bank as the published code keeps it: a (Q, D) tensor, zero where empty, and an
    integer pointer. A batch's differences of the class arrive in one call."""

    def __init__(self, size: int, dim: int) -> None:
        self.size = size
        self.rows = torch.zeros(size, dim)
        self.pointer = 0

    def push_batch(self, differences: torch.Tensor) -> None:
        count = differences.shape[0]
        if count > self.size:  # the whole bank becomes the last Q; the pointer is not touched
            self.rows = differences[-self.size:].clone()
        elif self.pointer + count > self.size:  # split write: tail of the bank, then its head
            end = min(self.pointer + count, self.size)
            wrapped = count - (end - self.pointer)
            self.rows[self.pointer:end] = differences[:-wrapped]
            self.rows[:wrapped] = differences[-wrapped:]
            self.pointer = wrapped
        else:
            self.rows[self.pointer:self.pointer + count] = differences
            self.pointer += count  # may reach Q, which the next write treats like 0

    def filled(self) -> torch.Tensor:
        """The rows the published sampler draws from: those with a nonzero absolute sum."""
        return self.rows.abs().sum(1) > 0


class FifoBank(PublishedBank):
    """The ``fifo`` option: the same differences pushed one at a time into a ring."""

    def push_batch(self, differences: torch.Tensor) -> None:
        for difference in differences:
            self.rows[self.pointer % self.size] = difference
            self.pointer = (self.pointer + 1) % self.size


def reference_update(banks: List[PublishedBank], embeddings: torch.Tensor,
                     labels: torch.Tensor) -> None:
    """The published per-batch update: for each class present, every ordered difference of its
    rows (row-major), zero ones dropped, handed to the class's bank in one call."""
    for label in torch.unique(labels).tolist():
        rows = embeddings[labels == label]
        differences = (rows[:, None, :] - rows[None, :, :]).reshape(-1, rows.shape[1])
        banks[label].push_batch(differences[differences.abs().sum(1) > 0])


def cub_like_batches(steps: int, num_classes: int, classes_per_batch: int, per_class: int,
                     dim: int, seed: int):
    """Batches whose classes are drawn with replacement (a class drawn twice brings 2 x per_class
    rows), some with a duplicated row (a zero difference the banks must skip)."""
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        classes = torch.randint(num_classes, (classes_per_batch,), generator=generator)
        labels = classes.repeat_interleave(per_class)
        embeddings = torch.nn.functional.normalize(
            torch.randn(len(labels), dim, generator=generator), dim=1)
        if step % 3 == 0:
            embeddings[1] = embeddings[0]
        yield embeddings, labels


def make_das(num_classes: int, dim: int, bank_size: int, rule: str) -> DenselyAnchoredSampling:
    return DenselyAnchoredSampling(num_classes=num_classes, embed_dim=dim, num_produce=2,
                                   dfs_num_scale=2, mts_bank_size=bank_size, mts_bank=rule)


def assert_same_banks(das: DenselyAnchoredSampling, banks: List[PublishedBank]) -> None:
    size = das.mts_bank_size
    for label, bank in enumerate(banks):
        # Exact: the same float32 subtractions on both sides.
        assert torch.equal(das.mts_bank[label], bank.rows), label
        assert int(das.mts_write_position[label]) == bank.pointer % size, label
        filled = torch.arange(size) < das.mts_fill[label]
        assert torch.equal(filled, bank.filled()), label


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("rule,bank_type", [("published", PublishedBank), ("fifo", FifoBank)])
@pytest.mark.parametrize("bank_size,per_class", [(10, 3), (4, 2)])
def test_bank_and_pointer_match_reference(rule, bank_type, sync_free, bank_size, per_class):
    num_classes, dim = 12, 8
    das = make_das(num_classes, dim, bank_size, rule)
    das.sync_free_bank_writes = sync_free
    banks = [bank_type(bank_size, dim) for _ in range(num_classes)]
    overflows = 0
    for embeddings, labels in cub_like_batches(80, num_classes, 6, per_class, dim, seed=5):
        counts = torch.bincount(labels, minlength=num_classes)
        overflows += int((counts * (counts - 1) > bank_size).sum())
        das(embeddings, labels)
        reference_update(banks, embeddings, labels)
        assert_same_banks(das, banks)
    assert overflows > 20  # the case the two rules differ on happened often


def test_rules_differ_after_overflow():
    """The two rules give different banks on the same batches (so the tests above tell them
    apart), and the published pointer does not move on an overflowing batch."""
    num_classes, dim = 12, 8
    published, fifo = make_das(num_classes, dim, 10, "published"), make_das(num_classes, dim, 10,
                                                                           "fifo")
    for embeddings, labels in cub_like_batches(40, num_classes, 6, 3, dim, seed=6):
        before = published.mts_write_position.clone()
        published(embeddings, labels)
        fifo(embeddings, labels)
        counts = torch.bincount(labels, minlength=num_classes)
        overflowing = counts * (counts - 1) > 10
        assert torch.equal(published.mts_write_position[overflowing], before[overflowing])
    assert not torch.equal(published.mts_bank, fifo.mts_bank)


def test_checkpoint_round_trip_and_old_state_loads():
    """Mid-run state (after overflows) saved and restored continues identically; a state saved
    by the fifo rule (the format of checkpoints before issue 24) loads unchanged."""
    num_classes, dim = 12, 8
    batches = list(cub_like_batches(30, num_classes, 6, 3, dim, seed=7))
    das = make_das(num_classes, dim, 10, "published")
    for embeddings, labels in batches[:15]:
        das(embeddings, labels)
    restored = make_das(num_classes, dim, 10, "published")
    restored.load_state_dict(das.state_dict())
    for embeddings, labels in batches[15:]:
        das(embeddings, labels)
        restored(embeddings, labels)
    for name, value in das.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name
    old = make_das(num_classes, dim, 10, "fifo")
    old(*batches[0])
    assert set(old.state_dict()) == set(das.state_dict())
    das.load_state_dict(old.state_dict())
    assert torch.equal(das.mts_bank, old.mts_bank)


def test_bank_option_default_and_refusals():
    opt, _ = parse_command_line(["--embedding_producer_used"])
    assert opt.das_mts_bank == "published"
    assert build_producer(opt, num_classes=3).mts_bank_rule == "published"
    opt, _ = parse_command_line(["--embedding_producer_used", "--das_mts_bank", "fifo"])
    assert build_producer(opt, num_classes=3).mts_bank_rule == "fifo"
    with pytest.raises(SystemExit) as stopped:
        parse_command_line(["--das_mts_bank", "ring"])
    assert stopped.value.code == 2
    with pytest.raises(ValueError, match="--das_mts_bank 'ring'"):
        make_das(3, 4, 2, "ring")


def test_run_folder_without_new_options_is_refused_by_name():
    """A config.json written before issue 24 lacks the new options: resume names the key."""
    parser = build_parser()
    config = vars(parse_options([]))
    check_saved_options(parser, config, "run/config.json")  # complete: accepted
    del config["das_mts_bank"]
    with pytest.raises(ConfigError, match="das_mts_bank"):
        check_saved_options(parser, config, "run/config.json")


# ----------------------------------------------------------------------------- item 6: k-means
def clustered(num: int, classes: int, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    labels = np.arange(num) % classes
    points = centres[labels] + rng.normal(size=(num, dim))
    return points.astype(np.float32), labels


def test_kmeans_seed_rule():
    assert evaluation.PUBLISHED_KMEANS_SEED == 1234
    assert evaluation.kmeans_seed("published", 0) == 1234
    assert evaluation.kmeans_seed("published", 99) == 1234
    assert evaluation.kmeans_seed("run", 99) == 99
    with pytest.raises(ValueError, match="--kmeans_seed 'x'"):
        evaluation.kmeans_seed("x", 0)
    assert parse_command_line([])[0].kmeans_seed == "published"
    assert parse_command_line(["--kmeans_seed", "run"])[0].kmeans_seed == "run"


def test_faiss_default_is_faiss_own_seed():
    """Our default k-means equals faiss.Kmeans with its seed left unset (the published call)."""
    faiss = pytest.importorskip("faiss")
    from evaluation.faiss_ops import kmeans_cluster_ids
    points, labels = clustered(300, 30)
    kmeans = faiss.Kmeans(points.shape[1], 30, niter=20, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=math.ceil(len(points) / 30))
    kmeans.train(points)
    expected = kmeans.index.search(points, 1)[1][:, 0]
    assert np.array_equal(kmeans_cluster_ids(points, 30, 20), expected)
    backend = evaluation.EvaluationBackend("faiss")
    default = evaluation.compute_metrics(["nmi", "f1"], points, labels, backend=backend)
    explicit = evaluation.compute_metrics(["nmi", "f1"], points, labels, seed=1234,
                                          backend=backend)
    assert default == explicit


def test_torch_backend_default_seed_is_1234():
    points, labels = clustered(300, 30, seed=1)
    assert np.array_equal(torch_kmeans(points, 30, 20), torch_kmeans(points, 30, 20, seed=1234))
    backend = evaluation.EvaluationBackend("torch")
    default = evaluation.compute_metrics(["nmi", "f1"], points, labels, backend=backend)
    explicit = evaluation.compute_metrics(["nmi", "f1"], points, labels, seed=1234,
                                          backend=backend)
    assert default == explicit


@pytest.mark.parametrize("rule,expected", [("published", 1234), ("run", 7)])
def test_main_evaluation_gets_the_kmeans_seed(monkeypatch, rule, expected):
    seen = {}

    def fake_evaluate(*args, **kwargs):
        seen.update(kwargs)
        return {"nmi": 0.5}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    opt = argparse.Namespace(eval_backend="torch", evaluation_metrics=["nmi"], eval_bs=4,
                             kernels=0, kmeans_iterations=3, seed=7, kmeans_seed=rule)
    results = evaluate_all(torch.nn.Identity(), {"test": None}, opt, torch.device("cpu"))
    assert seen["seed"] == expected and results == {"test/nmi": 0.5}


# ----------------------------------------------------------------------------- items 7 and 9
@pytest.fixture
def restore_backend_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic)
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic) = saved


@pytest.mark.parametrize("tf32", [True, False])
@pytest.mark.parametrize("deterministic", [True, False])
def test_backend_flags_follow_options(restore_backend_flags, tf32, deterministic):
    argv = ([] if tf32 else ["--no_tf32"]) + ([] if deterministic else ["--no_cudnn_deterministic"])
    opt, _ = parse_command_line(argv)
    assert (opt.tf32, opt.cudnn_deterministic) == (tf32, deterministic)
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    torch.backends.cudnn.deterministic = not deterministic
    set_backend_flags(tf32=opt.tf32, cudnn_deterministic=opt.cudnn_deterministic)
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert torch.backends.cudnn.deterministic is deterministic


def test_backend_defaults_are_published_determinism_and_tf32():
    opt, _ = parse_command_line([])
    assert opt.cudnn_deterministic is True and opt.tf32 is True
    opt, _ = parse_command_line(["--tf32", "--cudnn_deterministic"])
    assert opt.cudnn_deterministic is True and opt.tf32 is True


# ----------------------------------------------------------------------------- item 8: transform
def test_evaluation_decode_is_per_image_unless_batch_is_asked():
    from datasets._batch import evaluation_decode
    assert evaluation_decode("gpu") == "cpu"  # CUDA with nvJPEG: still the per-image transform
    assert evaluation_decode("cpu", "published") == "cpu"
    assert evaluation_decode("gpu", "batch") == "gpu"
    assert evaluation_decode("cpu", "batch") == "cpu"
    assert parse_command_line([])[0].eval_transform == "published"
    with pytest.raises(ValueError, match="--eval_transform 'pil'"):
        evaluation_decode("gpu", "pil")


def test_per_image_test_transform_matches_published_pil_transform(tmp_path):
    """On photo-like JPEGs the per-image path is within one uint8 level of the published PIL
    transform (pixel by pixel), while the batched roi_align crop is measurably further away:
    the reason evaluation takes the per-image path by default (figures: docs/PARITY.md)."""
    from bench.eval_transform import our_pixels, published_pixels, write_photos
    paths = write_photos(tmp_path, 4, seed=3)
    reference, ours, batch = published_pixels(224), our_pixels("cpu", 224), our_pixels("batch", 224)
    ours_diff = torch.stack([(ours(p) - reference(p)).abs() for p in paths])
    batch_diff = torch.stack([(batch(p) - reference(p)).abs() for p in paths])
    # Mean 0.006 with the AVX2/AVX-512 uint8 resize kernels, 0.17 with ATEN_CPU_CAPABILITY=default
    # (another rounding); never more than one level.
    assert ours_diff.max() <= 1.0 and ours_diff.mean() < 0.3
    assert batch_diff.max() >= 4 and batch_diff.mean() > ours_diff.mean()
