"""Rows as SLURM jobs, against a real one-node cluster (``.ci/slurm_cluster.sh``: munged,
slurmctld and slurmd on this machine). A row preempted mid-epoch (``scancel --signal=USR2``, the
signal submitit's checkpointing answers) is requeued and ends with the figures of an uninterrupted
run. Skipped, saying why, where the cluster cannot start (not root, no packages); with
``DAS_REQUIRE_SLURM=1`` (CI) that is a failure instead."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.fixtures import REPO_ROOT
from tests.test_sweep_parallel import (EPOCHS, ROWS, epochs_done, figures, one_by_one,  # noqa: F401
                                       runs, state, table2, wait_for, write_data)
from tools import _launch as launch

CLUSTER_SCRIPT = REPO_ROOT / ".ci" / "slurm_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of the running one-node cluster; stopped at the end if this session started
    it."""
    required = os.environ.get("DAS_REQUIRE_SLURM") == "1"
    try:
        result = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True,
                                text=True, timeout=900)
        lines = result.stdout.splitlines()
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
    except (OSError, subprocess.TimeoutExpired) as error:
        result, lines, reason = None, [], f"slurm_cluster.sh did not finish: {error}"
    conf = next((line.split("=", 1)[1] for line in lines if line.startswith("SLURM_CONF=")), "")
    if result is None or result.returncode != 0 or not conf:
        message = f"no SLURM test cluster: {reason}"
        if required:
            pytest.fail(message + " (DAS_REQUIRE_SLURM=1: this run must test SLURM)")
        pytest.skip(message)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF")
    else:
        os.environ["SLURM_CONF"] = previous
    if "STARTED=1" in lines:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, timeout=120)


def squeue_state(job: str) -> str:
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%T", "-j", job], capture_output=True,
                            text=True)
    return result.stdout.strip()


def test_rows_as_slurm_jobs_are_requeued_after_preemption_and_resume_to_the_same_figures(
        slurm_cluster, one_by_one, tmp_path):  # noqa: F811
    write_data(tmp_path)
    submit = [*ROWS, "--slurm", "--cpus_per_row", "1", "--slurm_time", "30", "--slurm_parallel",
              "2", "--", *EPOCHS]
    result = table2(tmp_path, *submit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 row(s) submitted (at most 2 at once)" in result.stdout
    jobs = launch.read_jobs(str(runs(tmp_path)))
    assert sorted(jobs) == sorted(ROWS)
    assert all("_" in job for job in jobs.values())  # one job array, a task per row

    preempted = ROWS[1]
    job = jobs[preempted]
    folder = runs(tmp_path) / preempted
    wait_for(lambda: epochs_done(folder) >= 1, f"epoch 1 of SLURM job {job}")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: state(tmp_path, preempted).get("state") == "requeued", "the requeue")
    # While it waits in the queue, a second launch leaves it there.
    again = table2(tmp_path, preempted, *submit[len(ROWS):])
    assert f"{preempted}  in SLURM already: job {job} PENDING" in again.stdout, again.stdout
    assert "0 row(s) submitted" in again.stdout

    def started_again() -> bool:
        if squeue_state(job) == "PENDING":  # SLURM holds a requeued job ~2 minutes: not here
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                           capture_output=True)
        return state(tmp_path, preempted).get("state") not in ("requeued", "submitted")

    wait_for(started_again, f"job {job} to start again")
    wait_for(lambda: all(state(tmp_path, row).get("state") in ("finished", "failed", "stopped")
                         for row in ROWS), "both rows to end")
    for row in ROWS:
        assert state(tmp_path, row)["state"] == "finished", state(tmp_path, row)
        # Same machine, one thread per row everywhere: the same sums.
        assert figures(runs(tmp_path) / row) == one_by_one[row], row
    assert state(tmp_path, preempted)["text"].startswith("finished (continued")
    assert "stopped by SIGTERM during epoch" in (folder / launch.LOG_FILE).read_text()

    status = table2(tmp_path, *ROWS, "--status")
    assert status.returncode == 0 and "2 of 2 rows finished" in status.stdout, status.stdout
    third = table2(tmp_path, *submit)
    assert third.stdout.count("finished (skipped)") == 2 and "0 row(s) submitted" in third.stdout
    wait_for(lambda: not any(squeue_state(j) for j in jobs.values()), "the jobs to leave", 60)
