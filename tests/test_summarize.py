"""tools.summarize: runs differing only in --seed become one mean +- std row."""
from __future__ import annotations

import csv
import math

import pytest

from tools import summarize
from utilities import run_folder as rf

BASE = {"dataset": "cub200", "loss": "triplet", "lr": 1e-5, "n_epochs": 2,
        "storage_metric": "recall@1"}


def make_run(root, name, seed, epochs, **settings):
    """A run folder: config.json and metrics.csv rows ``epochs`` = [{column: value}, ...]."""
    folder = root / name
    folder.mkdir(parents=True)
    rf.write_config(str(folder), dict(BASE, seed=seed, savename=name, save_path=str(root),
                                      **settings))
    table = rf.MetricsTable(str(folder))
    for epoch, values in enumerate(epochs, start=1):
        table.append(dict(epoch=epoch, loss=0.1, **values))
    return folder


@pytest.fixture
def runs(tmp_path):
    # triplet: last-epoch recall@1 0.5, 0.6, 0.7 (seeds 0, 1, 2; one with another worker count,
    # which is bookkeeping, not a setting); best epochs 0.8, 0.6, 0.7.
    make_run(tmp_path, "a0", 0, [{"test/recall@1": 0.8, "test/dists@intra": 0.3},
                                 {"test/recall@1": 0.5, "test/dists@intra": 0.5}])
    make_run(tmp_path, "a1", 1, [{"test/recall@1": 0.4, "test/dists@intra": 0.4},
                                 {"test/recall@1": 0.6, "test/dists@intra": 0.7}], kernels=3)
    make_run(tmp_path / "nested", "a2", 2, [{"test/recall@1": 0.1, "test/dists@intra": 0.1},
                                            {"test/recall@1": 0.7, "test/dists@intra": 0.9}])
    # margin: 0.4, 0.5
    make_run(tmp_path, "b0", 0, [{"test/recall@1": 0.3}, {"test/recall@1": 0.4}], loss="margin")
    make_run(tmp_path, "b1", 1, [{"test/recall@1": 0.2}, {"test/recall@1": 0.5}], loss="margin")
    return tmp_path


def test_groups_by_everything_but_the_seed(runs):
    groups = summarize.group_runs(summarize.read_runs(str(runs)))
    assert sorted(len(g.runs) for g in groups) == [2, 3]
    assert sorted(summarize.labels(groups)) == ["loss=margin", "loss=triplet"]


def test_mean_std_and_count_of_the_last_and_best_epochs(runs):
    groups = summarize.group_runs(summarize.read_runs(str(runs)))
    columns = ["test/recall@1", "test/dists@intra"]
    last = {e["group"]: e for e in summarize.summarize(groups, columns, "last")}
    mean, std, count = last["loss=triplet"]["test/recall@1"]
    assert (mean, count) == (pytest.approx(0.6), 3) and std == pytest.approx(0.1)  # n - 1
    mean, std, count = last["loss=margin"]["test/recall@1"]
    assert (mean, std, count) == (pytest.approx(0.45), pytest.approx(math.sqrt(0.005)), 2)
    assert last["loss=margin"]["test/dists@intra"] is None
    assert last["loss=triplet"]["seeds"] == [0, 1, 2]
    best = {e["group"]: e for e in summarize.summarize(groups, columns, "best")}
    assert best["loss=triplet"]["test/recall@1"][0] == pytest.approx(0.7)  # (0.8 + 0.6 + 0.7) / 3
    assert best["loss=triplet"]["test/dists@intra"][0] == pytest.approx((0.3 + 0.7 + 0.9) / 3)


def test_command_prints_percent_and_raw_figures_and_writes_csv(runs, tmp_path, capsys):
    out = tmp_path / "summary.csv"
    assert summarize.main([str(runs), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| loss=triplet | 0 1 2 | 0.7000 +- 0.2000 (3) | 60.00 +- 10.00 (3) |" in printed
    assert "| loss=margin | 0 1 | - | 45.00 +- 7.07 (2) |" in printed
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    triplet = next(r for r in rows if r["group"] == "loss=triplet")
    assert float(triplet["test/recall@1 mean"]) == pytest.approx(0.6)
    assert triplet["test/recall@1 n"] == "3"


def test_single_seed_has_no_spread(tmp_path, capsys):
    make_run(tmp_path, "only", 0, [{"test/recall@1": 0.25}], n_epochs=1)
    assert summarize.main([str(tmp_path)]) == 0
    assert "| all runs | 0 | 25.00 (1) |" in capsys.readouterr().out


def test_a_run_stopped_before_its_n_epochs_is_not_averaged_with_finished_ones(runs, capsys):
    make_run(runs, "a3", 3, [{"test/recall@1": 0.0}])  # stopped after epoch 1 of 2
    groups = summarize.group_runs(summarize.read_runs(str(runs)))
    last = {e["group"]: e for e in summarize.summarize(groups, ["test/recall@1"], "last")}
    assert last["loss=triplet"]["test/recall@1"][0] == pytest.approx(0.6)  # still 3 finished
    assert last["loss=triplet (stopped early: seed 3 at epoch 1 of 2)"]["seeds"] == [3]


def test_bad_input_is_one_message(runs, tmp_path, capsys):
    assert summarize.main([str(runs), "--metrics", "test/recall@3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --metrics test/recall@3") and "test/recall@1" in err
    (tmp_path / "empty").mkdir()
    assert summarize.main([str(tmp_path / "empty")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert summarize.main([str(tmp_path / "missing")]) == 2
    assert "RUNS_DIR" in capsys.readouterr().err


def test_seeds_group_whatever_machine_ran_them():
    """Thread count, process count and --compile are recorded in config.json but change no
    setting: two seeds run on different machines are one setting (parameters.bookkeeping_keys)."""
    from tools._seed_groups import settings_of

    first = {"loss": "margin", "lr": 1e-5, "seed": 0, "torch_threads": 2, "world_size": 1,
             "compile": False, "device": "cpu"}
    second = dict(first, seed=1, torch_threads=16, world_size=4, compile=True, device="cuda")
    assert settings_of(first) == settings_of(second)
    assert settings_of(first) != settings_of(dict(first, lr=1e-4))
