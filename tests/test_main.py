"""main.py end to end: a generated folder dataset and the real Omniglot data, on CPU."""
from __future__ import annotations

import csv
import glob
import os

import pytest
import torch

import main
from tests.fixtures import FAST_RUN
from utilities import run_folder as rf

# Small enough for a 2-core CPU: resnet18 from scratch at 32x32 crops.
FAST = FAST_RUN + ["--lr", "1e-3", "--log_every", "5"]


def read_metrics(folder: str):
    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        return list(csv.DictReader(handle))


def test_main_trains_and_leaves_a_complete_run_folder(generated_folder, tmp_path, single_thread):
    # What the run leaves, not what it learns: 14 steps on 56 test images cannot tell learning
    # from float rounding (R@1 after 2 epochs moved either way across seeds and CPU kernel sets).
    # Learning is asserted on Omniglot below, with a margin measured under each kernel set.
    folder = main.main(["--dataset", "folder", "--source", str(generated_folder), "--n_epochs", "2",
                        "--bs", "8", "--samples_per_class", "2", "--eval_initial",
                        "--save_path", str(tmp_path), "--savename", "glyphs", *FAST])
    assert folder == str(tmp_path / "glyphs")
    for name in (rf.CONFIG_FILE, rf.METRICS_FILE, rf.SUMMARY_FILE, rf.LAST_CHECKPOINT,
                 rf.BEST_CHECKPOINT):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    rows = read_metrics(folder)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for column in ("loss", "test/recall@1", "test/recall@8", "test/nmi", "test/f1", "test/map@r",
                   "test/r_precision", "stats/criterion/tuples", "stats/criterion/tuples_real_only"):  # noqa: E501
        assert column in rows[0], column
    losses = [float(row["loss"]) for row in rows[1:]]
    assert all(0 < loss < 100 for loss in losses), losses  # trained: finite multi-similarity loss
    assert rows[0]["loss"] == "nan"  # epoch 0 is the untrained network: evaluated, not trained
    summary = open(os.path.join(folder, rf.SUMMARY_FILE)).read()
    assert "selected by test/recall@1" in summary and "last epoch (2)" in summary
    config = rf.read_config(folder)
    assert config["dataset"] == "folder" and config["bs"] == 8 and config["pretrained"] is False
    best = torch.load(os.path.join(folder, rf.BEST_CHECKPOINT), weights_only=True)
    assert best["best"]["key"] == "test/recall@1"
    assert best["network"]["embed_dim"] == 128


@pytest.mark.training_outcome
def test_default_pipeline_learns_unseen_omniglot_characters(omniglot_cache, tmp_path):
    # The bundled default (tinycnn from scratch on Omniglot) for 3 of its 8 epochs lifts R@1 on
    # the 68 unseen characters by 0.126-0.158 (seeds 0 and 1, under ATen's default and avx2
    # kernels with and without oneDNN narrowed alike; docs/PERFORMANCE.md); 0.07, about half the
    # smallest gain seen, is out of rounding's reach.
    folder = main.main(["--n_epochs", "3", "--evaluation_metrics", "recall@1",
                        "--save_path", str(tmp_path)])
    rows = read_metrics(folder)
    before, after = float(rows[0]["test/recall@1"]), float(rows[-1]["test/recall@1"])
    assert after > before + 0.07, (before, after)


def test_default_run_is_bundled_omniglot_and_evaluates_the_untrained_network(omniglot_cache,
                                                                           tmp_path):
    folder = main.main(["--n_epochs", "0", "--kernels", "0", "--evaluation_metrics", "recall@1",
                        "--save_path", str(tmp_path)])
    config = rf.read_config(folder)
    assert (config["dataset"], config["train_classes"], config["train_images"]) == \
        ("omniglot", 68, 1360)
    rows = read_metrics(folder)
    assert [row["epoch"] for row in rows] == ["0"]  # --eval_initial is on by default here
    assert 0.1 < float(rows[0]["test/recall@1"]) < 0.4  # untrained: 21.6% (docs/PERFORMANCE.md)


def test_same_seed_gives_the_same_losses(generated_folder, tmp_path):
    # Exact equality holds here because both runs share this process: the same CPU kernel set and
    # thread count. Across machines the figures differ in the last bits (docs/PERFORMANCE.md).
    args = ["--dataset", "folder", "--source", str(generated_folder), "--n_epochs", "1",
            "--bs", "16", "--samples_per_class", "4", "--evaluation_metrics", "recall@1", *FAST]
    first = main.main(args + ["--save_path", str(tmp_path / "a")])
    second = main.main(args + ["--save_path", str(tmp_path / "b")])
    assert read_metrics(first)[0]["loss"] == read_metrics(second)[0]["loss"]
    assert read_metrics(first)[0]["test/recall@1"] == read_metrics(second)[0]["test/recall@1"]


@pytest.mark.parametrize("extra,message", [
    (["--loss", "nosuchloss"], "unknown criterion 'nosuchloss' for --loss; valid names: "),
    (["--bs", "30", "--samples_per_class", "4"], "--bs 30 is not divisible by --samples_per_class 4"),  # noqa: E501
    (["--samples_per_class", "15", "--bs", "30", "--data_sampler", "class_random_distinct"],
     "larger than training class"),
    (["--arch", "vgg_normalize"], "unknown backbone in --arch 'vgg_normalize'"),
    (["--data_sampler", "balanced"], "unknown data sampler 'balanced'"),
    (["--embedding_producer_used", "--das_dfs_num_scale", "200", "--embed_dim", "64"],
     "--das_dfs_num_scale"),
    (["--embedding_producer_used", "--das_dfs_scale_left", "2", "--das_dfs_scale_right", "1"],
     "--das_dfs_scale_left"),
    (["--embedding_producer_used", "--produce_type", "mixup"], "DAS"),
    (["--evaluation_metrics", "recall@1", "precision"], "unknown metric 'precision'"),
    (["--evaluation_metrics", "nmi", "f1"], "--storage_metric recall@1 selects checkpoint_best.pth"),  # noqa: E501
])
def test_bad_options_stop_at_start_up_with_one_message(generated_folder, tmp_path, capsys, extra,
                                                       message):
    code = main.run(["--dataset", "folder", "--source", str(generated_folder), "--n_epochs", "1",
                     "--bs", "16", "--samples_per_class", "4", "--save_path", str(tmp_path),
                     *FAST, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_missing_source_and_unwritable_save_path_are_named(tmp_path, capsys, generated_folder):
    assert main.run(["--dataset", "cub200", "--source", str(tmp_path / "nowhere"), *FAST]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main.run(["--dataset", "folder", "--source", str(generated_folder), "--bs", "16",
                     "--samples_per_class", "4", "--save_path", str(blocker / "runs"), *FAST]) == 2
    assert "cannot write run folder" in capsys.readouterr().err


def test_resume_of_a_folder_without_checkpoint_is_refused(tmp_path, capsys):
    assert main.run(["--resume", str(tmp_path)]) == 2
    assert f"--resume '{tmp_path}' holds no checkpoint_last.pth" in capsys.readouterr().err


def test_validation_split_selects_the_best_checkpoint_and_train_metrics_are_logged(
        generated_folder, tmp_path):
    folder = main.main(["--dataset", "folder", "--source", str(generated_folder), "--n_epochs", "2",
                        "--bs", "8", "--samples_per_class", "4", "--use_tv_split",
                        "--tv_split_perc", "0.5", "--train_metrics",
                        "--evaluation_metrics", "recall@1", "map@r",
                        "--save_path", str(tmp_path), *FAST])
    rows = read_metrics(folder)
    for column in ("val/recall@1", "test/recall@1", "train/recall@1", "val/map@r"):
        assert column in rows[-1], column
    config = rf.read_config(folder)
    assert config["train_classes"] == 2  # 2 of the 4 training classes; the other 2 validate
    best = torch.load(os.path.join(folder, rf.BEST_CHECKPOINT), weights_only=True)["best"]
    assert best["key"] == "val/recall@1"
    assert best["value"] == pytest.approx(max(float(r["val/recall@1"]) for r in rows), abs=1e-5)
    summary = open(os.path.join(folder, rf.SUMMARY_FILE)).read()
    assert "selected by val/recall@1 (split 'val')" in summary
