"""tools.figures: each command writes a PNG of the expected size from tiny trained runs;
retrieval frames are green exactly for same-class neighbours, which are the true nearest ones."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

import main
from tests.fixtures import torch_threads
from tools import figures
from tools.smoke_data import make_smoke_datasets


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Runs trained by main.py on generated CUB-layout and In-Shop-layout data: a ResNet-18
    baseline (1 epoch), a tinycnn + DAS run (2 epochs, with the untrained row 0) and an In-Shop
    run (query/gallery evaluation)."""
    root = tmp_path_factory.mktemp("figures")
    make_smoke_datasets(str(root / "data"), ["cub200", "in-shop"])
    common = ["--source", str(root / "data"), "--not_pretrained", "--crop_size", "32",
              "--kernels", "0", "--bs", "16", "--device", "cpu", "--save_path", str(root / "runs")]
    with torch_threads(1):  # module scope: the function-scoped single_thread runs later
        runs = {
            "baseline": main.main(["--dataset", "cub200", "--arch", "resnet18_normalize",
                                       "--n_epochs", "1", "--savename", "baseline", *common]),
            "das": main.main(["--dataset", "cub200", "--arch", "tinycnn_normalize",
                                  "--n_epochs", "2", "--eval_initial", "--embedding_producer_used",
                                  "--savename", "das", *common]),
            "in_shop": main.main(["--dataset", "in-shop", "--arch", "tinycnn_normalize",
                                      "--n_epochs", "1", "--savename", "in_shop", *common]),
        }
    return {name: Path(folder) for name, folder in runs.items()}


def png_size(path: Path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def drawn_share(path: Path) -> float:
    """Share of pixels that are not white: a blank figure would be close to 0."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return float((pixels.min(axis=2) < 250).mean())


def test_curves_of_one_and_of_two_runs(tiny_runs, tmp_path, capsys):
    assert figures.main(["curves", str(tiny_runs["das"])]) == 0
    single = tiny_runs["das"] / "curves.png"
    assert capsys.readouterr().out.strip() == str(single)
    assert png_size(single) == (1500, 420) and drawn_share(single) > 0.02
    out = tmp_path / "compare.png"
    assert figures.main(["curves", str(tiny_runs["baseline"]), str(tiny_runs["das"]),
                         "--labels", "baseline", "+ DAS", "--out", str(out)]) == 0
    assert png_size(out) == (1500, 420)
    assert figures.main(["curves", str(tmp_path)]) == 2
    assert "holds no metrics.csv" in capsys.readouterr().err


def test_retrieval_of_one_run_has_the_grid_size(tiny_runs, tmp_path):
    out = tmp_path / "retrieval.png"
    assert figures.main(["retrieval", str(tiny_runs["baseline"]), "--queries", "0", "17",
                         "--top_k", "3", "--thumb", "48", "--device", "cpu",
                         "--out", str(out)]) == 0
    width = figures.LABEL_WIDTH + 4 * 48 + 3 * figures.CELL_GAP + figures.QUERY_GAP
    height = figures.HEADER_HEIGHT + 2 * 48 + figures.CELL_GAP
    assert png_size(out) == figures.grid_pixels(2, 1, 3, 48) == (width, height)


def test_retrieval_of_two_runs_stacked_per_query(tiny_runs):
    assert figures.main(["retrieval", str(tiny_runs["baseline"]), str(tiny_runs["das"]),
                         "--random", "3", "--device", "cpu", "--checkpoint", "best"]) == 0
    out = tiny_runs["baseline"] / "retrieval_vs_das.png"
    assert png_size(out) == figures.grid_pixels(3, 2, 5, 96)
    single = figures.grid_pixels(3, 1, 5, 96)
    assert png_size(out)[1] - figures.HEADER_HEIGHT > 2 * (single[1] - figures.HEADER_HEIGHT)


def test_frames_are_green_exactly_for_same_class_true_neighbours(tiny_runs):
    from datasets import ImageDataset
    from evaluation import compute_embeddings

    runs = [figures.load_run(str(tiny_runs[name])) for name in ("baseline", "das")]
    query_ids, thumb, top_k = [0, 9, 30], 32, 4
    grid = figures.retrieval_grid(runs, query_ids, top_k, thumb, "cpu")
    labels = runs[0].queries.labels
    for r, run in enumerate(runs):
        embeddings, _ = compute_embeddings(run.model, ImageDataset(run.queries, run.transform),
                                           "cpu", 64, 0)
        distances = ((embeddings[query_ids, None] - embeddings[None]) ** 2).sum(-1)
        distances[np.arange(len(query_ids)), query_ids] = np.inf  # a query never finds itself
        expected = np.sort(distances, axis=1)[:, :top_k]
        found = np.take_along_axis(distances, grid.neighbours[:, r], axis=1)
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)
        assert not (grid.neighbours[:, r] == np.asarray(query_ids)[:, None]).any()
    np.testing.assert_array_equal(grid.matches,
                                  labels[grid.neighbours] == labels[query_ids][:, None, None])
    assert grid.matches.any()  # the generated classes are easy: some neighbours match
    for index, top in enumerate(grid.row_tops):
        q, r = divmod(index, len(runs))
        left = thumb + figures.QUERY_GAP
        for rank in range(top_k):
            frame = tuple(grid.image[top + 1, left + thumb // 2])
            assert frame == (figures.GREEN if grid.matches[q, r, rank] else figures.RED)
            left += thumb + figures.CELL_GAP
        assert tuple(grid.image[top + 1, thumb // 2]) == figures.QUERY_FRAME


def test_retrieval_on_query_and_gallery_splits(tiny_runs, tmp_path):
    run = figures.load_run(str(tiny_runs["in_shop"]))
    assert not run.self_retrieval and len(run.queries) == len(run.references) == 16
    grid = figures.retrieval_grid([run], [0, 5], 3, 32, "cpu")
    np.testing.assert_array_equal(grid.matches, run.references.labels[grid.neighbours]
                                  == run.queries.labels[[0, 5]][:, None, None])
    out = tmp_path / "in_shop.png"
    assert figures.main(["retrieval", str(tiny_runs["in_shop"]), "--queries", "15",
                         "--top_k", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert png_size(out) == figures.grid_pixels(1, 1, 2, 96)


def test_retrieval_refuses_bad_input(tiny_runs, tmp_path, capsys):
    assert figures.main(["retrieval", str(tiny_runs["baseline"]), "--queries", "32",
                         "--device", "cpu"]) == 2
    assert "--queries 32 is out of range" in capsys.readouterr().err
    assert figures.main(["retrieval", str(tiny_runs["baseline"]), str(tiny_runs["in_shop"]),
                         "--device", "cpu"]) == 2
    assert "evaluate different images" in capsys.readouterr().err
    assert figures.main(["retrieval", str(tiny_runs["baseline"]), "--source",
                         str(tmp_path), "--device", "cpu"]) == 2
    assert "pass --source" in capsys.readouterr().err
    assert figures.main(["embedding", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_embedding_projection(tiny_runs, method):
    assert figures.main(["embedding", str(tiny_runs["das"]), "--method", method,
                         "--device", "cpu"]) == 0
    out = tiny_runs["das"] / f"embedding_{method}.png"
    assert png_size(out) == (800, 800) and drawn_share(out) > 0.005


def test_nearest_leaves_out_the_query_itself():
    rng = np.random.default_rng(0)
    references = rng.normal(size=(50, 8)).astype(np.float32)
    references[7] = references[3]  # a duplicate of a query is a neighbour, the query is not
    ids = figures.nearest(references, references[[3, 10]], 4, own_ids=np.array([3, 10]))
    assert ids.shape == (2, 4) and ids[0, 0] == 7 and 3 not in ids[0] and 10 not in ids[1]
    distances = ((references[10] - references) ** 2).sum(1)
    distances[10] = np.inf
    np.testing.assert_array_equal(ids[1], np.argsort(distances)[:4])


def test_choose_points_caps_classes_and_points():
    labels = np.repeat(np.arange(30), 10)
    chosen = figures.choose_points(labels, max_classes=20, max_points=1000, seed=0)
    assert len(np.unique(labels[chosen])) == 20 and len(chosen) == 200
    chosen = figures.choose_points(labels, max_classes=50, max_points=40, seed=0)
    assert len(chosen) == 40 and len(np.unique(chosen)) == 40


def test_thumbnail_is_square_with_a_coloured_frame():
    picture = np.zeros((30, 60, 3), dtype=np.uint8)
    thumb = figures.thumbnail(picture, 32, figures.RED)
    assert thumb.shape == (32, 32, 3)
    assert tuple(thumb[0, 0]) == figures.RED and tuple(thumb[-1, 16]) == figures.RED
    assert tuple(thumb[16, 16]) == (0, 0, 0)


def test_curves_mark_the_best_epoch_by_the_runs_own_storage_metric(tmp_path, monkeypatch):
    """A run selecting by NMI: the dotted line sits at NMI's best epoch (2), not recall@1's (1)."""
    from utilities.run_folder import MetricsTable, write_config

    run = tmp_path / "run"
    run.mkdir()
    write_config(str(run), {"storage_metric": "nmi", "n_epochs": 3})
    table = MetricsTable(str(run))
    for epoch, recall, nmi in [(1, 0.9, 0.2), (2, 0.5, 0.8), (3, 0.6, 0.7)]:
        table.append({"epoch": epoch, "loss": 1.0, "lr": 1e-3, "test/recall@1": recall,
                      "test/nmi": nmi})
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out: drawn.setdefault("fig", fig))
    figures.plot_curves([str(run)], str(tmp_path / "curves.png"))
    recall_axis = drawn["fig"].axes[0]
    marked = {line.get_xdata()[0] for line in recall_axis.lines if line.get_linestyle() == ":"
              and len(set(line.get_xdata())) == 1}
    assert marked == {2}
    assert "test/nmi" in recall_axis.get_title()
