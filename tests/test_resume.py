"""Runs that survive: exact resume after SIGKILL and after a stop request, safe checkpoints,
faults stopped with one message."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import criteria
import main
from tests.fixtures import REPO_ROOT, stop_after
from utilities import checkpoint as ckpt
from utilities import run_folder as rf

REPO = REPO_ROOT
# CPU float reductions depend on torch's thread count, so every run of this module, in this
# process or a subprocess, uses the same one, whatever earlier tests left behind.
THREADS = 1


@pytest.fixture(scope="module", autouse=True)
def pinned_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


def subprocess_environment():
    return dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))


def run_args(source: Path, epochs: int = 3, das: bool = True):
    args = ["--dataset", "folder", "--source", str(source), "--n_epochs", str(epochs),
            "--bs", "16", "--samples_per_class", "4", "--arch", "resnet18_frozen_normalize",
            "--not_pretrained", "--crop_size", "32", "--kernels", "0", "--lr", "1e-3",
            "--embed_dim", "32", "--evaluation_metrics", "recall@1", "recall@4", "map@r", "nmi",
            "--log_every", "1"]
    return args + (["--embedding_producer_used", "--das_dfs_num_scale", "4"] if das else [])


def figures(folder: str):
    """metrics.csv without the wall-clock column."""
    with open(os.path.join(folder, rf.METRICS_FILE), newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_s"}
                for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def uninterrupted(generated_folder, tmp_path_factory) -> str:
    return main.main(run_args(generated_folder) + ["--save_path", str(tmp_path_factory.mktemp("full"))])  # noqa: E501


def test_sigkill_after_epoch_one_then_resume_matches_the_uninterrupted_run(
        generated_folder, tmp_path, uninterrupted):
    folder = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "main.py", *run_args(generated_folder), "--save_path", str(tmp_path),
         "--savename", "killed"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=subprocess_environment())
    checkpoint = folder / rf.LAST_CHECKPOINT
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(figures(str(folder))) < 3
    assert rf.read_config(str(folder))["torch_threads"] == THREADS
    torch.set_num_threads(THREADS + 1)  # a resume continues with the run's own thread count
    main.main(["--resume", str(folder)])
    assert torch.get_num_threads() == THREADS + 1  # and leaves the caller's as it was
    torch.set_num_threads(THREADS)
    assert figures(str(folder)) == figures(uninterrupted)
    assert len(figures(str(folder))) == 3


StopAfter = stop_after(4)

def test_stop_mid_epoch_saves_and_resume_matches_the_uninterrupted_run(
        generated_folder, tmp_path, uninterrupted, monkeypatch, capsys):
    monkeypatch.setattr(main, "StopRequest", StopAfter)
    with pytest.raises(SystemExit) as stopped:
        main.main(run_args(generated_folder) + ["--save_path", str(tmp_path), "--savename", "stop"])
    assert stopped.value.code == 130
    assert "stopped by SIGTERM during epoch" in capsys.readouterr().out
    state = ckpt.load_checkpoint(str(tmp_path / "stop" / rf.LAST_CHECKPOINT))
    assert state["sampler"]["start_batch"] > 0
    monkeypatch.undo()
    main.main(["--resume", str(tmp_path / "stop")])
    assert figures(str(tmp_path / "stop")) == figures(uninterrupted)


def test_sigterm_becomes_a_stop_request():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = main.StopRequest()
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_resume_continues_tensorboard_and_keeps_earlier_rows(generated_folder, tmp_path,
                                                             uninterrupted):
    folder = tmp_path / "copy"
    shutil.copytree(uninterrupted, folder)
    rows_before = figures(str(folder))
    main.main(["--resume", str(folder), "--n_epochs", "4"])
    rows_after = figures(str(folder))
    assert rows_after[:3] == rows_before and [r["epoch"] for r in rows_after] == ["1", "2", "3", "4"]  # noqa: E501


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_good_checkpoint(
        generated_folder, tmp_path, monkeypatch, capsys):
    real_select = criteria.select

    def poisoned_select(*args, **kwargs):
        criterion = real_select(*args, **kwargs)
        real_forward = criterion.forward
        calls = {"n": 0}

        def forward(*f_args, **f_kwargs):
            calls["n"] += 1
            loss = real_forward(*f_args, **f_kwargs)
            return loss * float("nan") if calls["n"] == 4 else loss  # epoch 2, step 1 (3 steps/epoch)  # noqa: E501

        criterion.forward = forward
        return criterion

    monkeypatch.setattr(criteria, "select", poisoned_select)
    args = run_args(generated_folder, das=False) + ["--save_path", str(tmp_path), "--savename", "nan"]  # noqa: E501
    assert main.run(args) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2, step 1" in err and "Traceback" not in err
    state = ckpt.load_checkpoint(str(tmp_path / "nan" / rf.LAST_CHECKPOINT))
    assert state["epoch"] == 1


def test_corrupt_image_mid_epoch_is_named_without_a_worker_traceback(generated_folder, tmp_path,
                                                                     capsys):
    source = tmp_path / "data"
    shutil.copytree(generated_folder, source)
    broken = source / "class_00" / "3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    args = run_args(source, epochs=1) + ["--save_path", str(tmp_path)]
    args[args.index("--kernels") + 1] = "1"
    assert main.run(args) == 2
    err = capsys.readouterr().err
    assert f"cannot decode image '{broken}'" in err
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_checkpoint_of_another_arch_or_size_is_refused(uninterrupted, tmp_path, capsys):
    folder = tmp_path / "other"
    shutil.copytree(uninterrupted, folder)
    config = rf.read_config(str(folder))
    config.update(embed_dim=64, arch="resnet50_frozen_normalize")
    rf.write_config(str(folder), config)
    assert main.run(["--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "--embed_dim 32 there, 64 here" in err
    assert "--arch 'resnet18_frozen_normalize' there, 'resnet50_frozen_normalize' here" in err


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint_last.pth")
    ckpt.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def dies_midway(obj, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint_last.pth"]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_loading_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"epoch": 1, "payload": Payload()}, path)
    with pytest.raises(ckpt.CheckpointError, match="weights_only=True"):
        ckpt.load_checkpoint(str(path))
