"""The dataset contract of docs/ARCHITECTURE.md, checked on the document's own example, and the
records of the real datasets checked against what they describe.

The example (``### Example dataset member``) is written as ``datasets/toy_shapes.py`` in a
temporary folder and imported the way ``datasets/__init__`` imports its own files
(``Registry.import_members``), into a copy of the registry put back afterwards. Every reader of a
dataset's record must then see it: ``datasets.load``, the option defaults and Recall@K list,
``tools.smoke_data``, ``tools.sweep`` and ``tools.prepare``; and it trains one main.py epoch.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

import datasets
import main
from parameters import parse_options
from tests.fixtures import documented_example, dropped_in
from tools import prepare, smoke_data, sweep
from utilities import run_folder as rf

NAME = "toy_shapes"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Iterator[datasets.Dataset]:
    """The documented example registered as ``toy_shapes`` for this module's tests only."""
    assert NAME not in datasets.REGISTRY
    with dropped_in(datasets, NAME, documented_example("dataset"),
                    tmp_path_factory.mktemp("members") / "datasets"):
        yield datasets.REGISTRY.get(NAME)
    assert NAME not in datasets.REGISTRY


@pytest.fixture(scope="module")
def toy_root(toy, tmp_path_factory) -> Path:
    """DATA_ROOT with ``toy_shapes/`` as its smoke layout writes it: 8 classes x 5 images."""
    root = tmp_path_factory.mktemp("data")
    smoke_data.make_smoke_datasets(str(root), [NAME], num_classes=8, images_per_class=5, size=32)
    return root


def test_example_is_registered_and_loads_its_smoke_layout(toy, toy_root):
    assert toy is datasets.REGISTRY.get(NAME) and toy in datasets.described()
    assert NAME in smoke_data.smoke_layouts() and NAME in prepare.preparable()
    splits = datasets.load(NAME, str(toy_root))
    assert splits.train.class_names == [f"shape_{c:02d}" for c in range(4)]
    assert splits.evaluation["test"].class_names == [f"shape_{c:02d}" for c in range(4, 8)]
    assert len(splits.train) == len(splits.evaluation["test"]) == 20
    assert toy(str(toy_root)).train.class_names == splits.train.class_names  # the parser
    with Image.open(splits.train.images[0]) as image:
        assert image.size == (32, 32)


def test_example_defaults_and_recall_ks_fill_unset_options(toy, toy_root):
    opt = parse_options(["--dataset", NAME, "--source", str(toy_root)])
    assert (opt.arch, opt.crop_size, opt.n_epochs, opt.pretrained, opt.bs, opt.samples_per_class,
            opt.augmentation, opt.lr, opt.eval_initial) == (
        "tinycnn_normalize", 32, 2, False, 16, 4, "red", 1e-3, False)
    assert opt.evaluation_metrics[:3] == ["recall@1", "recall@2", "recall@4"]
    assert "recall@8" not in opt.evaluation_metrics
    typed = parse_options(["--dataset", NAME, "--bs", "8", "--evaluation_metrics", "nmi"])
    assert (typed.bs, typed.evaluation_metrics) == (8, ["nmi"])  # typed options win


def test_example_rows_are_chosen_by_its_alias_and_its_folders_checked(toy, toy_root, tmp_path):
    rows = sweep.read_rows([f"{NAME} tiny baseline -- --dataset {NAME} --source {toy_root}",
                            f"cub200 tiny baseline -- --dataset cub200 --source {toy_root}"])
    chosen = sweep.select_rows(rows, ["shapes"])
    assert [row.name for row in chosen] == [f"{NAME}_tiny_baseline"]
    sweep.prepare(chosen, str(tmp_path / "runs"), "toy.sh")  # parses and checks the data root
    assert chosen[0].status == "new"
    empty = tmp_path / "empty"
    (empty / NAME).mkdir(parents=True)
    rows = sweep.read_rows([f"{NAME} tiny baseline -- --dataset {NAME} --source {empty}"])
    with pytest.raises(sweep.SweepError, match=f"lacks images/ \\(expected {NAME}/images\\)"):
        sweep.prepare(rows, str(tmp_path / "runs"), "toy.sh")


def test_example_is_prepared_from_its_download(toy, tmp_path, capsys):
    download = tmp_path / "download" / "shapes"
    for c in range(4):
        (download / f"shape_{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(
                download / f"shape_{c}" / f"{i}.png")
    target = prepare.prepare(NAME, str(tmp_path / "download"), str(tmp_path / "data"))
    assert sorted(os.listdir(os.path.join(target, "images"))) == [f"shape_{c}" for c in range(4)]
    out = capsys.readouterr()
    assert f"{NAME}: 12 images (published 5,000), 4 classes (published 100)" in out.out
    assert f"warning: {NAME} is smaller than published" in out.err
    assert len(datasets.load(NAME, str(tmp_path / "data")).train) == 6
    (tmp_path / "nothing").mkdir()
    assert prepare.main([NAME, "--from", str(tmp_path / "nothing"), "--to",
                         str(tmp_path / "other")]) == 2
    assert "found no shapes/ folder" in capsys.readouterr().err


def test_example_trains_one_main_epoch_on_its_own_defaults(toy, toy_root, tmp_path):
    folder = main.main(["--dataset", NAME, "--source", str(toy_root), "--n_epochs", "1",
                        "--kernels", "0", "--save_path", str(tmp_path), "--savename", "run"])
    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert math.isfinite(float(last["loss"])) and 0 <= float(last["test/recall@4"]) <= 1
    config = rf.read_config(folder)
    assert (config["dataset"], config["arch"], config["crop_size"]) == (
        NAME, "tinycnn_normalize", 32)


# ---------------------------------------------------------------- the real datasets' records


def test_every_smoke_layout_loads_with_its_folders_and_half_its_classes_training(tmp_path):
    written = smoke_data.make_smoke_datasets(str(tmp_path), num_classes=6, images_per_class=3,
                                             size=16)
    assert {"cub200", "cars196", "online_products", "in-shop"} <= set(written)
    for name, folder in written.items():
        record = datasets.REGISTRY.get(name)
        assert all(os.path.isdir(os.path.join(folder, part)) for part in record.folders), name
        splits = datasets.load(name, str(tmp_path))
        assert splits.train.num_classes == 3, name


@pytest.mark.parametrize("name", ["omniglot", "digits"])
def test_bundled_datasets_have_their_published_size(name, omniglot_cache):
    splits = datasets.load(name, None)
    published = datasets.REGISTRY.get(name).published
    test = splits.evaluation["test"]
    assert (splits.train.num_classes, len(splits.train)) == published.train
    assert (test.num_classes, len(test)) == published.test


def test_records_are_complete_and_their_words_unambiguous():
    words = {}
    for record in datasets.described():
        assert record.defaults.arch and record.recall_ks == tuple(sorted(record.recall_ks))
        for word in (record.name, *record.aliases):
            assert word not in words, (word, record.name, words.get(word))
            words[word] = record.name
        if record.read_download is not None:  # tools.prepare --help shows its docstring
            assert record.read_download.__doc__ and record.published and record.folders
