"""Rows of a table at once (--jobs), as submitit jobs on this machine (LocalExecutor), and the
locks that keep two launchers off one row. The figures of every way are compared with the same
rows run one by one (SMOKE rows, one torch thread per row everywhere)."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from tests.fixtures import REPO_ROOT
from tools import _launch as launch

ROWS = ["cub200_margin_baseline", "cub200_margin_das"]
EPOCHS = ["--n_epochs", "3"]  # 20 steps an epoch on the data below: room to stop mid-epoch


def smoke_env(smoke_dir: Path, **more: str) -> Dict[str, str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATA_ROOT", "SMOKE", "GPU", "DEVICE", "SAVE_PATH", "SMOKE_DIR")}
    environment.update(PYTHON=sys.executable, SMOKE="1", SMOKE_DIR=str(smoke_dir), **more)
    return environment


def write_data(smoke_dir: Path) -> None:
    """The SMOKE datasets with 40 images per class (320 training images, 20 steps of 16)."""
    from tools.smoke_data import make_smoke_datasets

    make_smoke_datasets(str(smoke_dir / "data"), ["cub200", "cars196", "online_products"],
                        images_per_class=40)


def table2(smoke_dir: Path, *args: str, timeout: int = 300, **env: str
           ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO_ROOT / "table2.sh"), *args], capture_output=True,
                          text=True, env=smoke_env(smoke_dir, **env), timeout=timeout)


def table2_background(smoke_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO_ROOT / "table2.sh"), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=smoke_env(smoke_dir))


def runs(smoke_dir: Path) -> Path:
    return smoke_dir / "runs" / "table2"


def figures(folder: Path) -> List[Dict[str, str]]:
    """metrics.csv without the timing column."""
    with open(folder / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"}
                for row in csv.DictReader(handle)]


def state(smoke_dir: Path, row: str) -> Dict:
    return launch.read_state(str(runs(smoke_dir)), row)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def epochs_done(folder: Path) -> int:
    try:
        return len(figures(folder))
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="session")
def one_by_one(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[Dict[str, str]]]:
    """The reference: ROWS trained one after the other (SMOKE: in one process, 1 thread)."""
    smoke_dir = tmp_path_factory.mktemp("one_by_one")
    write_data(smoke_dir)
    result = table2(smoke_dir, *ROWS, "--", *EPOCHS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {row: figures(runs(smoke_dir) / row) for row in ROWS}


def test_jobs_2_runs_rows_at_once_with_the_figures_of_one_by_one(one_by_one, tmp_path):
    write_data(tmp_path)
    result = table2(tmp_path, *ROWS, "--jobs", "2", "--threads_per_row", "1", "--", *EPOCHS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all selected rows finished" in result.stdout
    assert "epoch 1:" not in result.stdout + result.stderr  # no progress bars on the terminal
    states = [state(tmp_path, row) for row in ROWS]
    assert [s["state"] for s in states] == ["finished", "finished"]
    # Both rows ran at the same time: each started before the other ended.
    assert max(s["started"] for s in states) < min(s["ended"] for s in states)
    for row in ROWS:
        folder = runs(tmp_path) / row
        # Same code, same machine, same thread count: the same floating-point sums.
        assert figures(folder) == one_by_one[row], row
        log = (folder / launch.LOG_FILE).read_text()
        assert "epoch 3/3 loss=" in log and "--savename " + row in log
    assert not list((runs(tmp_path) / ".sweep" / "logs").iterdir())  # moved into the folders


def test_a_second_launcher_skips_the_rows_a_running_one_holds(tmp_path):
    first = table2_background(tmp_path, *ROWS, "--jobs", "2", "--", "--n_epochs", "1")
    try:
        wait_for(lambda: all(state(tmp_path, row).get("state") == "running" for row in ROWS),
                 "the first launcher to start both rows")
        launcher = state(tmp_path, ROWS[0])["pid"]  # the Python process under table2.sh
        assert launcher == state(tmp_path, ROWS[1])["pid"]
        os.kill(launcher, signal.SIGSTOP)  # it keeps its locks while the second one looks
        try:
            second = table2(tmp_path, "cub200", "margin", "--jobs", "2", "--", "--n_epochs", "1")
        finally:
            os.kill(launcher, signal.SIGCONT)
        assert second.returncode == 1, second.stdout + second.stderr
        for row in ROWS:
            assert re.search(rf"  {row} +running elsewhere \(pid {launcher} on", second.stdout)
        output, _ = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, output[-3000:]
    assert all(epochs_done(runs(tmp_path) / row) == 1 for row in ROWS)  # trained once, by one

    # One more epoch each; one row's checkpoint is damaged: it fails, the other goes on.
    (runs(tmp_path) / ROWS[0] / "checkpoint_last.pth").write_bytes(b"damaged")
    more = table2(tmp_path, *ROWS, "--jobs", "2", "--", "--n_epochs", "2")
    assert more.returncode == 1, more.stdout + more.stderr
    failed = [line for line in more.stdout.splitlines() if line.startswith(f"  {ROWS[0]}")]
    assert failed and "FAILED (exit 2, epoch 1 of 2): error: " in failed[0], more.stdout
    assert "checkpoint" in failed[0]  # the row's own last error line says why
    assert re.search(rf"  {ROWS[1]} +finished \(continued", more.stdout), more.stdout
    assert f"1 row(s) not finished: {ROWS[0]}" in more.stdout
    assert epochs_done(runs(tmp_path) / ROWS[1]) == 2


def test_a_row_whose_run_folder_is_locked_by_a_main_py_is_left_alone(tmp_path):
    """A ``main.py --resume`` started by hand holds only the run folder's lock."""
    import fcntl

    from parameters import parse_options

    save_path = tmp_path / "runs"
    (save_path / "row").mkdir(parents=True)
    spec = launch.RowSpec("row", [], parse_options([]), str(save_path))
    with open(save_path / "row" / ".lock", "w") as handle:
        handle.write("4242\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)

        def never(argv, log, tick):
            raise AssertionError("a locked row must not run")

        outcome = launch.execute_row(spec, never)
    assert outcome.state == "elsewhere"
    assert outcome.text == "running elsewhere (main.py pid 4242)"


def test_local_executor_requeues_a_killed_row_which_resumes_to_the_same_figures(one_by_one,
                                                                                  tmp_path):
    """submitit's LocalExecutor: each row a job of its own processes; USR2 (what SLURM sends
    before a time limit) mid-epoch makes main.py save, the executor restarts the job, and the
    row continues with --resume to the figures of an uninterrupted run."""
    write_data(tmp_path)
    row = ROWS[1]
    result = table2(tmp_path, row, "--slurm", "--slurm_cluster", "local", "--cpus_per_row", "1",
                    "--slurm_time", "30", "--", *EPOCHS)
    assert result.returncode == 0 and "submitted" in result.stdout, result.stdout + result.stderr
    folder = runs(tmp_path) / row
    wait_for(lambda: epochs_done(folder) >= 1, "epoch 1 of the job")
    first = state(tmp_path, row)
    assert first["state"] == "running" and first["pid"] not in (os.getpid(),)
    os.kill(first["pid"], signal.SIGUSR2)
    wait_for(lambda: state(tmp_path, row).get("state") in ("finished", "failed", "stopped"),
             "the requeued job to end")
    final = state(tmp_path, row)
    assert final["state"] == "finished", final
    assert final["text"].startswith("finished (continued")
    log = (folder / launch.LOG_FILE).read_text()
    assert "stopped by SIGTERM during epoch" in log  # saved mid-epoch, not at an epoch's end
    pids = {line.split(" pid ")[1].split()[0] for line in log.splitlines()
            if line.startswith("==> ")}
    assert len(pids) == 2 and str(first["pid"]) in pids  # two job processes, one per start
    assert figures(folder) == one_by_one[row]  # same machine and threads: same sums


def test_slots_give_each_row_its_gpus_or_its_share_of_the_cores():
    four = ["0", "1", "2", "3"]
    slots = launch.plan_slots(None, four, per_gpu=1, gpus_per_row=1, threads_per_row=None,
                              cores=range(16))
    assert [s.gpus for s in slots] == four and [s.cores for s in slots][1] == (4, 5, 6, 7)
    slots = launch.plan_slots(None, four, per_gpu=2, gpus_per_row=1, threads_per_row=None,
                              cores=range(16))
    assert [s.gpus for s in slots] == four + four  # 2 rows a GPU; --jobs 4 takes 4 cards
    assert [s.gpus for s in launch.plan_slots(4, four, 2, 1, None, range(16))] == four
    slots = launch.plan_slots(None, four, per_gpu=1, gpus_per_row=2, threads_per_row=None,
                              cores=range(16))
    assert [s.gpus for s in slots] == ["0,1", "2,3"]  # torchrun over 2 GPUs per row
    slots = launch.plan_slots(2, [], per_gpu=1, gpus_per_row=1, threads_per_row=None,
                              cores=[0, 1, 2, 3, 4])
    assert [(s.gpus, s.cores, s.threads) for s in slots] == [(None, (0, 1), 2),
                                                             (None, (2, 3), 2)]
    assert launch.plan_slots(3, [], 1, 1, 1, [0, 1])[2].cores == (0,)  # more rows than cores
    with pytest.raises(launch.LaunchError, match="--jobs 9 exceeds the 8 GPU slots"):
        launch.plan_slots(9, four, 2, 1, None, range(16))
    with pytest.raises(launch.LaunchError, match="--gpus_per_row 8 needs that many GPUs"):
        launch.plan_slots(None, four, 1, 8, None, range(16))
    with pytest.raises(launch.LaunchError, match="rows train on the CPU"):
        launch.visible_gpus("0,1", cpu_rows=True)


def test_dry_run_estimates_steps_and_images_per_epoch(tmp_path):
    from parameters import parse_options
    from tools.smoke_data import make_smoke_datasets
    from tools.sweep import epoch_size

    make_smoke_datasets(str(tmp_path), ["cub200"], images_per_class=5)  # 8 train classes x 5
    options = parse_options(["--dataset", "cub200", "--source", str(tmp_path), "--bs", "8",
                             "--n_epochs", "3"])
    assert epoch_size(options, {}) == ("5 steps x 8 = 40 of 40 training images per epoch; "
                                       "3 epochs = 15 steps")
    options = parse_options(["--dataset", "cub200", "--source", str(tmp_path / "none")])
    assert epoch_size(options, {}).startswith("steps per epoch unknown (")
