"""Options of the published DAS code (issue 15): --drop, --n_warm, arch words he / bn_norm,
--no_random_augmentation, --scheduler step, gradient-norm logging, --data_split ooDML, SEC, and
the DFS frequency-matrix figure."""
from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

import architectures
import datasets
import main
from das import DenselyAnchoredSampling, save_frequency_if_due
from datasets import DataError, DatasetSplits, Split
from datasets._class_split import apply_class_split
from criteria import SphericalEmbeddingConstraint
from parameters import build_parser
from utilities import checkpoint as ckpt
from datasets import _batch as data_plumbing
from das import figure as das_figure
from tools import figures
from utilities import run_folder as rf
from utilities.grad_stats import gradient_norms
from utilities.schedulers import make_scheduler


def tiny(arch: str, embed_dim: int = 8, dropout: float = -1.0):
    torch.manual_seed(0)
    return architectures.select(arch, embed_dim, pretrained=False, dropout=dropout)


IMAGES = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- architecture
def test_arch_words_he_and_bn_norm_are_parsed_as_words():
    spec = architectures.parse_arch("resnet18_frozen_bn_norm_he_run7")
    assert spec.bn_norm and spec.he and spec.frozen and not spec.normalize
    # "bn" and "norm" that are not adjacent, or "_heavy", are labels, not options
    spec = architectures.parse_arch("resnet18_bn_x_norm_heavy")
    assert not spec.bn_norm and not spec.he


def test_he_initialisation_of_the_embedding_layer():
    model = tiny("tinycnn_he", embed_dim=64)
    weight, bias = model.last_linear.weight, model.last_linear.bias
    assert torch.count_nonzero(bias) == 0
    # kaiming normal, fan_out = out_features: std sqrt(2 / 64)
    assert abs(weight.std().item() - math.sqrt(2 / 64)) < 0.1 * math.sqrt(2 / 64)
    default = tiny("tinycnn", embed_dim=64)
    assert torch.count_nonzero(default.last_linear.bias) > 0


def test_bn_norm_standardizes_the_embedding_in_training_and_is_never_frozen():
    model = tiny("tinycnn_frozen_bn_norm")
    model.train()
    assert model.embedding_bn.training  # 'frozen' freezes the backbone's BatchNorm only
    assert all(p.requires_grad for p in model.embedding_bn.parameters())
    assert any(p is model.embedding_bn.weight for p in model.embedding_parameters())
    with torch.no_grad():
        linear = model.last_linear(model.features(IMAGES).mean(dim=(2, 3)))
    out = model(IMAGES)
    expected = (linear - linear.mean(0)) / (linear.var(0, unbiased=False) + 1e-5).sqrt()
    assert torch.allclose(out, expected, atol=1e-4)
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)
    backbone_bn = list(model.batchnorm_layers())
    assert backbone_bn and all(not m.training for m in backbone_bn)


def test_dropout_on_pooled_features_only_in_training():
    model = tiny("tinycnn", dropout=0.5)
    model.train()
    torch.manual_seed(0)
    first = model(IMAGES)
    second = model(IMAGES)
    assert not torch.allclose(first, second)
    model.eval()
    assert torch.equal(model(IMAGES), model(IMAGES))
    with pytest.raises(ValueError, match="--drop"):
        tiny("tinycnn", dropout=1.0)


def test_warmup_trains_only_the_embedding_layer():
    model = tiny("tinycnn_normalize")
    model.warmup = True
    model(IMAGES).sum().backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert model.last_linear.weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.warmup = False
    model(IMAGES).pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.features.parameters())


def test_return_norms_gives_the_norms_before_normalization():
    model = tiny("tinycnn_normalize").eval()
    raw = tiny("tinycnn").eval()  # same seed: same weights, no normalization
    embeddings, norms = model(IMAGES, return_norms=True)
    expected = raw(IMAGES)
    assert torch.allclose(norms, expected.norm(dim=1), atol=1e-5)
    assert torch.allclose(embeddings, expected / expected.norm(dim=1, keepdim=True), atol=1e-5)


# ----------------------------------------------------------------------------- optimisation
def test_step_scheduler_matches_the_loop_oracle():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = make_scheduler("step", optimizer, tau=[1000], step_tau=3, gamma=0.5)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == [0.5 ** (epoch // 3) for epoch in range(8)]
    with pytest.raises(ValueError, match="--step_tau"):
        make_scheduler("step", optimizer, tau=[1], step_tau=0, gamma=0.5)
    with pytest.raises(ValueError, match="valid names: multistep, step"):
        make_scheduler("cosine", optimizer, tau=[1], step_tau=1, gamma=0.5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--scheduler", "cosine"])


def test_gradient_statistics_by_hand():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1, 1))
    c = torch.nn.Parameter(torch.zeros(3))  # no gradient: left out
    a.grad = torch.tensor([3.0, 4.0])
    b.grad = torch.tensor([[-12.0]])
    stats = gradient_norms([a, b, c])
    assert stats["grad_norm"].item() == pytest.approx(13.0)
    assert stats["grad_l2"].item() == pytest.approx(math.sqrt(169 / 3))  # published: RMS
    assert stats["grad_max"].item() == pytest.approx(12.0)
    assert gradient_norms([c]) == {}


# ----------------------------------------------------------------------------- SEC
def published_sec_oracle(batches, momentum):
    """Plain-Python loop of the published SEC: update the mean, then mean squared deviation."""
    mean, out = None, []
    for norms in batches:
        batch_mean = sum(norms) / len(norms)
        mean = batch_mean if mean is None else momentum * mean + (1 - momentum) * batch_mean
        out.append((sum((n - mean) ** 2 for n in norms) / len(norms), mean))
    return out


def test_sec_penalty_and_running_mean_by_hand():
    sec = SphericalEmbeddingConstraint(weight=0.5, momentum=0.5)
    first = sec(torch.tensor([1.0, 3.0]))  # mean 2, penalty ((1-2)^2 + (3-2)^2) / 2 = 1
    assert first.item() == pytest.approx(0.5 * 1.0)
    assert sec.norm_mean.item() == pytest.approx(2.0)
    second = sec(torch.tensor([2.0, 4.0]))  # mean 0.5*2 + 0.5*3 = 2.5, penalty 1.25
    assert sec.norm_mean.item() == pytest.approx(2.5)
    assert second.item() == pytest.approx(0.5 * 1.25)


def test_sec_matches_the_published_loop_and_resumes_from_its_state():
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0.5, 3.0, size=5).tolist() for _ in range(6)]
    oracle = published_sec_oracle(batches, momentum=0.9)
    sec = SphericalEmbeddingConstraint(weight=1.0, momentum=0.9)
    for norms, (penalty, mean) in zip(batches[:3], oracle[:3]):
        assert sec(torch.tensor(norms)).item() == pytest.approx(penalty, rel=1e-5)
        assert sec.norm_mean.item() == pytest.approx(mean, rel=1e-6)
    restored = SphericalEmbeddingConstraint(weight=1.0, momentum=0.9)
    restored.load_state_dict(sec.state_dict())
    for norms, (penalty, mean) in zip(batches[3:], oracle[3:]):
        assert restored(torch.tensor(norms)).item() == pytest.approx(penalty, rel=1e-5)
        assert restored.norm_mean.item() == pytest.approx(mean, rel=1e-6)


def test_sec_gradient_treats_the_running_mean_as_a_constant():
    sec = SphericalEmbeddingConstraint(weight=1.0, momentum=0.0)
    norms = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    sec(norms).backward()
    mean = 3.0
    assert torch.allclose(norms.grad, torch.tensor([2 * (n - mean) / 3 for n in (1.0, 2.0, 6.0)]))
    with pytest.raises(ValueError, match="--sec_momentum"):
        SphericalEmbeddingConstraint(momentum=1.5)


DIGITS = ["--n_epochs", "2", "--bs", "50", "--samples_per_class", "10", "--embed_dim", "8",
          "--kernels", "0", "--evaluation_metrics", "recall@1", "--storage_metric", "recall@1",
          "--log_every", "3", "--sec", "--sec_momentum", "0.9", "--sec_wei", "0.1"]


def metrics_rows(folder):
    import csv

    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"}
                for row in csv.DictReader(handle)]


def test_sec_run_saves_its_state_and_resumes_exactly(tmp_path, single_thread):
    full = main.main(DIGITS + ["--save_path", str(tmp_path), "--savename", "full"])
    main.main(DIGITS[:1] + ["1"] + DIGITS[2:] + ["--save_path", str(tmp_path), "--savename", "part"])  # noqa: E501
    part = str(tmp_path / "part")
    main.main(["--resume", part, "--n_epochs", "2"])
    state = ckpt.load_checkpoint(os.path.join(full, rf.LAST_CHECKPOINT))
    resumed = ckpt.load_checkpoint(os.path.join(part, rf.LAST_CHECKPOINT))
    assert bool(state["sec"]["initialized"]) and state["sec"]["norm_mean"] > 0
    assert torch.equal(state["sec"]["norm_mean"], resumed["sec"]["norm_mean"])
    assert metrics_rows(full) == metrics_rows(part)
    assert "stats/sec/loss" in metrics_rows(full)[0]


def test_no_random_augmentation_trains_with_the_test_transform(tmp_path, monkeypatch):
    calls = []
    original = data_plumbing.build_transform

    def recording(config, train):
        calls.append(train)
        return original(config, train=train)

    monkeypatch.setattr(data_plumbing, "build_transform", recording)
    main.main(["--n_epochs", "0", "--kernels", "0", "--save_path", str(tmp_path),
               "--no_random_augmentation"])
    assert calls and not any(calls)
    calls.clear()
    main.main(["--n_epochs", "0", "--kernels", "0", "--save_path", str(tmp_path)])
    assert calls[0] is True


# ----------------------------------------------------------------------------- ooDML split
def toy_splits() -> DatasetSplits:
    train = Split([f"a{i}" for i in range(4)], [0, 0, 1, 1], ["cls_a", "cls_b"])
    test = Split([f"b{i}" for i in range(3)], [0, 1, 1], ["cls_c", "cls_d"])
    return DatasetSplits("toy", train, {"test": test})


SPLITS = [{"train": ["cls_a", "cls_b"], "test": ["cls_c", "cls_d"]},
          {"train": ["cls_d", "cls_a", "cls_c"], "test": ["cls_b"]}]


def test_oodml_split_from_json_and_from_a_pickle_with_numpy_arrays(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(SPLITS))
    splits = apply_class_split(toy_splits(), str(path), 1)
    assert splits.train.class_names == ["cls_d", "cls_a", "cls_c"]
    assert splits.train.images == ["b1", "b2", "a0", "a1", "b0"]
    assert splits.train.labels.tolist() == [0, 0, 1, 1, 2]
    assert splits.evaluation["test"].images == ["a2", "a3"]
    assert splits.evaluation["test"].labels.tolist() == [0, 0]
    pickled = tmp_path / "splits.pkl"
    as_arrays = {i: {k: np.array(v) for k, v in s.items()} for i, s in enumerate(SPLITS)}
    pickled.write_bytes(pickle.dumps(as_arrays))
    again = apply_class_split(toy_splits(), str(pickled), 1)
    assert again.train.images == splits.train.images


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_oodml_split_refuses_code_in_a_pickle_and_bad_files(tmp_path, capsys):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([{"train": ["cls_a"], "test": [Payload()]}]))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        apply_class_split(toy_splits(), str(evil), 0)
    assert "never run" not in capsys.readouterr().out
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SPLITS))
    with pytest.raises(DataError, match="out of range.*ids 0..1"):
        apply_class_split(toy_splits(), str(path), 2)
    path.write_text(json.dumps([{"train": ["cls_a", "nope"], "test": ["cls_b"]}]))
    with pytest.raises(DataError, match="'nope', which is not a class of toy"):
        apply_class_split(toy_splits(), str(path), 0)
    path.write_text(json.dumps([{"train": ["cls_a"], "test": ["cls_a"]}]))
    with pytest.raises(DataError, match="in both train and test"):
        apply_class_split(toy_splits(), str(path), 0)
    with pytest.raises(DataError, match="valid names: default, ooDML"):
        datasets.load("digits", None, data_split="other")


def test_oodml_split_through_datasets_load_swaps_digit_classes(tmp_path):
    path = tmp_path / "digits.json"
    path.write_text(json.dumps({"0": {"train": ["5", "6", "7", "8", "9"],
                                      "test": ["0", "1", "2", "3", "4"]}}))
    default = datasets.load("digits", None)
    swapped = datasets.load("digits", None, data_split="ooDML", data_split_path=str(path),
                            data_split_id=0)
    assert swapped.train.class_names == default.evaluation["test"].class_names
    assert len(swapped.train) == len(default.evaluation["test"])
    assert len(swapped.evaluation["test"]) == len(default.train)


# ----------------------------------------------------------------------------- frequency figure
def test_normalized_frequency_and_saving_at_chosen_epochs(tmp_path):
    das = DenselyAnchoredSampling(num_classes=3, embed_dim=4, dfs_num_scale=2)
    das.dfs_counter.copy_(torch.tensor([[2, 4, 0, 1], [0, 0, 0, 0], [5, 5, 10, 0]]))
    expected = np.array([[0.5, 1, 0, 0.25], [0, 0, 0, 0], [0.5, 0.5, 1, 0]], dtype=np.float32)
    assert np.allclose(das.normalized_frequency().numpy(), expected)
    assert save_frequency_if_due(das, 2, [1, 3], str(tmp_path)) is None
    path = save_frequency_if_due(das, 3, [1, 3], str(tmp_path))
    assert path.endswith("das_frequency_epoch3.npy")
    assert np.allclose(np.load(path), expected)
    assert save_frequency_if_due(None, 3, [3], str(tmp_path)) is None


def test_frequency_figure_orders_dimensions_by_the_last_epoch(tmp_path):
    first = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    last = np.array([[0.2, 1.0, 0.1], [0.3, 0.9, 1.0]])  # column totals 0.5, 1.9, 1.1
    np.save(tmp_path / "das_frequency_epoch1.npy", first)
    np.save(tmp_path / "das_frequency_epoch10.npy", last)
    assert [e for e, _ in das_figure.frequency_files(str(tmp_path))] == [1, 10]
    assert das_figure.dimension_order(last).tolist() == [1, 2, 0]
    assert figures.main(["frequency", str(tmp_path)]) == 0
    from PIL import Image

    with Image.open(tmp_path / "frequency.png") as image:
        assert image.size[0] > image.size[1]  # two panels side by side
    empty = tmp_path / "empty"
    empty.mkdir()
    assert figures.main(["frequency", str(empty)]) == 2


def test_saving_frequencies_without_das_is_refused(tmp_path, capsys):
    assert main.run(["--n_epochs", "0", "--kernels", "0", "--save_path", str(tmp_path),
                     "--das_save_frequency_epochs", "1"]) == 2
    assert "--embedding_producer_used" in capsys.readouterr().err


# ----------------------------------------------------------------------------- samplers
def super_class_labels():
    """12 classes of 3 images; super-class of class c is c // 4 (3 super-classes)."""
    labels = np.repeat(np.arange(12), 3)
    return labels, labels // 4


def test_super_class_random_batches_stay_inside_num_super_super_classes():
    import datasampler

    labels, supers = super_class_labels()
    sampler = datasampler.select("super_class_random", labels, 8, 2, seed=0,
                                 super_labels=supers, num_super=1)
    batches = list(sampler)
    assert len(batches) == len(labels) // 8
    for batch in batches:
        assert len(batch) == 8
        assert len(set(supers[batch])) == 1  # one super-class per batch
        pairs = labels[batch].reshape(-1, 2)
        assert (pairs[:, 0] == pairs[:, 1]).all()  # samples_per_class rows of one class
    two = datasampler.select("super_class_random", labels, 8, 2, seed=0, super_labels=supers,
                             num_super=2)
    seen = [set(supers[b]) for b in two]
    assert all(len(s) <= 2 for s in seen)
    # over many epochs every super-class pair is drawn and within it every class
    drawn_classes = set()
    for epoch in range(30):
        two.set_epoch(epoch)
        for batch in two:
            drawn_classes |= set(labels[batch].tolist())
    assert drawn_classes == set(range(12))


def test_super_class_random_is_resumable_and_refuses_bad_settings():
    import datasampler

    labels, supers = super_class_labels()
    full = list(datasampler.select("super_class_random", labels, 6, 2, seed=4,
                                   super_labels=supers))
    resumed = datasampler.select("super_class_random", labels, 6, 2, seed=4, super_labels=supers)
    resumed.load_state_dict({"epoch": 0, "start_batch": 2})
    assert list(resumed) == full[2:]
    with pytest.raises(ValueError, match="only --dataset online_products"):
        datasampler.select("super_class_random", labels, 6, 2)
    with pytest.raises(ValueError, match="--data_num_super 4 must lie between 1 and the 3"):
        datasampler.select("super_class_random", labels, 6, 2, super_labels=supers, num_super=4)
    with pytest.raises(ValueError, match="valid names: .*super_class_random"):
        datasampler.select("coreset", labels, 6, 2)
