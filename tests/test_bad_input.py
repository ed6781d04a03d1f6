"""Bad input refused before it costs anything, damaged files named, failures during a run
reported in one line (issue 10). Tiny runs: tinycnn on the generated 8-class folder."""
from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import main
from parameters import build_parser
from training import build, checks, loop, stops
from tests.fixtures import torch_threads
from utilities import checkpoint as ckpt
from utilities import options
from tools import paper_tables as pt
from utilities import run_folder as rf

# 4 training classes x 14 images at --bs 16: 3 steps an epoch.
TINY = ["--dataset", "folder", "--arch", "tinycnn_normalize", "--not_pretrained", "--crop_size",
        "16", "--kernels", "0", "--lr", "1e-3", "--bs", "16", "--samples_per_class", "4",
        "--evaluation_metrics", "recall@1", "--embed_dim", "16"]
NOWHERE = ["--dataset", "cub200", "--source", "/nonexistent/data"]  # reading it would fail


@pytest.fixture(autouse=True)
def one_thread(single_thread):
    yield


@pytest.fixture
def restore_signals():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def tiny(source: Path, save_path: Path, *extra: str, epochs: int = 1, name: str = "run"):
    return [*TINY, "--source", str(source), "--n_epochs", str(epochs), "--save_path",
            str(save_path), "--savename", name, *extra]


@pytest.fixture(scope="module")
def finished_run(generated_folder, tmp_path_factory) -> Path:
    """A finished one-epoch run; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    with torch_threads(1):
        return Path(main.main(tiny(generated_folder, root)))


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(finished_run, folder)
    return folder


def rows(folder: Path):
    with open(folder / rf.METRICS_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- item 2: ranges
@pytest.mark.parametrize("extra,message", [
    (["--eval_bs", "0"], "argument --eval_bs: expected an integer in [1, 4096], got 0"),
    (["--kmeans_iterations", "0"], "argument --kmeans_iterations: expected an integer >= 1, got 0"),
    (["--log_every", "0"], "argument --log_every: expected an integer >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got -1"),
    (["--device", "tpu:7"], "argument --device: expected cpu, cuda or cuda:N, got 'tpu:7'"),
    (["--device", "meta"], "device type 'meta' is not supported"),
    (["--tau", "-1"], "argument --tau: expected an integer >= 1, got -1"),
    (["--tau", "100", "0"], "argument --tau: expected an integer >= 1, got 0"),
    (["--gamma", "-5"], "argument --gamma: expected a number > 0, got -5"),
    (["--das_dfs_scale_left", "-0.5"], "argument --das_dfs_scale_left: expected a number > 0"),
    (["--das_dfs_scale_right", "-2"], "argument --das_dfs_scale_right: expected a number > 0"),
    (["--aux_loss_weight", "-100"], "argument --aux_loss_weight: expected a number >= 0, got -100"),
    (["--loss_softtriplet_n_centroids", "-1"],
     "argument --loss_softtriplet_n_centroids: expected an integer >= 1, got -1"),
    (["--lr", "0"], "argument --lr: expected a number > 0, got 0"),
    (["--lr", "nan"], "argument --lr: expected a number > 0, got nan"),
    (["--bs", "0"], "argument --bs: expected an integer in [1, 4096], got 0"),
    (["--bs", "ten"], "argument --bs: expected an integer in [1, 4096], got 'ten'"),
    (["--fc_lr", "-2"], "argument --fc_lr: expected -1 or a number > 0, got -2"),
    (["--tv_split_perc", "1"], "argument --tv_split_perc: expected a number in (0, 1), got 1"),
])
def test_out_of_range_values_stop_in_one_line_before_anything_runs(capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        main.main([*NOWHERE, *extra])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "usage:" not in err


def test_every_numeric_option_declares_a_range_that_holds_its_default_and_shows_in_help():
    parser = build_parser()
    for action in parser._actions:
        assert action.type not in (int, float), f"{action.option_strings} has no declared range"
        if isinstance(action.type, options.Range) and action.default is not None:
            defaults = action.default if isinstance(action.default, list) else [action.default]
            assert all(action.type.contains(v) for v in defaults), action.option_strings
    help_text = " ".join(parser.format_help().split())
    assert "--eval_bs EVAL_BS Batch size for computing evaluation embeddings (default: --bs; at " \
           "most 4096, as --bs). Valid: an integer in [1, 4096]." in help_text
    assert "At most 1024: a batch of larger crops" in help_text  # --crop_size says why
    assert "Valid: an integer >= 1 each." in help_text  # --tau
    assert "--loss_softtriplet_n_centroids LOSS_SOFTTRIPLET_N_CENTROIDS Valid: an integer >= 1." \
           in help_text


@pytest.mark.parametrize("extra,message", [
    (["--loss", "multisimilarity", "--batch_mining", "nosuchminer"],
     "unknown batch miner 'nosuchminer' for --batch_mining; valid names: "),
    (["--loss", "triplet", "--batch_mining", "npair"],
     "criterion 'triplet' does not accept --batch_mining npair"),
    (["--das_dfs_num_scale", "8", "--das_mts_scale", "0.1"],
     "--das_dfs_num_scale, --das_mts_scale act only with --embedding_producer_used"),
    (["--detach"], "--detach acts only with --embedding_producer_used"),
    (["--embedding_producer_used", "--das_dfs_scale_left", "2", "--das_dfs_scale_right", "1"],
     "--das_dfs_scale_left 2.0 is larger than --das_dfs_scale_right"),
    (["--device", "cuda:3"], "--device cuda:3"),
    (["--arch", "vgg_normalize"], "unknown backbone"),
])
def test_inconsistent_options_stop_before_data_is_read(capsys, extra, message):
    if extra == ["--device", "cuda:3"] and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a fourth CUDA device")
    assert main.run([*NOWHERE, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert "/nonexistent/data" not in err  # refused before the data was looked at


def test_a_validation_split_of_one_class_is_refused_before_training(generated_folder, tmp_path,
                                                                    capsys):
    # 4 training classes; 0.75 keeps 3 for training and leaves one to validate on.
    args = tiny(generated_folder, tmp_path, "--use_tv_split", "--tv_split_perc", "0.75")
    assert main.run(args) == 2
    err = capsys.readouterr().err
    assert "--use_tv_split with --tv_split_perc 0.75 leaves 1 validation class" in err
    assert not (tmp_path / "run").exists()  # stopped before the run folder was made


# ----------------------------------------------------------------------------- item 1: resume
def test_resume_with_equals_sign_continues_the_run(run_copy):
    config_before = json.loads((run_copy / rf.CONFIG_FILE).read_text())
    main.main([f"--resume={run_copy}", "--n_epochs", "2"])
    assert [r["epoch"] for r in rows(run_copy)] == ["1", "2"]
    config_after = json.loads((run_copy / rf.CONFIG_FILE).read_text())
    assert config_after["n_epochs"] == 2 and config_after["lr"] == config_before["lr"]
    assert config_after["savename"] == config_before["savename"]
    assert ckpt.load_checkpoint(str(run_copy / rf.LAST_CHECKPOINT))["epoch"] == 2


def test_resume_refuses_other_training_options_naming_them(run_copy, capsys):
    before = (run_copy / rf.METRICS_FILE).read_text(), (run_copy / rf.CONFIG_FILE).read_text()
    assert main.run(["--resume", str(run_copy), "--lr", "5", "--loss", "triplet"]) == 2
    err = capsys.readouterr().err
    assert "--lr 5.0 (the run has 0.001)" in err and "--loss 'triplet'" in err
    assert ((run_copy / rf.METRICS_FILE).read_text(), (run_copy / rf.CONFIG_FILE).read_text()) \
        == before


def test_resume_accepts_options_equal_to_the_saved_ones(run_copy):
    main.main(["--resume", str(run_copy), "--lr", "0.001", "--loss", "multisimilarity",
               "--n_epochs", "2", "--kernels", "0"])
    assert [r["epoch"] for r in rows(run_copy)] == ["1", "2"]


def test_a_second_process_on_the_same_run_folder_stops_in_one_line(run_copy, capsys):
    import fcntl

    with open(run_copy / rf.LOCK_FILE, "a+") as held:  # as the process training there holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main.run(["--resume", str(run_copy), "--n_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"run folder '{run_copy}' is in use by another process" in err
    assert len(err.strip().splitlines()) == 1
    assert [r["epoch"] for r in rows(run_copy)] == ["1"]


# ----------------------------------------------------------------------------- item 5: data
@pytest.mark.parametrize("change,message", [
    ("remove_class", "4 training classes then, 3 now"),
    ("rename_class", "the training class names differ"),
    ("remove_image", "56 training images then, 55 now"),
])
def test_resume_after_the_training_data_changed_is_refused(generated_folder, tmp_path, capsys,
                                                           change, message):
    data = tmp_path / "data"
    shutil.copytree(generated_folder, data)
    folder = Path(main.main(tiny(data, tmp_path)))
    if change == "remove_class":  # 6 classes: 3 train, 3 test
        shutil.rmtree(data / "class_06")
        shutil.rmtree(data / "class_07")
    elif change == "rename_class":
        (data / "class_00").rename(data / "class_00_renamed")
    else:
        (data / "class_01" / "0.png").unlink()
    assert main.run(["--resume", str(folder), "--n_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "the training data changed since the run started" in err and message in err
    assert "Traceback" not in err and "size mismatch" not in err


def test_config_records_the_class_fingerprint_and_thread_count(finished_run):
    config = rf.read_config(str(finished_run))
    assert config["train_classes"] == 4 and config["train_images"] == 56
    assert config["train_classes_sha256"] == rf.class_list_sha256(
        [f"class_{c:02d}" for c in (3, 1, 2, 0)])
    assert config["torch_threads"] == 1


# ----------------------------------------------------------------------------- item 6: files
@pytest.mark.parametrize("damage,reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a file written by torch.save"),
    (lambda p: p.write_text("hello"), "not a file written by torch.save"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: torch.save([1, 2], p), "is not a checkpoint of main.py (it holds a list)"),
    (lambda p: torch.save({"epoch": 1}, p), "is not a checkpoint of main.py (no 'global_step'"),
])
def test_damaged_checkpoint_is_named_without_unsafe_advice(run_copy, capsys, damage, reason):
    damage(run_copy / rf.LAST_CHECKPOINT)
    assert main.run(["--resume", str(run_copy), "--n_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"'{run_copy / rf.LAST_CHECKPOINT}' is not a checkpoint" in err and reason in err
    assert "weights_only=False" not in err and "`weights_only`" not in err
    assert len(err.strip().splitlines()) == 1


def test_pretrained_path_that_is_not_a_checkpoint_is_named(generated_folder, tmp_path, capsys):
    weights = tmp_path / "weights.pth"
    weights.write_text('{"not": "weights"}')
    args = tiny(generated_folder, tmp_path, "--pretrained_path", str(weights))
    args[args.index("--arch") + 1] = "resnet18_normalize"
    assert main.run(args) == 2
    err = capsys.readouterr().err
    assert f"--pretrained_path '{weights}' is not a checkpoint (" in err
    assert "weights_only=False" not in err and "`weights_only`" not in err


def _drop_lr(config):
    del config["lr"]
    return config


@pytest.mark.parametrize("damage,message", [
    (lambda text: text[:-20], "is not valid JSON"),
    (lambda text: "[1, 2]", "holds a JSON list, expected an object of options"),
    (lambda text: json.dumps(_drop_lr(json.loads(text))), "has no key 'lr' (option --lr)"),
    (lambda text: json.dumps(dict(json.loads(text), bs="many")),
     "key 'bs' (option --bs): expected an integer in [1, 4096], got 'many'"),
    (lambda text: json.dumps(dict(json.loads(text), lr=None)),
     "key 'lr' (option --lr): expected a"),
    (lambda text: json.dumps(dict(json.loads(text), use_tv_split="yes")),
     "key 'use_tv_split' (option --use_tv_split): expected true or false"),
])
def test_damaged_config_json_is_named_with_the_key(run_copy, capsys, damage, message):
    path = run_copy / rf.CONFIG_FILE
    path.write_text(damage(path.read_text()))
    assert main.run(["--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err and "Traceback" not in err


# ----------------------------------------------------------------------------- item 7: failures
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(generated_folder, tmp_path,
                                                               monkeypatch, capsys):
    real_save, calls = torch.save, {"n": 0}

    def fills_the_disk(obj, target, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 saves best and last; epoch 2 finds the disk full
            with open(target, "wb") as handle:
                handle.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                               "failed writing file data/3: file write failed")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    assert main.run(tiny(generated_folder, tmp_path, epochs=2)) == 2
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "is the disk full?" in err
    assert "the previous checkpoint is kept" in err and "enforce fail" not in err
    monkeypatch.undo()
    assert ckpt.load_checkpoint(str(tmp_path / "run" / rf.LAST_CHECKPOINT))["epoch"] == 1
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".tmp_")]


def test_no_space_left_is_said_in_words(tmp_path, monkeypatch):
    def no_space(obj, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(ckpt.CheckpointWriteError, match="the disk is full"):
        ckpt.save_checkpoint({"epoch": 1}, str(tmp_path / "c.pth"))


class DiesInWorker(build.SeededDataset):
    """Kills its own DataLoader worker (as the out-of-memory killer would) on its 20th item."""

    calls = 0

    def __getitem__(self, index):
        if torch.utils.data.get_worker_info() is not None:
            DiesInWorker.calls += 1  # per worker process
            if DiesInWorker.calls == 20:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


def test_a_killed_loader_worker_is_one_line_saying_how_to_continue(generated_folder, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setattr(build, "SeededDataset", DiesInWorker)
    args = tiny(generated_folder, tmp_path, epochs=2)
    args[args.index("--kernels") + 1] = "2"
    assert main.run(args) == 2
    err = capsys.readouterr().err
    assert "error: a data loader worker died" in err
    assert f"Continue with: python main.py --resume {tmp_path / 'run'} --kernels 1" in err
    assert "Traceback" not in err


def test_second_signal_during_a_save_finishes_the_save_then_exits(generated_folder, tmp_path,
                                                                  monkeypatch, capsys,
                                                                  restore_signals):
    real_save = ckpt.save_checkpoint

    def interrupted_twice(state, path):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
        real_save(state, path)

    monkeypatch.setattr(ckpt, "save_checkpoint", interrupted_twice)
    with pytest.raises(SystemExit) as stopped:
        main.run(tiny(generated_folder, tmp_path, epochs=3))
    assert stopped.value.code == 130
    out = capsys.readouterr().out
    assert "stopped by a second SIGINT during the save after epoch 1" in out
    assert f"python main.py --resume {tmp_path / 'run'}" in out
    monkeypatch.undo()
    assert ckpt.load_checkpoint(str(tmp_path / "run" / rf.LAST_CHECKPOINT))["epoch"] == 1


def test_second_signal_outside_a_save_stops_at_once(restore_signals):
    stop = main.StopRequest()
    stop.install()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested
    with stop.saving():
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.exit_after_save
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_non_finite_weights_after_a_finite_loss_stop_in_one_line(generated_folder, tmp_path,
                                                                 monkeypatch, capsys):
    real_step, calls = loop.training_step, {"n": 0}

    def diverging_step(model, *args, **kwargs):
        loss = real_step(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # the last step of epoch 2: its loss was finite
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(loop, "training_step", diverging_step)
    assert main.run(tiny(generated_folder, tmp_path, "--log_every", "100", epochs=3)) == 2
    err = capsys.readouterr().err
    assert "error: non-finite weights at epoch 2, step 3 (the loss was finite" in err
    assert "Traceback" not in err
    assert ckpt.load_checkpoint(str(tmp_path / "run" / rf.LAST_CHECKPOINT))["epoch"] == 1


# ----------------------------------------------------------------------------- item 8: tables
def test_paper_tables_skip_damaged_run_folders_with_a_warning(tmp_path, capsys):
    good = dict(dataset="cub200", arch="resnet50_frozen_normalize", embed_dim=128, loss="margin",
                batch_mining="distance", embedding_producer_used=False, n_epochs=2,
                storage_metric="recall@1")
    header = "epoch,loss,lr,test/recall@1,test/f1,test/nmi\n"
    complete = header + "1,0.5,1e-5,0.5,0.3,0.6\n2,0.5,1e-5,0.6,0.3,0.6\n"
    damaged = {
        "not_json": ("{oops", complete),
        "a_list": ("[1]", complete),
        "ill_typed": (json.dumps(dict(good, embed_dim="big")), complete),
        "short_row": (json.dumps(good), header + "1,0.5,1e-5,0.5,0.3,0.6\n2,0.5\n"),
        "bad_epoch": (json.dumps(good),
                      header + "1,0.5,1e-5,0.5,0.3,0.6\ntwo,0.5,1e-5,0.6,0.3,0.6\n"),
        "no_epoch": (json.dumps(good), "loss,lr\n0.5,1e-5\n"),
        "good": (json.dumps(dict(good, loss="contrastive")), complete),
    }
    for name, (config, metrics_text) in damaged.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text(config)
        (tmp_path / "runs" / name / "metrics.csv").write_text(metrics_text)
    assert pt.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    for name in damaged:
        assert (f"warning: skipping run folder '{tmp_path / 'runs' / name}'" in err) == \
            (name != "good"), name
    with open(tmp_path / "out" / "runs.csv", newline="") as handle:
        used = {Path(r["folder"]).name: r["used"] for r in csv.DictReader(handle)}
    assert used == {name: "yes" if name == "good" else "no" for name in damaged}


def test_range_helper_messages():
    assert options.between(0.0, 1.0, open_low=True).describe() == "a number in (0, 1]"
    assert options.at_least(2).describe() == "an integer >= 2"
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number >= 0, got inf"):
        options.non_negative_float("inf")
    assert options.greater_than(0.0, also=(-1,))("-1") == -1.0


def test_interrupt_outside_a_save_is_one_line_with_the_resume_command(generated_folder, tmp_path,
                                                                     monkeypatch, capsys):
    real_epoch, calls = main.train_one_epoch, {"n": 0}

    def interrupted_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what StopRequest raises on a second Ctrl-C
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(main, "train_one_epoch", interrupted_in_epoch_two)
    assert main.run(tiny(generated_folder, tmp_path, epochs=2)) == 130
    err = capsys.readouterr().err
    assert ("error: interrupted; the last saved checkpoint is kept. Continue with: python "
            f"main.py --resume {tmp_path / 'run'}") in err and "Traceback" not in err


def raised_through(error: BaseException, *files: str) -> BaseException:
    """``error`` with a traceback through functions defined in ``files`` (outermost first), as
    when it is raised inside torch's DataLoader while unpickling a worker's batch."""
    namespace = {"error": error}
    code = "def inner():\n    raise error\n"
    for depth, name in enumerate(reversed(files)):
        exec(compile(code, name, "exec"), namespace)
        namespace[f"f{depth}"] = namespace["inner"]
        code = f"def inner():\n    f{depth}()\n"
    try:
        namespace[f"f{len(files) - 1}"]()
    except type(error) as caught:
        return caught
    raise AssertionError("not raised")


@pytest.mark.parametrize("files,died", [
    (("/x/torch/utils/data/dataloader.py", "/x/multiprocessing/resource_sharer.py"), True),
    (("/x/torch/utils/data/_utils/fetch.py", "/x/my_dataset.py"), False),  # no workers involved
    (("/x/utilities/run_folder.py",), False),
])
def test_a_connection_reset_counts_as_a_dead_worker_only_inside_the_loader(files, died):
    error = raised_through(ConnectionResetError(104, "Connection reset by peer"), *files)
    assert stops.died_in_loader_worker(error) is died


def test_torchs_late_worker_error_still_gives_the_one_line(tmp_path, monkeypatch, capsys):
    """torch's SIGCHLD handler may raise its RuntimeError wherever the main thread is, e.g. while
    a broken connection from the same death is being handled: the epochs' guard (as main() runs
    them) still says it in one line."""
    def late_signal(argv):
        with stops.stops_reported(str(tmp_path / "run"), 4):
            try:
                raise ConnectionResetError(104, "Connection reset by peer")
            except ConnectionResetError:
                raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed.")

    monkeypatch.setattr(main, "main", late_signal)
    assert main.run([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a data loader worker died (DataLoader worker (pid 4242) is "
                          "killed by signal: Killed")
    assert f"Continue with: python main.py --resume {tmp_path / 'run'} --kernels 2" in err


def test_a_worker_death_outside_the_guard_is_not_called_a_file_error(tmp_path, monkeypatch,
                                                                      capsys):
    """A ConnectionResetError from inside the loader (e.g. while the storage sampler's embeddings
    are refreshed, outside train_one_epoch) is a dead worker, not "cannot access"."""
    error = raised_through(ConnectionResetError(104, "Connection reset by peer"),
                           "/x/torch/utils/data/dataloader.py",
                           "/x/multiprocessing/resource_sharer.py")

    def dies(argv):
        with stops.stops_reported(str(tmp_path / "run"), 2):
            raise error

    monkeypatch.setattr(main, "main", dies)
    assert main.run([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a data loader worker died ([Errno 104] Connection reset by peer")
    assert "cannot access" not in err
    assert f"Continue with: python main.py --resume {tmp_path / 'run'} --kernels 1" in err


# ----------------------------------------------------------------------------- issue 20
@pytest.mark.parametrize("extra,message", [
    (["--crop_size", "100000"], "argument --crop_size: expected an integer in [1, 1024], got "
                                "100000"),
    (["--bs", "1000000"], "argument --bs: expected an integer in [1, 4096], got 1000000"),
    (["--eval_bs", "5000"], "argument --eval_bs: expected an integer in [1, 4096], got 5000"),
    (["--embed_dim", "100000"], "argument --embed_dim: expected an integer in [1, 8192]"),
    (["--samples_per_class", "9999"], "argument --samples_per_class: expected an integer in "
                                      "[1, 4096]"),
    (["--kernels", "100000"], "argument --kernels: expected an integer in [0, 256]"),
])
def test_size_options_have_an_upper_bound_the_machine_can_meet(capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        main.main([*NOWHERE, *extra])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_data_is_read(capsys, monkeypatch):
    monkeypatch.setattr(checks, "machine_memory_bytes", lambda: 8 * 2**30)
    assert main.run([*NOWHERE, "--bs", "512", "--crop_size", "1024"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --bs 512 at --crop_size 1024 needs 6.0 GiB") and \
        "this machine's 8.0 GiB" in err and "/nonexistent/data" not in err
    assert main.run([*NOWHERE, "--bs", "16", "--eval_bs", "4096", "--crop_size", "512"]) == 2
    assert "--eval_bs 4096 at --crop_size 512" in capsys.readouterr().err


def test_das_save_frequency_beyond_n_epochs_is_refused_at_start_up(capsys):
    assert main.run([*NOWHERE, "--embedding_producer_used", "--n_epochs", "3",
                     "--das_save_frequency_epochs", "2", "5"]) == 2
    err = capsys.readouterr().err
    assert "--das_save_frequency_epochs 5 lies beyond --n_epochs 3" in err
    assert "/nonexistent/data" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["savename_slash", "savename_sub", "save_path_inside"])
def test_a_new_run_inside_an_existing_run_folder_is_refused(finished_run, tmp_path, capsys,
                                                            where):
    parent, name = finished_run.parent, finished_run.name
    save_path, savename = {"savename_slash": (parent, name + "/"),
                           "savename_sub": (parent, f"{name}/again"),
                           "save_path_inside": (finished_run, "again")}[where]
    args = [*NOWHERE, "--save_path", str(save_path), "--savename", savename]
    before = sorted(os.listdir(finished_run))
    assert main.run(args) == 2
    err = capsys.readouterr().err
    assert f"inside the run folder '{finished_run}'" in err or \
        f"the existing run folder '{finished_run}'" in err
    assert "/nonexistent/data" not in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(finished_run)) == before


def damaged_network(key_change):
    """A function damaging the network weights of a checkpoint in place."""
    def damage(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        weights = state["network"]["state_dict"]
        key_change(weights)
        torch.save(state, path)
    return damage


def _first_float(weights):
    return next(k for k, v in weights.items() if v.dtype.is_floating_point)


def _nan(weights):
    weights[_first_float(weights)][0].fill_(float("nan"))


def _inf_last(weights):
    weights["last_linear.weight"][0, 0] = float("inf")


def _rename(weights):
    key = _first_float(weights)
    weights[key + "_renamed"] = weights.pop(key)


def _reshape(weights):
    weights["last_linear.weight"] = torch.zeros(3, 3)


def _no_data(weights):
    weights["last_linear.weight"] = torch.empty(weights["last_linear.weight"].shape, device="meta")


def _string(weights):
    weights["last_linear.bias"] = "not a tensor"


def _optimizer_nan(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"].fill_(float("nan"))
    torch.save(state, path)


def _optimizer_groups(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    torch.save(state, path)


@pytest.mark.parametrize("damage,message", [
    (damaged_network(_nan), "holds NaN or infinite weights in 1 tensor(s)"),
    (damaged_network(_inf_last), "holds NaN or infinite weights in 1 tensor(s) (first: "
                                 "'last_linear.weight')"),
    (damaged_network(_rename), "does not hold the weights of --arch 'tinycnn_normalize': 1 "
                               "tensor(s) of --arch 'tinycnn_normalize' missing"),
    (damaged_network(_reshape), "does not fit --arch 'tinycnn_normalize': 'last_linear.weight' "
                                "has shape (3, 3), the network's is (16, 128)"),
    (damaged_network(_no_data), "is damaged: 'last_linear.weight' holds no data (shape (16, 128) "
                                "without its values)"),
    (damaged_network(_string), "is damaged: 'last_linear.bias' holds a str where a tensor of "
                               "shape (16,) belongs"),
    (_optimizer_nan, "is damaged: 'optimizer/state/0/exp_avg' holds NaN or infinite values"),
    (_optimizer_groups, "is damaged: its optimizer state does not load into this run"),
], ids=["nan", "inf", "renamed", "shape", "no-data", "string", "optimizer-nan",
        "optimizer-groups"])
def test_damaged_or_non_finite_resume_checkpoint_is_refused_when_loaded(run_copy, capsys,
                                                                        damage, message):
    checkpoint = run_copy / rf.LAST_CHECKPOINT
    damage(checkpoint)
    before = rows(run_copy)
    assert main.run(["--resume", str(run_copy), "--n_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint '{checkpoint}'" in err and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "the last good checkpoint is kept" not in err and "does not fit" not in \
        err.replace(message, "") and rows(run_copy) == before  # refused, not trained


def tinycnn_weights(change) -> dict:
    import architectures

    weights = architectures.select("tinycnn_normalize", 16, pretrained=False).features \
        .state_dict()
    change(weights)
    return weights


@pytest.mark.parametrize("change,message", [
    (_nan, "are damaged: '0.0.weight' holds NaN or infinite values"),
    (lambda w: w.__setitem__("0.0.weight", torch.empty(w["0.0.weight"].shape, device="meta")),
     "are damaged: '0.0.weight' holds no data"),
    (lambda w: w.__setitem__("0.0.weight", "abc"), "are damaged: '0.0.weight' holds a str"),
    (_rename, "do not fit backbone 'tinycnn': missing 1 tensor(s)"),
    (lambda w: w.__setitem__("0.0.weight", torch.zeros(2, 2)), "do not fit backbone 'tinycnn': "
                                                             "shape mismatch"),
], ids=["nan", "no-data", "string", "renamed", "shape"])
def test_damaged_or_non_finite_pretrained_path_is_refused_naming_the_file(
        generated_folder, tmp_path, capsys, change, message):
    weights = tmp_path / "weights.pth"
    torch.save(tinycnn_weights(change), weights)
    assert main.run(tiny(generated_folder, tmp_path, "--pretrained_path", str(weights))) == 2
    err = capsys.readouterr().err
    assert f"weights from {weights} " in err and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_first_checkpoint_that_fails_does_not_promise_a_previous_one(tmp_path, monkeypatch):
    def no_space(obj, target, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(ckpt.CheckpointWriteError) as caught:
        ckpt.save_checkpoint({"epoch": 1}, str(tmp_path / "c.pth"))
    assert "previous checkpoint is kept" not in str(caught.value)
    assert "no earlier checkpoint exists there" in str(caught.value)
    (tmp_path / "c.pth").write_bytes(b"old")
    with pytest.raises(ckpt.CheckpointWriteError, match="the previous checkpoint is kept"):
        ckpt.save_checkpoint({"epoch": 2}, str(tmp_path / "c.pth"))
    assert (tmp_path / "c.pth").read_bytes() == b"old"


def test_main_writes_the_resume_hint_in_one_way_only():
    text = Path(main.__file__).read_text()
    assert "Continue with" not in text and "resume_hint(" in text
