"""tools.evaluate / embed / search / export end to end: a tiny run trained once on generated
glyphs, then each command on its images and on the real Omniglot images."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from tests.fixtures import torch_threads
from tools import embed as embed_tool
from tools import evaluate as evaluate_tool
from tools import export as export_tool
from tools import search as search_tool
from tools import figures
from utilities import run_folder as rf

pytestmark = pytest.mark.usefixtures("single_thread")
EMBED_DIM = 24


@pytest.fixture(scope="module")
def run(generated_folder, tmp_path_factory) -> Path:
    """tinycnn, 2 epochs on 4 generated classes (the other 4 are the test split)."""
    save = tmp_path_factory.mktemp("tool_runs")
    with torch_threads(1):
        folder = main.main([
            "--dataset", "folder", "--source", str(generated_folder), "--arch", "tinycnn_normalize",
            "--not_pretrained", "--embed_dim", str(EMBED_DIM), "--crop_size", "32",
            "--n_epochs", "2", "--bs", "16", "--samples_per_class", "4", "--kernels", "0",
            "--lr", "1e-3", "--device", "cpu", "--save_path", str(save), "--savename", "glyphs"])
    return Path(folder)


@pytest.fixture(scope="module")
def test_tree(generated_folder, tmp_path_factory) -> Path:
    """The run's 4 test classes as a class tree, plus an undecodable PNG and a text file."""
    root = tmp_path_factory.mktemp("tree") / "images"
    for name in ("class_04", "class_05", "class_06", "class_07"):
        shutil.copytree(generated_folder / name, root / name)
    (root / "class_05" / "broken.png").write_bytes(b"not a png at all")
    (root / "class_06" / "notes.txt").write_text("ignored: not an image name")
    return root


def csv_row(folder: Path, epoch: int):
    with open(folder / rf.METRICS_FILE, newline="") as handle:
        return next(r for r in csv.DictReader(handle) if int(r["epoch"]) == epoch)


def printed_metrics(text: str):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def brute_force_recall_at_1(embeddings: np.ndarray, labels: np.ndarray) -> float:
    distances = ((embeddings[:, None] - embeddings[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(1)] == labels).mean())


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_reproduces_the_metrics_csv_of_both_checkpoints(run, capsys):
    assert evaluate_tool.main([str(run), "--device", "cpu"]) == 0
    printed = printed_metrics(capsys.readouterr().out)
    expected = {k: v for k, v in csv_row(run, 2).items() if k.startswith("test/")}
    assert len(expected) == 8 and printed == expected  # as metrics.csv writes them
    report = json.loads((run / "checkpoint_last_eval_test.json").read_text())
    assert report["epoch"] == 2 and report["split"] == "test"
    assert {k: rf._fmt(v) for k, v in report["metrics"].items()} == expected

    best = torch.load(run / rf.BEST_CHECKPOINT, weights_only=True)["epoch"]
    assert evaluate_tool.main([str(run / rf.BEST_CHECKPOINT), "--device", "cpu",
                               "--evaluation_metrics", "recall@1", "map@r"]) == 0
    printed = printed_metrics(capsys.readouterr().out)
    row = csv_row(run, best)
    assert printed == {k: row[k] for k in ("test/recall@1", "test/map@r")}


def test_evaluate_reproduces_an_in_shop_run_query_gallery(tmp_path, capsys):
    """In-Shop evaluates queries against a separate gallery: the same figures as the run's."""
    from tools.smoke_data import make_smoke_datasets

    make_smoke_datasets(str(tmp_path / "data"), ["in-shop"])
    folder = Path(main.main([
        "--dataset", "in-shop", "--source", str(tmp_path / "data"), "--arch", "tinycnn_normalize",
        "--not_pretrained", "--crop_size", "32", "--n_epochs", "1", "--bs", "16", "--kernels", "0",
        "--device", "cpu", "--evaluation_metrics", "recall@1", "recall@10", "map@r", "nmi",
        "--save_path", str(tmp_path / "runs")]))
    capsys.readouterr()
    assert evaluate_tool.main([str(folder), "--device", "cpu"]) == 0
    expected = {k: v for k, v in csv_row(folder, 1).items() if k.startswith("test/")}
    # four metrics plus test/queries_without_gallery, which every query/gallery split reports
    assert len(expected) == 5 and printed_metrics(capsys.readouterr().out) == expected


def test_evaluate_on_the_train_split_and_refuses_val(run, capsys, tmp_path):
    out = tmp_path / "train.json"
    assert evaluate_tool.main([str(run), "--split", "train", "--evaluation_metrics", "recall@1",
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["metrics"]) == ["train/recall@1"]
    assert 0 <= report["metrics"]["train/recall@1"] <= 1
    assert evaluate_tool.main([str(run), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split val" in err and "--use_tv_split" in err


def test_evaluate_on_another_dataset_omniglot(run, omniglot_root, tmp_path, capsys):
    import datasets
    from datasets import ImageDataset
    from evaluation import compute_embeddings
    from tools._trained_model import load_trained_model

    out = tmp_path / "omniglot.json"
    assert evaluate_tool.main([str(run), "--dataset", "folder", "--source", str(omniglot_root),
                               "--folder_name", "images_background_small1", "--device", "cpu",
                               "--evaluation_metrics", "recall@1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "folder"
    trained = load_trained_model(str(run))
    split = datasets.load("folder", str(omniglot_root),
                          folder_name="images_background_small1").evaluation["test"]
    embeddings, labels = compute_embeddings(trained.model, ImageDataset(split, trained.transform),
                                            "cpu", 128, 0)
    assert len(labels) == 1360
    assert report["metrics"]["test/recall@1"] == pytest.approx(
        brute_force_recall_at_1(embeddings, labels), abs=1e-9)


# ----------------------------------------------------------------------------- embed
def test_embed_a_class_tree_skipping_an_unreadable_image(run, test_tree, tmp_path, capsys):
    from datasets import ImageDataset, Split
    from evaluation import compute_embeddings
    from tools._trained_model import load_trained_model

    out = tmp_path / "gallery.npz"
    assert embed_tool.main([str(run), "--images", str(test_tree), "--out", str(out),
                            "--device", "cpu", "--num_workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in text and "broken.png" in text
    data = np.load(out, allow_pickle=False)  # plain numpy, no pickle
    paths = [str(p) for p in data["paths"]]
    assert data["embeddings"].shape == (56, EMBED_DIM) and len(paths) == 56
    assert not any(p.endswith(("broken.png", "notes.txt")) for p in paths)
    assert [str(p) for p in data["skipped"]] == [str(test_tree / "class_05" / "broken.png")]
    assert list(data["class_names"]) == ["class_04", "class_05", "class_06", "class_07"]
    assert [data["class_names"][label] for label in data["labels"]] == \
        [os.path.basename(os.path.dirname(p)) for p in paths]
    assert bool(data["normalized"])
    trained = load_trained_model(str(run))
    split = Split(paths, data["labels"], list(data["class_names"]))
    expected, _ = compute_embeddings(trained.model, ImageDataset(split, trained.transform),
                                     "cpu", 64, 0)
    np.testing.assert_allclose(data["embeddings"], expected, atol=1e-6)


def test_embed_a_list_file_has_no_labels(run, test_tree, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{test_tree}/class_04/0.png\n\n"
                       f"{os.path.relpath(test_tree / 'class_07' / '3.png', tmp_path)}\n")
    out = tmp_path / "two.npz"
    assert embed_tool.main([str(run), "--images", str(listing), "--out", str(out),
                            "--num_workers", "0"]) == 0
    data = np.load(out)
    assert data["embeddings"].shape == (2, EMBED_DIM) and "labels" not in data.files
    assert str(data["paths"][1]) == str(test_tree / "class_07" / "3.png")


# ----------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def gallery(run, test_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gallery") / "gallery.npz"
    assert embed_tool.main([str(run), "--images", str(test_tree), "--out", str(out),
                            "--num_workers", "0"]) == 0
    return out


def test_search_finds_the_true_nearest_and_draws_them(gallery, tmp_path, capsys):
    out, figure = tmp_path / "top.csv", tmp_path / "top.png"
    assert search_tool.main(["--gallery", str(gallery), "--query", str(gallery), "-k", "3",
                             "--out", str(out), "--figure", str(figure), "--figure_queries", "5",
                             "--thumb", "32"]) == 0
    assert "by cosine similarity" in capsys.readouterr().out
    data = np.load(gallery)
    embeddings, labels = data["embeddings"], data["labels"]
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)  # a query is not its own neighbour
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :3]
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 56 * 3
    paths = [str(p) for p in data["paths"]]
    found = np.array([paths.index(r["neighbour"]) for r in rows]).reshape(56, 3)
    found_similarity = np.take_along_axis(similarity, found, 1)
    np.testing.assert_allclose(found_similarity, np.take_along_axis(similarity, expected, 1),
                               atol=1e-5)
    np.testing.assert_allclose([float(r["cosine_similarity"]) for r in rows],
                               found_similarity.ravel(), rtol=1e-4)
    same = np.array([int(r["same_class"]) for r in rows]).reshape(56, 3)
    np.testing.assert_array_equal(same, labels[found] == labels[:, None])
    with Image.open(figure) as image:
        assert image.size == figures.grid_pixels(5, 1, 3, 32)
    # the frames: green exactly for the same class
    ids, _, _, matches = search_tool.search(search_tool.EmbeddingFile.load(str(gallery), "g"),
                                            search_tool.EmbeddingFile.load(str(gallery), "q"), 3)
    grid, tops = figures.compose_grid(paths[:5], paths, ids[:5, None], matches[:5, None], 32)
    for q, top in enumerate(tops):
        for rank in range(3):
            left = 32 + figures.QUERY_GAP + rank * (32 + figures.CELL_GAP)
            assert tuple(grid[top + 1, left + 16]) == (figures.GREEN if matches[q, rank]
                                                       else figures.RED)


def test_search_with_an_image_query_embedded_by_the_run(run, gallery, test_tree, capsys):
    image = test_tree / "class_06" / "2.png"
    assert search_tool.main(["--gallery", str(gallery), "--query", str(image), "--run", str(run),
                             "-k", "2", "--keep_self", "--num_workers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines[lines.index(f"query {image}") + 1].split()
    assert first[0] == "1" and float(first[1]) == pytest.approx(1.0, abs=1e-4)
    assert first[2] == str(image)  # kept with --keep_self: the image finds itself first
    assert search_tool.main(["--gallery", str(gallery), "--query", str(image)]) == 2
    assert "pass --run RUN_DIR" in capsys.readouterr().err


def test_search_recall_matches_the_evaluation_on_omniglot(run, omniglot_root, tmp_path):
    from evaluation import compute_metrics

    tree = omniglot_root / "images_background_small1" / "Korean"
    out = tmp_path / "korean.npz"
    assert embed_tool.main([str(run), "--images", str(tree), "--out", str(out),
                            "--num_workers", "0"]) == 0
    data = search_tool.EmbeddingFile.load(str(out), "gallery")
    assert len(data.class_names) == 40 and len(data.paths) == 800  # 40 characters x 20 drawings
    ids, scores, inner_product, matches = search_tool.search(data, data, 1)
    assert inner_product and (ids[:, 0] != np.arange(800)).all()
    recall = compute_metrics(["recall@1"], data.embeddings, data.labels)["recall@1"]
    assert matches[:, 0].mean() == pytest.approx(recall, abs=1e-9)


def test_search_without_labels_draws_grey_frames(gallery, tmp_path):
    data = search_tool.EmbeddingFile.load(str(gallery), "g")
    # both sides unnormalized (a normalized side with an unnormalized one is refused)
    labelled = search_tool.EmbeddingFile(data.embeddings * 2, data.paths, data.labels,
                                         data.class_names)
    unlabelled = search_tool.EmbeddingFile(data.embeddings * 3, data.paths)
    ids, scores, inner_product, matches = search_tool.search(labelled, unlabelled, 2)
    assert not inner_product and matches is None
    l2 = ((unlabelled.embeddings[:, None] - labelled.embeddings[None]) ** 2).sum(-1)
    np.fill_diagonal(l2, np.inf)
    np.testing.assert_allclose(scores, np.sort(l2, axis=1)[:, :2], rtol=1e-4)
    grid, tops = figures.compose_grid([str(p) for p in data.paths[:1]],
                                      [str(p) for p in data.paths], ids[:1, None], None, 32)
    assert tuple(grid[1, 32 + figures.QUERY_GAP + 16]) == figures.UNKNOWN


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch(run, test_tree, tmp_path, capsys, fmt):
    from tools._trained_model import load_trained_model

    out = tmp_path / ("model.pt" if fmt == "torchscript" else "model.onnx")
    assert export_tool.main([str(run), "--format", fmt, "--out", str(out)]) == 0
    assert "max abs difference to PyTorch" in capsys.readouterr().out
    description = json.loads(Path(str(out) + ".json").read_text())
    assert description["input"]["shape"] == ["batch", 3, 32, 32]
    assert description["output"] == {"name": "embeddings", "shape": ["batch", EMBED_DIM],
                                     "dtype": "float32", "l2_normalized": True}
    trained = load_trained_model(str(run))
    from datasets._decode import load_image

    images = torch.stack([trained.transform(load_image(str(test_tree / "class_04" / f"{i}.png")))
                          for i in range(5)])
    # the transform gives uint8; the exported network takes the normalized float input
    images = trained.model.input_normalizer(images)
    with torch.no_grad():
        expected = trained.model(images).numpy()
    np.testing.assert_allclose(export_tool.run_export(fmt, str(out), images), expected, atol=1e-4)


def test_export_refuses_a_mismatch_and_a_missing_onnx(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.pt"
    original = export_tool.run_export
    monkeypatch.setattr(export_tool, "run_export",
                        lambda fmt, path, batch: original(fmt, path, batch) + 1e-3)
    assert export_tool.main([str(run), "--format", "torchscript", "--out", str(out)]) == 2
    assert "nothing written" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert export_tool.main([str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install -r requirements-export.txt" in err


# ----------------------------------------------------------------------------- bad input
def test_bad_input_stops_with_one_line(run, gallery, tmp_path, capsys):
    def one_line_error(code: int, needle: str) -> None:
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert needle in err, err

    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(run / rf.CONFIG_FILE, no_checkpoint)
    one_line_error(evaluate_tool.main([str(no_checkpoint)]), "holds no checkpoint_last.pth")
    one_line_error(embed_tool.main([str(tmp_path), "--images", str(tmp_path), "--out", "x.npz"]),
                   "holds no image files")

    other_arch = tmp_path / "other_arch"
    shutil.copytree(run, other_arch)
    config = json.loads((other_arch / rf.CONFIG_FILE).read_text())
    config["arch"] = "resnet18_normalize"
    (other_arch / rf.CONFIG_FILE).write_text(json.dumps(config))
    one_line_error(export_tool.main([str(other_arch), "--format", "torchscript",
                                     "--out", str(tmp_path / "m.pt")]),
                   "--arch 'tinycnn_normalize' in the checkpoint, 'resnet18_normalize' in "
                   "config.json")

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    one_line_error(embed_tool.main([str(run), "--images", str(empty), "--out",
                                    str(tmp_path / "e.npz")]),
                   f"--images '{empty}' holds no image files")

    small = tmp_path / "small.npz"
    np.savez(small, embeddings=np.ones((3, 8), dtype=np.float32), paths=np.array(["a", "b", "c"]))
    one_line_error(search_tool.main(["--gallery", str(small), "--query", str(gallery)]),
                   f"dimension {EMBED_DIM} but the gallery's have 8")
    one_line_error(search_tool.main(["--gallery", str(tmp_path / "none.npz"), "--query",
                                     str(gallery)]), "does not exist")


def test_embed_compare_bench_runs_and_prints_the_ratio(capsys):
    from bench import embed_compare

    embed_compare.main(["--images", "8", "--image_size", "24", "--arch", "tinycnn_normalize",
                        "--embed_dim", "8", "--crop_size", "16", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "max abs difference of the embeddings: 0" in lines[-3]
    summary = dict(field.split("=") for field in lines[-1].split())
    assert set(summary) == {"embed_tool_s", "compute_embeddings_s", "ratio"}
    assert float(summary["ratio"]) > 0


def test_evaluate_seeds_k_means_as_the_run_did(run, tmp_path, monkeypatch):
    """--kmeans_seed run with --seed 7 is re-evaluated with k-means seed 7, not faiss's 1234."""
    import evaluation

    copy = tmp_path / "seeded_run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    config = json.loads((copy / rf.CONFIG_FILE).read_text())
    config.update(kmeans_seed="run", seed=7)
    (copy / rf.CONFIG_FILE).write_text(json.dumps(config))
    seeds = []
    real_evaluate = evaluation.evaluate

    def recording_evaluate(*args, **kwargs):
        seeds.append(kwargs["seed"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", recording_evaluate)
    assert evaluate_tool.main([str(copy), "--device", "cpu", "--evaluation_metrics", "nmi",
                               "--out", str(tmp_path / "nmi.json")]) == 0
    assert seeds == [7]


def test_an_image_folder_is_read_as_a_class_tree_by_the_rule_of_dataset_folder(tmp_path):
    """tools' --images and --dataset folder name and order classes alike: leaf folders, sorted
    component by component ('a/b' before 'a-b/c', which plain string order reverses)."""
    from datasets._layout import leaf_class_folders
    from tools._common import ToolError, list_images

    for leaf in ("a/b", "a-b/c"):
        (tmp_path / "tree" / leaf).mkdir(parents=True)
        (tmp_path / "tree" / leaf / "1.png").write_bytes(b"not decoded here")
    listed = list_images(str(tmp_path / "tree"))
    assert listed.class_names == ["a/b", "a-b/c"]
    assert listed.class_names == [name for name, _ in leaf_class_folders(str(tmp_path / "tree"))]
    assert listed.labels.tolist() == [0, 1]
    (tmp_path / "tree" / "a" / "stray.png").write_bytes(b"x")  # an image beside a subfolder
    with pytest.raises(ToolError, match="read as a class tree: .*holds both images"):
        list_images(str(tmp_path / "tree"))
