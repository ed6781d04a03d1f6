"""Reference parity of the training loop (issue 11; docs/PARITY.md): each published semantic as
the default, and the option that switches to the alternative.

Published (lizhaoliu-Lec/DAS, scripts/standard.py, scripts/_share.py, backbone/*.py,
utilities/logger.py): optimizer groups with weight decay on the network only; frozen BatchNorm in
eval mode with trainable affine weights; float32; the summary's best figure per metric; train-split
metrics on unless --no_train_metrics.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

import architectures
import main
from parameters import parse_options
from training.build import build_criterion, make_optimizer
from training.loop import bf16_autocast, training_step
from tools import paper_tables as pt
from utilities.run_folder import MetricsTable, write_config

TINY = ["--arch", "tinycnn_frozen_normalize", "--not_pretrained", "--embed_dim", "8"]


def built(argv, num_classes: int = 5):
    """(opt, model, criterion, optimizer) as main.main builds them."""
    opt = parse_options(TINY + argv)
    torch.manual_seed(0)
    model = architectures.select(opt.arch, opt.embed_dim, pretrained=False,
                                 freeze_bn_affine=opt.frozen_bn_affine)
    criterion = build_criterion(opt, num_classes)
    return opt, model, criterion, make_optimizer(opt, model, criterion)


def groups_by_name(optimizer):
    return {group["name"]: group for group in optimizer.param_groups}


# ----------------------------------------------------------------------------- 1: optimizer groups
def test_network_groups_carry_decay_and_the_margin_beta_group_none():
    opt, model, criterion, optimizer = built(["--loss", "margin", "--decay", "0.0004"])
    groups = groups_by_name(optimizer)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["weight_decay"] == 0
    assert groups["backbone"]["weight_decay"] == groups["embedding"]["weight_decay"] == 0.0004
    assert groups["criterion_0"]["weight_decay"] == 0
    assert groups["criterion_0"]["lr"] == opt.loss_margin_beta_lr
    assert groups["criterion_0"]["params"] == [criterion.beta]


def test_a_beta_without_gradient_is_left_alone_by_the_optimizer_step():
    """A class absent from the batch gives beta no gradient; with the published groups the step
    leaves it at its value (a global weight decay would pull it towards 0)."""
    _, model, criterion, optimizer = built(["--loss", "margin", "--decay", "0.5"])
    before = criterion.beta.detach().clone()
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    criterion.beta.grad = torch.zeros_like(criterion.beta)
    weight_before = model.last_linear.weight.detach().clone()
    optimizer.step()
    assert torch.equal(criterion.beta.detach(), before)
    assert not torch.equal(model.last_linear.weight.detach(), weight_before)  # decayed


@pytest.mark.parametrize("loss", ["proxynca", "softtriplet", "softmax", "arcface"])
def test_proxy_groups_get_no_weight_decay_of_ours(loss):
    _, _, _, optimizer = built(["--loss", loss, "--decay", "0.0004"])
    assert groups_by_name(optimizer)["criterion_0"]["weight_decay"] == 0


def test_proxyanchor_keeps_the_weight_decay_its_loss_defines():
    _, _, _, optimizer = built(["--loss", "proxyanchor", "--loss_proxyanchor_decay", "0.25"])
    assert groups_by_name(optimizer)["criterion_0"]["weight_decay"] == 0.25


@pytest.mark.parametrize("optim,kind,criterion_decay", [
    ("sgd", torch.optim.SGD, 0.0), ("adamw", torch.optim.AdamW, 0.01)])
def test_sgd_and_adamw_are_built_as_published(optim, kind, criterion_decay):
    """Built without a global weight decay, so a criterion group gets the optimizer's own
    default: 0 for SGD (momentum 0.9), torch's 0.01 for AdamW, as in scripts/standard.py."""
    _, _, _, optimizer = built(["--loss", "margin", "--optim", optim, "--decay", "0.0004"])
    groups = groups_by_name(optimizer)
    assert isinstance(optimizer, kind)
    assert groups["backbone"]["weight_decay"] == 0.0004
    assert groups["criterion_0"]["weight_decay"] == criterion_decay
    if optim == "sgd":
        assert optimizer.defaults["momentum"] == 0.9


# ----------------------------------------------------------------------------- 6: frozen BatchNorm
def test_frozen_batchnorm_is_in_eval_mode_with_affine_weights_trained_and_decayed():
    opt, model, criterion, optimizer = built(["--loss", "multisimilarity", "--decay", "0.0004"])
    model.train()
    batchnorms = list(model.batchnorm_layers())
    assert batchnorms and all(not bn.training for bn in batchnorms)
    affine = [p for bn in batchnorms for p in bn.parameters()]
    assert affine and all(p.requires_grad for p in affine)
    backbone = groups_by_name(optimizer)["backbone"]
    assert {id(p) for p in affine} <= {id(p) for p in backbone["params"]}
    assert backbone["weight_decay"] == 0.0004
    running_mean = batchnorms[0].running_mean.clone()
    weight = batchnorms[0].weight.detach().clone()
    images = torch.randn(8, 3, 16, 16) * 3 + 1
    labels = torch.arange(4).repeat_interleave(2)
    training_step(model, criterion, None, optimizer, images, labels, torch.device("cpu"),
                  use_amp=False)
    assert torch.equal(batchnorms[0].running_mean, running_mean)  # statistics fixed
    assert not torch.equal(batchnorms[0].weight.detach(), weight)  # affine weight trained


def test_frozen_bn_affine_option_fixes_the_affine_weights_and_leaves_them_out():
    _, model, _, optimizer = built(["--loss", "multisimilarity", "--frozen_bn_affine"])
    affine = {id(p) for bn in model.batchnorm_layers() for p in bn.parameters()}
    assert affine and all(not p.requires_grad for bn in model.batchnorm_layers()
                          for p in bn.parameters())
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not affine & optimized


def test_frozen_bn_affine_does_nothing_without_frozen():
    model = architectures.select("tinycnn_normalize", 8, pretrained=False, freeze_bn_affine=True)
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in model.train().batchnorm_layers())


def test_bninception_input_is_normalized_as_published():
    """Published (dataset/basic_dataset_scaffold.py): RGB in 0-1, Normalize(mean (0.502, 0.4588,
    0.4078), std 0.0039), then channels reversed to BGR."""
    from PIL import Image

    from datasets import build_transform

    rgb = (200, 90, 30)
    image = Image.new("RGB", (300, 300), rgb)
    model = architectures.select("bninception_normalize", 8, pretrained=False)
    uint8 = build_transform(model.transform_config(224, "base"), train=False)(image)
    tensor = model.input_normalizer(uint8.unsqueeze(0))[0]  # normalized on the device
    mean, std = (0.502, 0.4588, 0.4078), 0.0039
    published = [(value / 255 - m) / std for value, m in zip(rgb, mean)][::-1]  # BGR
    assert tensor.shape == (3, 224, 224)
    assert tensor[:, 100, 100].tolist() == pytest.approx(published, rel=1e-5, abs=1e-3)


# ----------------------------------------------------------------------------- 7: precision
def test_float32_by_default_bf16_only_with_amp_and_no_amp_a_no_op():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    assert parse_options([]).amp is False
    assert not bf16_autocast(parse_options([]), cuda)
    assert not bf16_autocast(parse_options(["--no_amp"]), cuda)
    assert bf16_autocast(parse_options(["--amp"]), cuda)
    assert not bf16_autocast(parse_options(["--amp"]), cpu)


def test_a_config_saved_before_amp_existed_is_refused_naming_the_key(tmp_path):
    """Such a run ran bf16 on CUDA unless --no_amp; its config lacks 'amp', and loading it back
    stops with the file and key named instead of guessing the precision."""
    import json

    from parameters import RunSpec
    from utilities.options import ConfigError

    config = parse_options([]).to_config()
    del config["amp"]
    (tmp_path / "config.json").write_text(json.dumps(dict(config, no_amp=False)))
    with pytest.raises(ConfigError, match="no key 'amp' \\(option --amp\\)"):
        RunSpec.load(str(tmp_path))


def test_no_op_flags_are_documented_dropped_with_a_note_and_not_recorded(capsys):
    from parameters import NO_OP_FLAGS, build_parser

    parser = build_parser()
    assert set(NO_OP_FLAGS) == {"--no_amp", "--train_metrics", "--evaluate_on_gpu"}
    assert all(flag in parser.epilog for flag in NO_OP_FLAGS)
    assert "--amp" in NO_OP_FLAGS["--no_amp"]
    assert not {"no_amp", "train_metrics", "evaluate_on_gpu"} & {a.dest for a in parser._actions}
    config = parse_options(["--no_amp", "--evaluate_on_gpu", "--bs", "8"]).to_config()
    assert config["bs"] == 8 and "no_amp" not in config and "evaluate_on_gpu" not in config
    notes = capsys.readouterr().err
    assert "note: --no_amp does nothing here" in notes and "--evaluate_on_gpu" in notes


def test_training_step_runs_in_float32_by_default(monkeypatch):
    """train_one_epoch's default gives training_step use_amp=False, i.e. an autocast region that
    is disabled; the embeddings reaching the loss are float32."""
    opt, model, criterion, optimizer = built(["--loss", "multisimilarity"])
    entered = []
    original = torch.autocast

    def recording_autocast(*args, **kwargs):
        entered.append(kwargs.get("enabled", True))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording_autocast)
    seen = []
    forward = criterion.forward
    monkeypatch.setattr(criterion, "forward",
                        lambda embeddings, labels, **kw: (seen.append(embeddings.dtype),
                                                          forward(embeddings, labels, **kw))[1])
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(4).repeat_interleave(2)
    training_step(model, criterion, None, optimizer, images, labels, torch.device("cpu"),
                  use_amp=bf16_autocast(opt, torch.device("cpu")))
    assert entered and not any(entered) and seen == [torch.float32]  # (criteria add one too)


# ----------------------------------------------------------------------------- 10: best figures
TABLE2_MS = dict(dataset="cub200", arch="resnet50_frozen_normalize", embed_dim=128,
                 loss="multisimilarity", batch_mining="distance", embedding_producer_used=False,
                 n_epochs=3, storage_metric="recall@1")


def hand_made_run(root: Path) -> None:
    """R@1 peaks at epoch 2, NMI at epoch 3, F1 at epoch 1; row 0 (untrained) never counts."""
    folder = root / "runs" / "ms"
    folder.mkdir(parents=True)
    write_config(str(folder), TABLE2_MS)
    table = MetricsTable(str(folder))
    for epoch, recall, f1, nmi in [(0, 0.99, 0.99, 0.99), (1, 0.50, 0.40, 0.60),
                                   (2, 0.70, 0.30, 0.62), (3, 0.65, 0.35, 0.66)]:
        table.append({"epoch": epoch, "loss": 0.5, "lr": 1e-5, "test/recall@1": recall,
                      "test/f1": f1, "test/nmi": nmi})


def best_row(out: Path):
    with open(out / "table2_best.csv", newline="") as handle:
        return next(r for r in csv.DictReader(handle)
                    if r["method"] == "multisimilarity+none" and r["figure"] == "ours")


def test_best_per_metric_is_each_metrics_own_maximum_and_the_default(tmp_path):
    hand_made_run(tmp_path)
    assert pt.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    row = best_row(tmp_path / "out")
    assert float(row["cub200/recall@1"]) == pytest.approx(70.0)
    assert float(row["cub200/nmi"]) == pytest.approx(66.0)  # epoch 3
    assert float(row["cub200/f1"]) == pytest.approx(40.0)  # epoch 1
    assert row["cub200/selected_by"] == "per_metric"
    markdown = (tmp_path / "out" / "table2.md").read_text()
    assert "best per metric (--best per_metric)" in markdown
    assert "own maximum over the trained epochs" in markdown


def test_best_storage_metric_takes_every_figure_of_the_best_recall_epoch(tmp_path):
    hand_made_run(tmp_path)
    assert pt.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                    "--best", "storage_metric"]) == 0
    row = best_row(tmp_path / "out")
    assert float(row["cub200/recall@1"]) == pytest.approx(70.0)
    assert float(row["cub200/nmi"]) == pytest.approx(62.0)  # epoch 2's
    assert float(row["cub200/f1"]) == pytest.approx(30.0)
    assert row["cub200/epoch"] == "2" and row["cub200/selected_by"] == "test/recall@1"
    markdown = (tmp_path / "out" / "table2.md").read_text()
    assert "best epoch by the storage metric (--best storage_metric)" in markdown


def test_an_unknown_best_convention_is_refused(tmp_path, capsys):
    hand_made_run(tmp_path)
    with pytest.raises(SystemExit) as stop:
        pt.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--best", "x"])
    assert stop.value.code == 2 and "--best" in capsys.readouterr().err
    with pytest.raises(pt.TablesError, match="--best 'x'"):
        pt.build_tables(str(tmp_path / "runs"), str(tmp_path / "o"), best="x")


# ----------------------------------------------------------------------------- 11: train metrics
def test_train_metrics_are_on_by_default_and_off_with_no_train_metrics():
    assert parse_options([]).train_metrics is True
    assert parse_options(["--no_train_metrics"]).train_metrics is False
    assert parse_options(["--train_metrics"]).train_metrics is True  # accepted no-op


def test_train_metrics_change_no_test_figure(generated_folder, tmp_path):
    """Evaluating the training split draws no random number that training uses: the test
    figures of every epoch are identical with and without it (only time changes)."""
    common = ["--dataset", "folder", "--source", str(generated_folder), "--n_epochs", "2",
              "--bs", "16", "--samples_per_class", "4", "--arch", "tinycnn_normalize",
              "--not_pretrained", "--crop_size", "16", "--kernels", "0", "--lr", "1e-3",
              "--evaluation_metrics", "recall@1", "map@r", "--save_path", str(tmp_path)]
    with_train = main.main(common + ["--savename", "on"])
    without = main.main(common + ["--savename", "off", "--no_train_metrics"])

    def rows(folder):
        with open(os.path.join(folder, "metrics.csv"), newline="") as handle:
            return list(csv.DictReader(handle))

    on, off = rows(with_train), rows(without)
    assert "train/recall@1" in on[0] and "train/recall@1" not in off[0]
    for a, b in zip(on, off):
        assert (a["loss"], a["test/recall@1"], a["test/map@r"]) == \
            (b["loss"], b["test/recall@1"], b["test/map@r"])
