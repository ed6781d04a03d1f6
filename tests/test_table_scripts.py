"""table1.sh and table2.sh: every row of the paper with the issue's settings (checked on the
commands of --dry-run), row selection, DATA_ROOT refusals, skip/continue of run folders,
passthrough of device and extra options, and the SMOKE=1 one-epoch sweeps."""
from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from parameters import parse_options
from tests.fixtures import REPO_ROOT
from tools import paper_tables as pt
from tools import sweep

DAS_KEYS = {"embedding_producer_used", "produce_type", "detach", "aux_loss", "aux_loss_weight"}
NARROW_DFS = (0.99, 1.01)
DEFAULT_DFS = (0.5, 2.0)


def run_script(script: str, *args: str, env: Dict[str, str] = None,
               timeout: int = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATA_ROOT", "SMOKE", "GPU", "DEVICE", "SAVE_PATH", "SMOKE_DIR")}
    environment["PYTHON"] = sys.executable  # the interpreter running the tests
    environment.update(env or {})
    return subprocess.run(["bash", str(REPO_ROOT / script), *args], capture_output=True,
                          text=True, env=environment, timeout=timeout)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Dataset folders with the subfolders the scripts check (no images needed for --dry-run)."""
    root = tmp_path / "data"
    for part in ("cub200/images", "cars196/images", "online_products/images",
                 "online_products/Info_Files"):
        (root / part).mkdir(parents=True)
    return root


def dry_run(script: str, data_root: Path, save_path: Path, *args: str,
            env: Dict[str, str] = None) -> Tuple[List[str], Dict[str, List[str]]]:
    """``(status comment lines, row name -> main.py argv)`` of a --dry-run."""
    result = run_script(script, str(data_root), "--dry-run", *args,
                        env=dict(env or {}, SAVE_PATH=str(save_path)))
    assert result.returncode == 0, result.stderr
    comments = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    commands = {}
    for line in result.stdout.splitlines():
        if line.startswith("python main.py"):
            argv = shlex.split(line)[2:]
            name = argv[argv.index("--savename") + 1] if "--savename" in argv else \
                os.path.basename(argv[argv.index("--resume") + 1])
            commands[name] = argv
    return comments, commands


def options_of(commands: Dict[str, List[str]]) -> Dict[str, Dict]:
    return {name: vars(parse_options(argv)) for name, argv in commands.items()}


def paper_cells(table: int) -> set:
    return {(key, dataset) for key, dataset, _ in pt.read_paper() if key.table == table}


@pytest.mark.parametrize("script,table,rows", [("table1.sh", 1, 12), ("table2.sh", 2, 42)])
def test_dry_run_lists_one_row_for_every_cell_of_the_paper(script, table, rows, data_root,
                                                           tmp_path):
    _, commands = dry_run(script, data_root, tmp_path / "runs")
    assert len(commands) == rows
    cells = set()
    for name, options in options_of(commands).items():
        row, dataset, reason = pt.identify(options)
        assert row is not None and row.table == table, (name, reason)
        assert options["source"] == str(data_root)
        cells.add((row, dataset))
        assert name == f"{dataset}_{name[len(dataset) + 1:]}"
        assert name.endswith("_das") == row.das
    assert cells == paper_cells(table)  # each cell exactly once (rows == number of cells)


def common_settings(options: Dict) -> None:
    assert options["n_epochs"] == 300 and options["tau"] == [200, 250]
    assert options["seed"] == 0 and options["samples_per_class"] == 2
    assert options["optim"] == "adam" and options["lr"] == pytest.approx(1e-5)
    assert options["pretrained"] and "frozen" in options["arch"].split("_")
    assert options["data_sampler"] == "class_random"


def das_settings(options: Dict) -> Tuple:
    return (options["das_dfs_scale_left"], options["das_dfs_scale_right"],
            options["das_mts_scale"], options["detach"], options["aux_loss"],
            options["das_not_normalize"], options["das_dfs_num_scale"])


def assert_baseline_is_das_row_without_das(options: Dict[str, Dict]) -> None:
    for name, das_row in options.items():
        if not name.endswith("_das"):
            continue
        baseline = options[name[:-len("_das")] + "_baseline"]
        assert baseline["embedding_producer_used"] is False and das_row["embedding_producer_used"]
        differing = {k for k in das_row if das_row[k] != baseline[k] and k != "savename"}
        assert differing <= DAS_KEYS | {k for k in das_row if k.startswith("das_")}, name


def test_table1_rows_have_the_papers_settings(data_root, tmp_path):
    _, commands = dry_run("table1.sh", data_root, tmp_path / "runs")
    options = options_of(commands)
    for name, o in options.items():
        common_settings(o)
        assert o["loss"] == "multisimilarity" and o["embed_dim"] == 512
        assert set(o["arch"].split("_")[1:]) == {"double", "frozen", "normalize"}
        cub_resnet = name.startswith("cub200_resnet50")
        assert (o["bs"], o["decay"]) == ((180, 0.0008) if cub_resnet else (112, 0.0004)), name
        assert o["no_train_metrics"] == (o["dataset"] == "online_products")
        assert o["train_metrics"] == (o["dataset"] != "online_products")
        if name.endswith("_das"):
            sop = o["dataset"] == "online_products"
            expected = (*(DEFAULT_DFS if sop else NARROW_DFS), 0.1 if sop else 0.01, not sop,
                        False, False, 8)
            assert das_settings(o) == expected, name
    # The published script trains this row on cub200 by mistake.
    assert options["cars196_resnet50_das"]["dataset"] == "cars196"
    assert_baseline_is_das_row_without_das(options)


SOP_TABLE2_DAS = {  # (dfs range, mts scale, detach, aux_loss) of the + DAS rows on SOP
    "triplet_semihard": (DEFAULT_DFS, 0.1, True, True),
    "triplet_distance": (DEFAULT_DFS, 0.1, True, True),
    "contrastive": (DEFAULT_DFS, 0.1, False, False),
    "margin": (DEFAULT_DFS, 0.01, False, False),
    "lifted": (NARROW_DFS, 0.1, False, False),
    "npair": (NARROW_DFS, 0.1, False, False),
    "multisimilarity": (DEFAULT_DFS, 0.1, False, False),
}


def test_table2_rows_have_the_papers_settings(data_root, tmp_path):
    _, commands = dry_run("table2.sh", data_root, tmp_path / "runs")
    options = options_of(commands)
    for name, o in options.items():
        common_settings(o)
        assert (o["bs"], o["decay"], o["embed_dim"]) == (112, 0.0004, 128)
        # The published table2.sh evaluates the training split on every row, SOP included.
        assert not o["no_train_metrics"] and o["train_metrics"], name
        dataset = o["dataset"]
        method = name[len(dataset) + 1:].rsplit("_", 1)[0]
        unnormalized = method in ("lifted", "npair")
        assert o["arch"] == ("resnet50_frozen" if unnormalized else "resnet50_frozen_normalize")
        if not name.endswith("_das"):
            continue
        left, right, mts, detach, aux, not_normalize, k = das_settings(o)
        assert k == 4 and not_normalize == unnormalized, name
        if dataset == "online_products":
            assert ((left, right), mts, detach, aux) == SOP_TABLE2_DAS[method], name
        else:
            assert ((left, right), mts, detach, aux) == (NARROW_DFS, 0.01, True, False), name
    assert_baseline_is_das_row_without_das(options)


def test_rows_are_chosen_by_words(data_root, tmp_path):
    _, commands = dry_run("table2.sh", data_root, tmp_path / "runs", "cub200", "margin", "das")
    assert list(commands) == ["cub200_margin_das"]
    _, commands = dry_run("table2.sh", data_root, tmp_path / "runs", "triplet", "sop", "baseline")
    assert sorted(commands) == ["online_products_triplet_distance_baseline",
                                "online_products_triplet_semihard_baseline"]
    _, commands = dry_run("table1.sh", data_root, tmp_path / "runs", "cub", "cars", "bninception")
    assert sorted(commands) == ["cars196_bninception_baseline", "cars196_bninception_das",
                                "cub200_bninception_baseline", "cub200_bninception_das"]
    result = run_script("table2.sh", str(data_root), "cub200", "tripletz", "--dry-run")
    assert result.returncode == 2
    assert "unknown row word 'tripletz'" in result.stderr and "multisimilarity" in result.stderr


def test_data_root_is_checked_before_anything_runs(data_root, tmp_path):
    save_path = tmp_path / "runs"
    env = {"SAVE_PATH": str(save_path)}
    result = run_script("table1.sh", env=env)
    assert result.returncode == 2 and "no DATA_ROOT" in result.stderr
    result = run_script("table1.sh", str(tmp_path / "missing"), env=env)
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_script("table1.sh", "cub200", env=dict(env, DATA_ROOT=str(tmp_path / "missing")))
    assert result.returncode == 2 and "does not exist" in result.stderr
    shutil.rmtree(data_root / "online_products")
    result = run_script("table2.sh", str(data_root), env=env)
    assert result.returncode == 2
    assert "online_products" in result.stderr and "cub200" in result.stderr  # what it does hold
    assert not save_path.exists()
    # The datasets that are there can still be run on their own.
    result = run_script("table2.sh", "cub200", "--dry-run", env=dict(env, DATA_ROOT=str(data_root)))
    assert result.returncode == 0 and result.stdout.count("python main.py") == 14


def test_main_py_options_and_device_pass_through(data_root, tmp_path):
    _, commands = dry_run("table1.sh", data_root, tmp_path / "runs", "sop", "--kernels", "2",
                          env={"GPU": "1"})
    for argv in commands.values():
        options = parse_options(argv)
        assert options.kernels == 2 and options.gpu == [1]
    _, commands = dry_run("table1.sh", data_root, tmp_path / "runs", "sop", "--", "--bs", "56",
                          env={"DEVICE": "cpu"})
    assert all(parse_options(argv).bs == 56 and parse_options(argv).device == "cpu"
               for argv in commands.values())
    # --dry-run belongs to the script wherever it stands before a literal --.
    result = run_script("table1.sh", str(data_root), "sop", "--kernels", "2", "--dry-run",
                        env={"SAVE_PATH": str(tmp_path / "runs")})
    assert result.returncode == 0 and result.stdout.count("python main.py") == 4
    result = run_script("table1.sh", str(data_root), "--no_such_option", "--dry-run")
    assert result.returncode == 2 and "unrecognized arguments: --no_such_option" in result.stderr


def fake_run_folder(folder: Path, argv: List[str], epochs: int, checkpoint: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(vars(parse_options(argv))))
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "loss", "test/recall@1"])
        for epoch in range(1, epochs + 1):
            writer.writerow([epoch, 0.5, 0.5])
    if checkpoint:
        (folder / "checkpoint_last.pth").write_bytes(b"placeholder")


def test_finished_rows_are_skipped_and_killed_ones_continued(data_root, tmp_path):
    save_path = tmp_path / "runs"
    _, commands = dry_run("table2.sh", data_root, save_path, "cub200", "margin")
    baseline, das = commands["cub200_margin_baseline"], commands["cub200_margin_das"]
    _, other = dry_run("table2.sh", data_root, save_path, "cub200", "npair")
    fake_run_folder(save_path / "cub200_margin_baseline", baseline, 300, checkpoint=True)
    fake_run_folder(save_path / "cub200_margin_das", das, 120, checkpoint=True)
    fake_run_folder(save_path / "cub200_npair_baseline", other["cub200_npair_baseline"], 0,
                    checkpoint=False)
    fake_run_folder(save_path / "cub200_npair_das", baseline, 5, checkpoint=True)  # wrong row
    comments, commands = dry_run("table2.sh", data_root, save_path, "cub200", "margin", "npair")
    assert "# cub200_margin_baseline: skip (finished): epoch 300 of 300" in comments
    assert "# cub200_margin_das: continue: from epoch 120 of 300" in comments
    assert commands["cub200_margin_das"][-2:] == ["--resume", str(save_path / "cub200_margin_das")]
    assert "# cub200_npair_baseline: train afresh (stale folder moved aside): no checkpoint to " \
           "continue from" in comments
    refused = [c for c in comments if c.startswith("# cub200_npair_das: refuse")]
    assert refused
    assert "--arch 'resnet50_frozen_normalize' there, 'resnet50_frozen' here" in refused[0]
    assert "more" in refused[0]  # --loss, --das_not_normalize, ... differ too
    assert sorted(commands) == ["cub200_margin_das", "cub200_npair_baseline"]


def test_a_row_runs_as_its_own_process_and_is_continued_for_more_epochs(tmp_path):
    """The default (non-SMOKE) path: ``python main.py`` per row, then ``--resume``."""
    from tools.smoke_data import make_smoke_datasets

    make_smoke_datasets(str(tmp_path / "data"), ["cub200"])
    tiny = ["--arch", "tinycnn_frozen_normalize", "--not_pretrained", "--kernels", "0",
            "--crop_size", "32", "--bs", "16", "--device", "cpu"]
    env = {"SAVE_PATH": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    first = run_script("table2.sh", str(tmp_path / "data"), "cub200_margin_das", "--",
                       *tiny, "--n_epochs", "1", env=env, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "cub200_margin_das  finished (trained" in first.stdout
    more = run_script("table2.sh", str(tmp_path / "data"), "cub200_margin_das", "--",
                      *tiny, "--n_epochs", "2", env=env, timeout=300)
    assert more.returncode == 0, more.stdout[-2000:] + more.stderr[-2000:]
    assert "cub200_margin_das  finished (continued" in more.stdout
    folder = tmp_path / "runs" / "cub200_margin_das"
    with open(folder / "metrics.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]
    config = json.loads((folder / "config.json").read_text())
    assert config["loss"] == "margin" and config["embedding_producer_used"] and config["detach"]


def test_smoke_swaps_only_the_backbone_and_refuses_an_unknown_one():
    args = sweep.smoke_args(["--loss", "margin", "--arch", "resnet50_frozen_normalize_double"])
    assert args == ["--loss", "margin", "--arch", "tinycnn_frozen_normalize_double",
                    *sweep.SMOKE_OPTIONS]
    assert sweep.smoke_args(["--arch", "resnet18_frozen"], "resnet50")[:2] == [
        "--arch", "resnet50_frozen"]
    with pytest.raises(sweep.SweepError, match="unknown backbone in --arch 'vgg16_frozen'"):
        sweep.smoke_args(["--arch", "vgg16_frozen"])


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", "-x", "table1.sh", "table2.sh", "tools/sweep.sh"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script,rows", [("table1.sh", 12), ("table2.sh", 42)])
def test_smoke_sweep_trains_every_row_for_one_epoch(script, rows, tmp_path):
    result = run_script(script, env={"SMOKE": "1", "SMOKE_DIR": str(tmp_path)}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all selected rows finished" in result.stdout
    table = script.split(".")[0]
    folders = sorted(folder for folder in (tmp_path / "runs" / table).iterdir()
                     if not folder.name.startswith("."))  # .sweep: the launcher's locks, state
    assert len(folders) == rows
    for folder in folders:
        with open(folder / "metrics.csv", newline="") as handle:
            epochs = [int(r["epoch"]) for r in csv.DictReader(handle)]
        assert epochs == [1], folder.name
        config = json.loads((folder / "config.json").read_text())
        # The stand-in backbone keeps the row's arch words; the row's other options stay.
        assert config["arch"].startswith("tinycnn") and config["n_epochs"] == 1
        assert config["embedding_producer_used"] == folder.name.endswith("_das")
    if table == "table2":
        lifted = json.loads((tmp_path / "runs" / table / "cub200_lifted_das" /
                             "config.json").read_text())
        assert lifted["arch"] == "tinycnn_frozen" and lifted["das_not_normalize"]
        assert (lifted["loss"], lifted["batch_mining"], lifted["detach"]) == ("lifted", "lifted",
                                                                              True)
    # A second run finds every row finished and trains nothing.
    again = run_script(script, "cub200", env={"SMOKE": "1", "SMOKE_DIR": str(tmp_path)})
    assert again.returncode == 0 and "finished (trained" not in again.stdout
    assert again.stdout.count("finished (skipped)") == (4 if table == "table1" else 14)
