"""The tools commands under hostile input (issue 20): each kind of bad input is refused in one
line with exit status 2 (130 for Ctrl-C), nothing is written over a run's or a user's files, no
temporary file is left behind, and figures mean what they say.

One tiny run (tinycnn, 1 epoch on generated glyphs) is trained once for the module; tests that
damage a run work on copies of it.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import resource
import shutil
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from tests.fixtures import torch_threads
from tools import _common
from tools import embed as embed_tool
from tools import evaluate as evaluate_tool
from tools import export as export_tool
from tools import figures
from tools import paper_tables
from tools import search as search_tool
from tools import smoke_data
from tools import summarize
from tools import sweep
from utilities import run_folder as rf

pytestmark = pytest.mark.usefixtures("single_thread")
RUN_OPTIONS = ["--arch", "tinycnn_normalize", "--not_pretrained", "--embed_dim", "8",
               "--crop_size", "32", "--n_epochs", "1", "--bs", "16", "--samples_per_class", "4",
               "--kernels", "0", "--device", "cpu", "--evaluation_metrics", "recall@1", "nmi"]


@pytest.fixture(scope="module")
def run(generated_folder, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("bad_input_runs")
    with torch_threads(1):
        folder = main.main(["--dataset", "folder", "--source", str(generated_folder),
                                "--save_path", str(save), "--savename", "plain", *RUN_OPTIONS])
    return Path(folder)


@pytest.fixture(scope="module")
def gallery(run, generated_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_input_gallery") / "gallery.npz"
    assert embed_tool.main([str(run), "--images", str(generated_folder), "--out", str(out),
                            "--num_workers", "0", "--device", "cpu"]) == 0
    return out


def one_line(capsys, code: int, *needles: str, status: int = 2) -> str:
    """The command's single stderr line, checked for the exit status and each needle."""
    err = capsys.readouterr().err
    assert code == status and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    for needle in needles:
        assert needle in err, err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_state(folder: Path) -> dict:
    return {p.name: digest(p) for p in folder.iterdir() if p.is_file()}


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(".lock"))
    return target


# ----------------------------------------------------------------------------- 1. data loss
def test_no_command_writes_over_a_run_file(run, gallery, tmp_path, capsys):
    before = folder_state(run)
    attempts = [
        (evaluate_tool.main, [str(run), "--out", str(run / "config.json")], "config.json"),
        (evaluate_tool.main, [str(run), "--out", str(run / "metrics.csv")], "metrics.csv"),
        (export_tool.main, [str(run), "--format", "torchscript", "--out",
                            str(run / "checkpoint_last.pth")], "checkpoint_last.pth"),
        # the description FILE.json would be the run's config.json
        (export_tool.main, [str(run), "--format", "torchscript", "--out", str(run / "config")],
         "config"),
        (embed_tool.main, [str(run), "--images", str(tmp_path), "--out",
                           str(run / "checkpoint_best.pth")], "checkpoint_best.pth"),
        (search_tool.main, ["--gallery", str(gallery), "--query", str(gallery), "--out",
                            str(run / "metrics.csv")], "metrics.csv"),
        (figures.main, ["curves", str(run), "--out", str(run / "training_summary.txt")],
         "training_summary.txt"),
        (summarize.main, [str(run.parent), "--csv", str(run / "metrics.csv")], "metrics.csv"),
    ]
    for command, argv, name in attempts:
        one_line(capsys, command(argv), name)
    # a link to a run's file is the run's file
    link = tmp_path / "innocent.json"
    link.symlink_to(run / "config.json")
    one_line(capsys, evaluate_tool.main([str(run), "--out", str(link)]), "config.json")
    assert folder_state(run) == before


def test_files_no_tools_command_wrote_are_kept(run, tmp_path, capsys):
    user_json = tmp_path / "notes.json"
    user_json.write_text('{"mine": 1}')
    one_line(capsys, evaluate_tool.main([str(run), "--out", str(user_json)]),
             str(user_json), "not written by a tools command")
    assert user_json.read_text() == '{"mine": 1}'
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    kept = digest(photo)
    one_line(capsys, figures.main(["curves", str(run), "--out", str(photo)]), str(photo))
    assert digest(photo) == kept
    # the command's own earlier output is replaced: running it twice works
    out = tmp_path / "curves.png"
    assert figures.main(["curves", str(run), "--out", str(out)]) == 0
    assert figures.main(["curves", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    report = tmp_path / "report.json"
    for _ in range(2):
        assert evaluate_tool.main([str(run), "--out", str(report), "--device", "cpu"]) == 0
    assert json.loads(report.read_text())["written_by"] == "tools.evaluate"


def test_smoke_data_never_overwrites_a_users_image(tmp_path, capsys):
    out = tmp_path / "tree"
    (out / "class_00").mkdir(parents=True)
    mine = out / "class_00" / "0.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(mine)
    kept = digest(mine)
    one_line(capsys, smoke_data.main([str(out), "--layout", "folder"]), str(mine))
    assert digest(mine) == kept
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["0.png"]  # nothing written
    # into an empty folder, twice (the second run finds its own identical files)
    fresh = tmp_path / "fresh"
    assert smoke_data.main([str(fresh), "--layout", "folder", "--pattern", "patch"]) == 0
    assert smoke_data.main([str(fresh), "--layout", "folder", "--pattern", "patch"]) == 0
    # another seed would write other images over them: refused
    one_line(capsys, smoke_data.main([str(fresh), "--layout", "folder", "--pattern", "patch",
                                      "--seed", "1"]), "refusing to write over it")
    listing = tmp_path / "published"
    (listing / "online_products" / "Info_Files").mkdir(parents=True)
    (listing / "online_products" / "Info_Files" / "Ebay_train.txt").write_text("my list\n")
    one_line(capsys, smoke_data.main([str(listing), "--datasets", "online_products"]),
             "Ebay_train.txt")


def test_paper_tables_out_must_not_be_a_run_or_hold_foreign_files(run, tmp_path, capsys):
    before = folder_state(run)
    one_line(capsys, paper_tables.main(["--runs", str(run.parent), "--out", str(run)]),
             "is a run folder")
    assert folder_state(run) == before
    out = tmp_path / "tables"
    out.mkdir()
    (out / "table1.md").write_text("my own notes\n")
    one_line(capsys, paper_tables.main(["--runs", str(run.parent), "--out", str(out)]),
             "table1.md")
    assert (out / "table1.md").read_text() == "my own notes\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(capsys, paper_tables.main(["--runs", str(run.parent), "--out", str(afile)]),
             "is a file")


# ----------------------------------------------------------------------------- 2. meaning
def test_evaluate_and_figures_rebuild_an_oodml_run_as_it_trained(generated_folder, tmp_path,
                                                                   capsys):
    """The class split file swaps the default halves: test classes are class_00..03, which a
    default reading of the folder would train on."""
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps([{"train": [f"class_0{i}" for i in range(4, 8)],
                                       "test": [f"class_0{i}" for i in range(4)]}]))
    with torch_threads(1):
        folder = Path(main.main([
            "--dataset", "folder", "--source", str(generated_folder), "--data_split", "ooDML",
            "--data_split_path", str(split_file), "--data_split_id", "0",
            "--save_path", str(tmp_path / "runs"), *RUN_OPTIONS]))
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert evaluate_tool.main([str(folder), "--out", str(out), "--device", "cpu"]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines()
                   if "=" in line)
    with open(folder / rf.METRICS_FILE, newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["epoch"] == "1")
    # exact equality: training and tools.evaluate ran in this process, with the same kernels
    assert printed == {k: v for k, v in row.items() if k.startswith("test/")}
    run = figures.load_run(str(folder))
    assert run.queries.class_names == [f"class_0{i}" for i in range(4)]
    assert all("/class_0" in str(p) and int(str(p).split("/class_0")[1][0]) < 4
               for p in run.queries.images)


def test_byte_identical_test_images_of_a_flat_tree_are_refused(run, generated_folder,
                                                               tmp_path, capsys):
    import datasets

    tree = tmp_path / "tree"
    shutil.copytree(generated_folder, tree)
    shutil.copy(tree / "class_05" / "3.png", tree / "class_05" / "copy_of_3.png")
    with pytest.raises(datasets.DataError, match="byte-identical copy"):
        datasets.load("folder", str(tree))
    moved = copy_run(run, tmp_path / "moved")
    one_line(capsys, evaluate_tool.main([str(moved), "--source", str(tree)]), "copy_of_3.png")


def test_search_refuses_mixed_embedding_spaces(run, gallery, generated_folder, tmp_path,
                                               capsys):
    other = copy_run(run, tmp_path / "other_run")
    queries = tmp_path / "other.npz"
    assert embed_tool.main([str(other), "--images", str(generated_folder / "class_05"),
                            "--out", str(queries), "--num_workers", "0"]) == 0
    capsys.readouterr()
    one_line(capsys, search_tool.main(["--gallery", str(gallery), "--query", str(queries)]),
             "embedded by checkpoint", str(other))
    # the same checkpoint, but an unnormalized copy of the gallery
    data = dict(np.load(gallery))
    data["embeddings"] = data["embeddings"] * 3
    data["normalized"] = np.array(False)
    raw = tmp_path / "raw.npz"
    np.savez(raw, **data)
    one_line(capsys, search_tool.main(["--gallery", str(gallery), "--query", str(raw)]),
             "L2-normalized", "not normalized")


@pytest.mark.parametrize("damage, needle", [
    ("nan_row", "NaN or infinite"), ("empty", "no embeddings"),
    ("label_out_of_range", "out of range"), ("missing_embeddings", "lacks embeddings"),
    ("labels_without_names", "without 'class_names'"),
])
def test_search_refuses_a_malformed_npz(gallery, tmp_path, capsys, damage, needle):
    data = dict(np.load(gallery))
    if damage == "nan_row":
        data["embeddings"][2] = np.nan
    elif damage == "empty":
        data.update(embeddings=data["embeddings"][:0], paths=data["paths"][:0],
                    labels=data["labels"][:0])
    elif damage == "label_out_of_range":
        data["labels"][0] = 99
    elif damage == "missing_embeddings":
        del data["embeddings"]
    else:
        del data["class_names"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    one_line(capsys, search_tool.main(["--gallery", str(bad), "--query", str(gallery)]),
             str(bad), needle)


def damaged_run(run: Path, target: Path, damage) -> Path:
    """A copy of ``run`` whose checkpoint_last.pth network state is changed by ``damage``."""
    folder = copy_run(run, target)
    path = folder / rf.LAST_CHECKPOINT
    state = torch.load(path, weights_only=True)
    damage(state["network"]["state_dict"])
    torch.save(state, path)
    return folder


def _rename(weights):
    key = next(iter(weights))
    weights["renamed." + key] = weights.pop(key)


def _reshape(weights):
    key = next(k for k, v in weights.items() if v.dim() == 2)
    weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])


def _meta(weights):
    for key in list(weights):
        weights[key] = torch.empty(weights[key].shape, dtype=weights[key].dtype, device="meta")


def _string(weights):
    weights[next(iter(weights))] = "not a tensor"


def _nan(weights):
    next(v for v in weights.values() if v.is_floating_point()).fill_(float("nan"))


@pytest.mark.parametrize("damage, needle, absent", [
    (_rename, "missing (e.g.", None),
    (_reshape, "has shape", None),
    (_meta, "holds no data", "does not fit"),
    (_string, "holds a str where a tensor", None),
    (_nan, "NaN or infinite weights", None),
])
def test_damaged_checkpoints_give_one_line(run, generated_folder, tmp_path, capsys, damage,
                                           needle, absent):
    folder = damaged_run(run, tmp_path / "damaged", damage)
    checkpoint = str(folder / rf.LAST_CHECKPOINT)
    out = tmp_path / "e.npz"
    err = one_line(capsys, embed_tool.main([str(folder), "--images",
                                            str(generated_folder / "class_04"),
                                            "--out", str(out), "--num_workers", "0"]),
                   checkpoint, needle)
    assert absent is None or absent not in err
    assert not out.exists()
    one_line(capsys, evaluate_tool.main([str(folder)]), checkpoint, needle)
    one_line(capsys, export_tool.main([str(folder), "--format", "torchscript", "--out",
                                       str(tmp_path / "m.pt")]), checkpoint, needle)
    assert sorted(os.listdir(tmp_path)) == ["damaged"]


def test_embed_refuses_non_finite_embeddings(run, generated_folder, tmp_path, capsys,
                                             monkeypatch):
    """Finite weights can still overflow; the embeddings themselves are checked too."""
    def overflowing(*args, **kwargs):
        embeddings = np.full((14, 8), np.inf, dtype=np.float32)
        return embeddings, np.arange(14), {}

    monkeypatch.setattr(embed_tool, "embed_images", overflowing)
    out = tmp_path / "e.npz"
    one_line(capsys, embed_tool.main([str(run), "--images", str(generated_folder / "class_04"),
                                      "--out", str(out)]),
             str(run / rf.LAST_CHECKPOINT), "NaN or infinite embeddings")
    assert not out.exists()


def test_summarize_keeps_a_stopped_seed_apart(tmp_path, capsys):
    for seed, epochs in ((0, 3), (1, 3), (2, 1)):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        rf.write_config(str(folder), {"dataset": "cub200", "n_epochs": 3, "seed": seed,
                                      "storage_metric": "recall@1"})
        table = rf.MetricsTable(str(folder))
        for epoch in range(1, epochs + 1):
            table.append({"epoch": epoch, "loss": 0.1, "test/recall@1": 0.5 if seed < 2 else 0.1})
    assert summarize.main([str(tmp_path), "--metrics", "test/recall@1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    finished = next(line for line in lines if line.startswith("| all runs |"))
    stopped = next(line for line in lines if "stopped early: seed 2 at epoch 1 of 3" in line)
    assert "50.00 +- 0.00 (2)" in finished and "10.00 (1)" in stopped


def test_curves_of_a_split_the_run_lacks(run, tmp_path, capsys):
    out = tmp_path / "c.png"
    one_line(capsys, figures.main(["curves", str(run), "--split", "val", "--out", str(out)]),
             "--split val", "it has test, train")
    assert not out.exists()


# ----------------------------------------------------------------------------- 4. tracebacks
@contextlib.contextmanager
def small_file_limit(limit: int = 256):
    """Writes past ``limit`` bytes fail in this process as on a full disk (RLIMIT_FSIZE with
    SIGXFSZ ignored: the write returns EFBIG); the limits are restored after the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def writing_commands(run, generated_folder, out):
    """embed, evaluate, export and figures, each writing one file into folder ``out``."""
    return [
        (embed_tool.main, [str(run), "--images", str(generated_folder / "class_04"), "--out",
                           str(out / "e.npz"), "--num_workers", "0"]),
        (evaluate_tool.main, [str(run), "--out", str(out / "r.json"), "--device", "cpu"]),
        (export_tool.main, [str(run), "--format", "torchscript", "--out", str(out / "m.pt")]),
        (figures.main, ["curves", str(run), "--out", str(out / "c.png")]),
    ]


def test_a_full_disk_leaves_nothing_behind(run, generated_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    commands = writing_commands(run, generated_folder, out)
    for command, argv in commands:
        with small_file_limit():
            code = command(argv)
        one_line(capsys, code, "cannot write", "nothing was written")
        assert os.listdir(out) == [], os.listdir(out)


def test_a_read_only_run_folder(run, tmp_path, capsys, monkeypatch):
    folder = copy_run(run, tmp_path / "read_only")
    before = folder_state(folder)
    folder.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere; show the tools what a user would see
            real_access = os.access
            monkeypatch.setattr(_common.os, "access", lambda path, mode: False if os.path.samefile(
                path, folder) else real_access(path, mode))
        one_line(capsys, evaluate_tool.main([str(folder)]), "not writable", str(folder))
        one_line(capsys, figures.main(["curves", str(folder)]), "not writable", str(folder))
    finally:
        folder.chmod(0o755)
    assert folder_state(folder) == before


def test_ctrl_c_exits_130_and_removes_temporary_files(run, generated_folder, tmp_path, capsys,
                                                      monkeypatch):
    """Ctrl-C arrives when an output is complete but not yet renamed into place."""
    def interrupted(source, target):
        raise KeyboardInterrupt

    proxy = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os)
                                     if not name.startswith("__")})
    proxy.replace = interrupted
    monkeypatch.setattr(_common, "os", proxy)
    out = tmp_path / "out"
    out.mkdir()
    commands = writing_commands(run, generated_folder, out)[:3]
    for command, argv in commands:
        one_line(capsys, command(argv), "interrupted", status=130)
        assert os.listdir(out) == []


@pytest.mark.parametrize("case", ["export_dir", "export_suffix", "figures_txt", "summarize_missing",
                                  "evaluate_txt", "embed_txt", "embed_dir", "search_out_dir"])
def test_output_paths_that_are_folders_or_of_the_wrong_kind(run, gallery, tmp_path, capsys,
                                                            case):
    calls = {
        "export_dir": (export_tool.main, [str(run), "--format", "torchscript", "--out",
                                          str(tmp_path) + "/"], "is a folder"),
        "export_suffix": (export_tool.main, [str(run), "--format", "torchscript", "--out",
                                             str(tmp_path / "m.onnx")], "must end in .pt"),
        "figures_txt": (figures.main, ["curves", str(run), "--out", str(tmp_path / "x.txt")],
                        "must end in .png"),
        "summarize_missing": (summarize.main, [str(run.parent), "--csv",
                                               str(tmp_path / "no" / "t.csv")], "does not exist"),
        "evaluate_txt": (evaluate_tool.main, [str(run), "--out", str(tmp_path / "r.txt")],
                         "must end in .json"),
        "embed_txt": (embed_tool.main, [str(run), "--images", str(tmp_path), "--out",
                                        str(tmp_path / "e.txt")], "must end in .npz"),
        "embed_dir": (embed_tool.main, [str(run), "--images", str(tmp_path), "--out",
                                        str(tmp_path)], "is a folder"),
        "search_out_dir": (search_tool.main, ["--gallery", str(gallery), "--query", str(gallery),
                                              "--out", str(tmp_path)], "is a folder"),
    }
    command, argv, needle = calls[case]
    one_line(capsys, command(argv), needle)
    assert sorted(os.listdir(tmp_path)) == []


def test_sizes_that_cannot_fit_are_refused_before_any_work(run, gallery, tmp_path, capsys):
    one_line(capsys, search_tool.main(["--gallery", str(gallery), "--query", str(gallery),
                                       "--thumb", "100000", "--figure", str(tmp_path / "f.png")]),
             "--thumb")
    one_line(capsys, search_tool.main(["--gallery", str(gallery), "--query", str(gallery),
                                       "-k", "100000000"]), "-k")
    one_line(capsys, smoke_data.main([str(tmp_path / "s"), "--size", "100000"]), "--size")
    one_line(capsys, smoke_data.main([str(tmp_path / "s"), "--layout", "folder", "--classes",
                                      "5000", "--images_per_class", "5000"]), "exceed")
    one_line(capsys, smoke_data.main([str(tmp_path / "s"), "--images_per_class", "100000"]),
             "--images_per_class")
    one_line(capsys, figures.main(["retrieval", str(run), "--thumb", "100000"]), "--thumb")
    one_line(capsys, figures.main(["retrieval", str(run), "--batch_size", "0"]), "--batch_size")
    # 0 is not "the run's --eval_bs": out-of-range numbers are refused, never replaced
    one_line(capsys, evaluate_tool.main([str(run), "--batch_size", "0"]), "--batch_size")
    one_line(capsys, search_tool.main(["--gallery", str(gallery), "--query", str(gallery),
                                       "--num_workers", "-1"]), "--num_workers")
    for command, argv in ((export_tool.main, [str(run), "--format", "torchscript", "--out",
                                              str(tmp_path / "m.pt")]),
                          (figures.main, ["retrieval", str(run)]),
                          (smoke_data.main, [str(tmp_path / "s")])):
        for seed in ("-1", str(2 ** 64)):
            one_line(capsys, command(argv + ["--seed", seed]), "--seed")
    assert os.listdir(tmp_path) == []


def test_a_rows_file_with_an_unterminated_quote(tmp_path, capsys):
    rows = tmp_path / "rows.txt"
    rows.write_text("cub200 resnet50 baseline -- --loss 'margin\n")
    one_line(capsys, sweep.main(["--rows", str(rows), "--save_path", str(tmp_path)]),
             "row line 1", "No closing quotation")


def test_a_rows_file_that_is_not_text(tmp_path, capsys):
    rows = tmp_path / "rows.bin"
    rows.write_bytes(b"\xff\xfe\x00binary\x80\x81")
    one_line(capsys, sweep.main(["--rows", str(rows), "--save_path", str(tmp_path)]),
             str(rows), "not UTF-8 text")
