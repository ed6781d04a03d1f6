"""The member contracts of docs/ARCHITECTURE.md, checked on the document's own examples.

Each example (criterion, miner, backbone, sampler) is read from its fenced block under
``### Example <kind> member``, written as a file and imported into its concept package the way
the package's ``__init__`` imports its own files (``Registry.import_members``), into a copy of
the registry that is put back afterwards. It must then pass the checks the suite runs on every
member of its kind (the same test functions, called here), show its options in ``--help``, and
train one ``main.py`` epoch with DAS on next to the real members.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
from types import ModuleType
from typing import Dict, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import architectures
import batchminer
import criteria
import datasampler
import main
import parameters
import tests.test_criteria as criteria_suite
import tests.test_criteria_training as training_suite
import tests.test_datasampler as sampler_suite
import tests.test_miners as miner_suite
from tests.fixtures import DAS_ON, documented_example, dropped_in
from utilities import run_folder as rf

# kind -> (its package, the file the example is written as, the name it registers)
EXAMPLES = {
    "criterion": (criteria, "toy_pairs", "toy_pairs"),
    "miner": (batchminer, "toy_close", "toy_close"),
    "backbone": (architectures, "toynet", "toynet"),
    "sampler": (datasampler, "toy_classes", "toy_classes"),
}
ARCH = "toynet_normalize"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Iterator[Dict[str, ModuleType]]:
    """The four documented examples, registered for this module's tests only."""
    root = tmp_path_factory.mktemp("examples")
    with contextlib.ExitStack() as stack:
        modules = {kind: stack.enter_context(dropped_in(package, stem, documented_example(kind),
                                                        root / package.__name__))
                   for kind, (package, stem, _) in EXAMPLES.items()}
        for kind, (package, _, name) in EXAMPLES.items():
            assert name in package.REGISTRY.names(), (kind, name)
        yield modules
    for package, _, name in EXAMPLES.values():
        assert name not in package.REGISTRY, f"{name} is still registered after the module"


@pytest.fixture(scope="module")
def opt(examples):
    """The default options, parsed with the examples' options declared (shadows conftest's)."""
    return parameters.parse_options([])


# ---------------------------------------------------------------- the checks of every member


def test_criterion_example_passes_the_checks_of_every_criterion(examples, opt, monkeypatch):
    criteria_suite.test_every_criterion_declares_how_it_plugs_in()
    criteria_suite.test_accepted_miners_follow_from_the_miners_output(monkeypatch)
    # every registered criterion, the example too, on a DAS-shaped batch: tuples and
    # tuples_with_generated are detached 0-d tensors, 0 < with generated < all
    criteria_suite.test_all_tuple_criteria_count_generated_rows(opt)
    assert "toy_close" in criteria.REGISTRY.get("toy_pairs").accepted_miners


def test_criterion_example_trains_with_a_real_miner_and_a_real_criterion_with_the_example_miner(
        examples):
    training_suite.test_training_lowers_the_loss("toy_pairs", "semihard")
    training_suite.test_training_lowers_the_loss("triplet", "toy_close")


def test_criterion_example_computes_in_float32_under_bf16_autocast(examples, opt):
    torch.manual_seed(0)
    labels = torch.arange(8).repeat(4)
    embeddings = F.normalize(torch.randn(32, opt.embed_dim), dim=1)
    criterion = criteria.select("toy_pairs", opt, 8, batchminer.select("semihard", opt))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = criterion(embeddings, labels)
    assert inside.dtype == torch.float32
    assert [group["params"] for group in criterion.param_groups()] == [[criterion.boundary]]


def test_miner_example_passes_the_checks_of_every_triplet_miner(examples, opt, monkeypatch):
    miner_suite.test_triplet_miners_shape_range_device("toy_close", opt)
    miner_suite.test_triplet_miners_negatives_have_other_labels("toy_close", opt)
    monkeypatch.setattr(miner_suite, "TRIPLET_MINERS", [*miner_suite.TRIPLET_MINERS, "toy_close"])
    miner_suite.test_miners_without_any_positive_return_no_triplets(opt)
    miner = batchminer.select("toy_close", opt)
    embeddings, labels = miner_suite.make_batch(generated_copies=1)
    miner(embeddings.requires_grad_(), labels)
    assert miner.stats and all(v.dim() == 0 and not v.requires_grad for v in miner.stats.values())


def test_sampler_example_passes_the_checks_of_every_sampler(examples, monkeypatch):
    monkeypatch.setitem(sampler_suite.OWN_OPTIONS, "toy_classes",
                        (["--data_toy_min_images", "3"], dict(min_images=3)))
    sampler_suite.test_every_sampler_is_covered_by_the_from_options_test()
    sampler_suite.test_from_options_builds_the_sampler_from_its_own_options("toy_classes")


def test_sampler_example_batches_are_whole_classes_set_by_seed_and_epoch(examples):
    labels = np.repeat(np.arange(10), [1, 1] + [4] * 8)
    sampler = datasampler.select("toy_classes", labels, 8, 2, seed=3, min_images=2)
    batches = list(sampler)
    assert len(batches) == len(labels) // 8 == len(sampler)
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and set(counts) == {2} and not {0, 1} & set(classes)
    assert list(datasampler.select("toy_classes", labels, 8, 2, seed=3, min_images=2)) == batches
    resumed = datasampler.select("toy_classes", labels, 8, 2, seed=3, min_images=2)
    resumed.load_state_dict({"epoch": 0, "start_batch": 2})
    assert list(resumed) == batches[2:]
    resumed.set_epoch(1)
    assert list(resumed) != batches
    with pytest.raises(ValueError, match="--data_toy_min_images 5 images; the training split "
                                         "has 0"):
        datasampler.select("toy_classes", labels, 8, 2, min_images=5)


def test_backbone_example_builds_an_embedding_network_and_loads_its_weights(examples, tmp_path):
    torch.manual_seed(0)
    model = architectures.select(ARCH, embed_dim=24, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert architectures.parse_arch("toynet_frozen_normalize_run7").words == {
        "frozen", "normalize", "run7"}
    assert architectures.with_backbone("resnet50_frozen_normalize", "toynet") == \
        "toynet_frozen_normalize"
    with pytest.raises(architectures.PretrainedWeightsError, match="--not_pretrained"):
        architectures.select(ARCH, 24, pretrained=True)
    weights = tmp_path / "toynet.pth"
    torch.save(model.features.state_dict(), weights)
    loaded = architectures.select(ARCH, 24, pretrained=True, pretrained_path=str(weights))
    torch.testing.assert_close(loaded.features.state_dict(), model.features.state_dict())


# ---------------------------------------------------------------- the command line


def test_examples_options_are_in_main_help(examples, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(["--help"])
    assert stop.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for kind, (package, _, name) in EXAMPLES.items():
        for option in getattr(package.REGISTRY.get(name), "options", ()):
            assert option.names[0] in shown, (kind, option)
            assert " ".join(option.settings["help"].split()) in shown, (kind, option)
    criteria_suite.test_every_member_option_is_collected_once()


@pytest.mark.parametrize("flag,nope,valid", [
    ("--loss", "nope", "error: unknown criterion 'nope' for --loss; valid names: "),
    ("--batch_mining", "nope", "error: unknown batch miner 'nope' for --batch_mining; valid "
                               "names: "),
    ("--data_sampler", "nope", "error: unknown data sampler 'nope' for --data_sampler; valid "
                               "names: "),
    ("--arch", "nope_normalize", "error: unknown backbone in --arch 'nope_normalize'; the name "
                                 "must start with one of: "),
])
def test_an_unknown_name_still_stops_with_the_list(examples, flag, nope, valid, tiny_folder,
                                                   tmp_path, capsys):
    code = main.run(["--dataset", "folder", "--source", str(tiny_folder), "--kernels", "0",
                     "--not_pretrained", "--save_path", str(tmp_path), flag, nope])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(valid) and len(err.strip().splitlines()) == 1, err
    listed = err.strip()[len(valid):]
    kind = {"--loss": "criterion", "--batch_mining": "miner", "--data_sampler": "sampler",
            "--arch": "backbone"}[flag]
    assert EXAMPLES[kind][2] in listed.split(", ")


# ---------------------------------------------------------------- one main.py epoch with DAS


@pytest.mark.parametrize("loss,miner", [("toy_pairs", "semihard"), ("triplet", "toy_close")])
def test_examples_train_one_main_epoch_with_das(examples, loss, miner, tiny_folder, tmp_path):
    """The example backbone and sampler with the example criterion and a real miner, then with
    a real criterion and the example miner: the generated rows reach the criterion, its stats
    reach metrics.csv, its options config.json, its learnable boundary the optimizer."""
    folder = main.main([
        "--dataset", "folder", "--source", str(tiny_folder), "--n_epochs", "1", "--bs", "8",
        "--samples_per_class", "2", "--arch", ARCH, "--not_pretrained", "--crop_size", "16",
        "--kernels", "0", "--embed_dim", "16", "--loss", loss, "--batch_mining", miner,
        "--data_sampler", "toy_classes", "--data_toy_min_images", "2",
        "--loss_toy_pairs_margin", "0.3", "--miner_toy_close_cutoff", "1.2",
        "--save_path", str(tmp_path), "--savename", "run", "--evaluation_metrics", "recall@1",
        *DAS_ON])
    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert math.isfinite(float(last["loss"])) and math.isfinite(float(last["test/recall@1"]))
    tuples = float(last["stats/criterion/tuples"])
    assert 0 < float(last["stats/criterion/tuples_with_generated"]) <= tuples
    config = rf.read_config(folder)
    assert (config["data_toy_min_images"], config["loss_toy_pairs_margin"],
            config["miner_toy_close_cutoff"]) == (2, 0.3, 1.2)
    checkpoint = torch.load(os.path.join(folder, rf.LAST_CHECKPOINT), map_location="cpu",
                            weights_only=True)
    assert checkpoint["network"]["arch"] == ARCH
    if miner == "toy_close":
        assert 0 <= float(last["stats/criterion/miner_close_fraction"]) <= 1
    else:  # the semihard margin follows --loss_<name>_margin; the boundary trained
        assert config["miner_semihard_margin"] == 0.3
        assert checkpoint["criterion"]["boundary"].item() != 1.0
