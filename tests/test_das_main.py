"""End-to-end ``main.py`` runs with DAS: tiny generated data (and a resume that continues the DAS
state), and the real Omniglot data. Short runs: ResNet18 from scratch, small crops, 1 epoch."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

from tests.fixtures import DAS_ON, FAST_RUN, REPO_ROOT
from tools.smoke_data import make_smoke_datasets

SHORT_RUN = FAST_RUN + DAS_ON


def run_main(args: List[str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_row(folder: Path) -> Dict[str, str]:
    with open(folder / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))[-1]


def das_state(folder: Path) -> Dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint_last.pth", map_location="cpu", weights_only=True)["das"]


def generated_data_run(tmp_path: Path, options: List[str]) -> List[str]:
    source = tmp_path / "data"
    make_smoke_datasets(str(source), ["cub200"], num_classes=16, images_per_class=4, size=32)
    return ["--dataset", "cub200", "--source", str(source), "--bs", "16",
            "--samples_per_class", "2", "--embed_dim", "32", "--das_dfs_num_scale", "8",
            "--save_path", str(tmp_path / "runs"), "--savename", "das", *SHORT_RUN, *options]


def test_main_with_das_on_generated_data_and_resume(tmp_path):
    # distinct classes per batch: every class meets a pair of its own in the first epoch
    common = generated_data_run(tmp_path, ["--loss", "multisimilarity",
                                           "--data_sampler", "class_random_distinct"])
    run_main(common + ["--n_epochs", "1"])
    folder = tmp_path / "runs" / "das"
    row = last_row(folder)
    distance = float(row["stats/das/real_generated_distance"])
    assert math.isfinite(distance) and distance > 0
    assert float(row["stats/criterion/tuples_with_generated"]) > 0
    assert float(row["stats/criterion/tuples_real_only"]) > 0
    assert math.isclose(float(row["stats/criterion/tuples_real_only"]) +
                        float(row["stats/criterion/tuples_with_generated"]),
                        float(row["stats/criterion/tuples"]), rel_tol=1e-4)
    assert math.isfinite(float(row["test/recall@1"]))

    state = das_state(folder)
    assert state["dfs_counter"].shape == (8, 32)  # the 8 training classes, --embed_dim 32
    assert state["mts_bank"].shape == (8, 10, 32)
    counted = int(state["dfs_counter"].sum())
    assert counted > 0 and counted % (8 * 16) == 0  # K=8 per real row, whole batches of 16
    assert int(state["mts_fill"].min()) > 0  # every class has met a pair of its own

    # Resume for a second epoch: the counter continues from the saved one, it does not restart.
    run_main(common + ["--n_epochs", "2", "--resume", str(folder)])
    resumed = das_state(folder)
    assert int(resumed["dfs_counter"].sum()) == 2 * counted
    assert torch.all(resumed["dfs_counter"] >= state["dfs_counter"])


def test_main_with_das_detach_aux_loss_unnormalized_on_generated_data(tmp_path):
    """The SOP triplet setting of Table 2 (--aux_loss --detach), unnormalized and a narrow DFS
    range, through a miner-based criterion."""
    run_main(generated_data_run(tmp_path, [
        "--loss", "triplet", "--batch_mining", "semihard", "--detach", "--aux_loss",
        "--das_not_normalize", "--das_dfs_scale_left", "0.99", "--das_dfs_scale_right", "1.01",
        "--das_mts_scale", "0.1", "--n_epochs", "1"]))
    row = last_row(tmp_path / "runs" / "das")
    assert math.isfinite(float(row["stats/das/loss_real"]))
    assert math.isfinite(float(row["stats/das/loss_with_generated"]))
    assert float(row["stats/das/real_generated_distance"]) > 0


def test_main_with_das_on_omniglot(tmp_path, omniglot_root):
    run_main(["--dataset", "folder", "--source", str(omniglot_root),
              "--folder_name", "images_background_small1", "--bs", "112",
              "--samples_per_class", "2", "--embed_dim", "64", "--das_dfs_num_scale", "8",
              "--n_epochs", "1", "--save_path", str(tmp_path), "--savename", "omniglot_das",
              *SHORT_RUN])
    folder = tmp_path / "omniglot_das"
    row = last_row(folder)
    assert 0.0 < float(row["test/recall@1"]) <= 1.0
    assert float(row["stats/das/real_generated_distance"]) > 0
    state = das_state(folder)
    assert state["dfs_counter"].shape == (68, 64)  # the first 68 of 136 characters train
    assert int(state["dfs_counter"].sum()) % (8 * 112) == 0
