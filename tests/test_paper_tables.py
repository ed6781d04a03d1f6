"""tools.paper_tables on fabricated run folders: cells, differences, last vs best epoch,
selection split, missing runs, unfinished and duplicate runs, the paper's data file."""
from __future__ import annotations

import csv
import filecmp
import os
from pathlib import Path
from typing import Dict, List

import pytest

from tests.fixtures import shared_file
from tools import paper_tables as pt
from utilities.run_folder import MetricsTable, write_config

TABLE2_MARGIN = dict(dataset="cub200", arch="resnet50_frozen_normalize", embed_dim=128,
                     loss="margin", batch_mining="distance", embedding_producer_used=True,
                     n_epochs=3, storage_metric="recall@1")
TABLE1_SOP = dict(dataset="online_products", arch="resnet50_double_frozen_normalize",
                  embed_dim=512, loss="multisimilarity", batch_mining="distance",
                  embedding_producer_used=False, n_epochs=1, storage_metric="recall@1")


def make_run(root: Path, name: str, config: Dict, rows: List[Dict]) -> Path:
    """A run folder as main.py writes it: config.json and metrics.csv (through its writers)."""
    folder = root / name
    folder.mkdir(parents=True)
    write_config(str(folder), config)
    table = MetricsTable(str(folder))
    for row in rows:
        table.append(row)
    return folder


def read_table(path: Path) -> Dict[tuple, Dict[str, str]]:
    """``(method, backbone, das, figure) -> row`` of a table CSV."""
    with open(path, newline="") as handle:
        return {(r["method"], r["backbone"], r["das"], r["figure"]): r
                for r in csv.DictReader(handle)}


def epoch_row(epoch: int, recall1: float, f1: float = 0.3, nmi: float = 0.6, **extra) -> Dict:
    return {"epoch": epoch, "loss": 0.5, "lr": 1e-5, "test/recall@1": recall1, "test/f1": f1,
            "test/nmi": nmi, **extra}


def build(tmp_path: Path, best: str = pt.DEFAULT_BEST):
    out = tmp_path / "tables"
    written, runs = pt.build_tables(str(tmp_path / "runs"), str(out), best=best)
    return out, written, runs


def test_values_land_in_their_cell_with_the_difference(tmp_path):
    make_run(tmp_path / "runs", "anything", TABLE2_MARGIN,
             [epoch_row(1, 0.50), epoch_row(2, 0.60), epoch_row(3, 0.6512, f1=0.4012, nmi=0.7)])
    out, written, _ = build(tmp_path)
    table = read_table(out / "table2_last.csv")
    ours = table[("margin+distance", "resnet50_128", "yes", "ours")]
    paper = table[("margin+distance", "resnet50_128", "yes", "paper")]
    diff = table[("margin+distance", "resnet50_128", "yes", "diff")]
    assert float(ours["cub200/recall@1"]) == pytest.approx(65.12)
    assert float(ours["cub200/f1"]) == pytest.approx(40.12)
    assert float(ours["cub200/nmi"]) == pytest.approx(70.0)
    assert float(paper["cub200/recall@1"]) == pytest.approx(64.50)  # the paper's margin + DAS
    assert float(diff["cub200/recall@1"]) == pytest.approx(65.12 - 64.50)
    assert float(diff["cub200/nmi"]) == pytest.approx(70.0 - 68.04)
    assert ours["cub200/epoch"] == "3"
    # The baseline row and the other datasets have no run: empty, not zero.
    assert ours["cars196/recall@1"] == "" and diff["cars196/recall@1"] == ""
    baseline = table[("margin+distance", "resnet50_128", "no", "ours")]
    assert baseline["cub200/recall@1"] == ""
    markdown = (out / "table2.md").read_text()
    assert "| Margin [D] + DAS | ours | 65.12 | 40.12 | 70.00 | - |" in markdown
    assert "| diff | +0.62 |" in markdown


def test_table1_sop_figures_fill_the_sop_recall_columns(tmp_path):
    values = {"test/recall@1": 0.8, "test/recall@10": 0.9, "test/recall@100": 0.95,
              "test/recall@1000": 0.99}
    make_run(tmp_path / "runs", "sop", TABLE1_SOP, [dict(epoch=1, loss=0.1, lr=1e-5, **values)])
    out, _, _ = build(tmp_path)
    ours = read_table(out / "table1_last.csv")[("multisimilarity", "resnet50_512", "no", "ours")]
    assert [float(ours[f"online_products/recall@{k}"]) for k in (1, 10, 100, 1000)] == \
        pytest.approx([80.0, 90.0, 95.0, 99.0])
    assert ours["cub200/recall@1"] == ""
    diff = read_table(out / "table1_last.csv")[("multisimilarity", "resnet50_512", "no", "diff")]
    assert float(diff["online_products/recall@1"]) == pytest.approx(80.0 - 79.53)


def test_last_and_best_epoch_are_reported_separately(tmp_path):
    # Epoch 0 (the untrained network, --eval_initial) never counts, even with a high figure.
    rows = [epoch_row(0, 0.99), epoch_row(1, 0.40), epoch_row(2, 0.70, nmi=0.72),
            epoch_row(3, 0.65, nmi=0.66)]
    make_run(tmp_path / "runs", "margin", TABLE2_MARGIN, rows)
    out, _, _ = build(tmp_path, best="storage_metric")
    key = ("margin+distance", "resnet50_128", "yes", "ours")
    last, best = read_table(out / "table2_last.csv")[key], read_table(out / "table2_best.csv")[key]
    assert float(last["cub200/recall@1"]) == pytest.approx(65.0) and last["cub200/epoch"] == "3"
    assert float(best["cub200/recall@1"]) == pytest.approx(70.0) and best["cub200/epoch"] == "2"
    assert float(best["cub200/nmi"]) == pytest.approx(72.0)  # the whole row of the best epoch
    assert best["cub200/selected_by"] == "test/recall@1"
    markdown = (out / "table2.md").read_text()
    assert "Best epoch selected by test/recall@1 (split 'test', 1 run)" in markdown
    assert "optimistic" in markdown


def test_best_epoch_is_selected_on_the_validation_split_when_there_is_one(tmp_path):
    rows = [epoch_row(1, 0.80, **{"val/recall@1": 0.30}),
            epoch_row(2, 0.60, **{"val/recall@1": 0.50}),
            epoch_row(3, 0.70, **{"val/recall@1": 0.40})]
    make_run(tmp_path / "runs", "margin", TABLE2_MARGIN, rows)
    out, _, runs = build(tmp_path, best="storage_metric")
    best = read_table(out / "table2_best.csv")[("margin+distance", "resnet50_128", "yes", "ours")]
    assert best["cub200/epoch"] == "2" and float(best["cub200/recall@1"]) == pytest.approx(60.0)
    assert best["cub200/selected_by"] == "val/recall@1"
    markdown = (out / "table2.md").read_text()
    assert "Best epoch selected by val/recall@1 (split 'val', 1 run)" in markdown
    assert runs[0].selection_key == "val/recall@1"


def test_without_runs_every_cell_of_ours_is_missing_not_zero(tmp_path):
    (tmp_path / "runs").mkdir()
    out, written, _ = build(tmp_path)
    assert set(written) == {"table1.md", "table2.md", "table1_last.csv", "table1_best.csv",
                            "table2_last.csv", "table2_best.csv", "runs.csv"}
    for name in ("table1_last.csv", "table2_best.csv"):
        for (_, _, _, figure), row in read_table(out / name).items():
            metric_cells = [v for k, v in row.items() if "@" in k or k.endswith(("/f1", "/nmi"))]
            if figure in ("ours", "diff", "std"):
                assert all(v == "" for v in metric_cells)
            else:
                assert all(v != "" for v in metric_cells)  # the paper has every figure
    markdown = (out / "table1.md").read_text()
    ours_lines = [line for line in markdown.splitlines() if "| ours |" in line]
    assert len(ours_lines) == 8  # 4 rows x (last, best)
    assert all("0.00" not in line and line.count("| - ") == 12 for line in ours_lines)


def test_unfinished_duplicate_and_unmatched_runs(tmp_path):
    runs_root = tmp_path / "runs"
    unfinished = dict(TABLE2_MARGIN, n_epochs=300)
    make_run(runs_root, "a_partial", unfinished, [epoch_row(1, 0.5), epoch_row(2, 0.55)])
    make_run(runs_root, "b_other_partial", unfinished, [epoch_row(1, 0.4)])
    make_run(runs_root, "nested/digits", dict(TABLE2_MARGIN, dataset="digits"), [epoch_row(1, 0.9)])
    make_run(runs_root, "smoke", dict(TABLE2_MARGIN, arch="tinycnn_frozen_normalize"),
             [epoch_row(1, 0.9)])
    out, _, runs = build(tmp_path)
    ours = read_table(out / "table2_last.csv")[("margin+distance", "resnet50_128", "yes", "ours")]
    assert float(ours["cub200/recall@1"]) == pytest.approx(55.0)  # the run with more epochs
    assert "55.00*" in (out / "table2.md").read_text()
    assert "not reached its last epoch" in (out / "table2.md").read_text()
    with open(out / "runs.csv", newline="") as handle:
        listed = {os.path.relpath(r["folder"], runs_root): r for r in csv.DictReader(handle)}
    assert set(listed) == {"a_partial", "b_other_partial", os.path.join("nested", "digits"),
                           "smoke"}
    assert listed["a_partial"]["used"] == "yes" and listed["a_partial"]["finished"] == "no"
    assert listed["a_partial"]["epochs_done"] == "2" and listed["a_partial"]["n_epochs"] == "300"
    assert "another run fills this cell" in listed["b_other_partial"]["note"]
    assert "not in the paper's tables" in listed[os.path.join("nested", "digits")]["note"]
    assert "tinycnn" in listed["smoke"]["note"] and listed["smoke"]["used"] == "no"


def test_a_finished_run_wins_over_a_newer_unfinished_one(tmp_path):
    make_run(tmp_path / "runs", "old_finished", TABLE2_MARGIN,
             [epoch_row(e, 0.1 * e) for e in (1, 2, 3)])
    make_run(tmp_path / "runs", "new_partial", dict(TABLE2_MARGIN, n_epochs=10),
             [epoch_row(e, 0.9) for e in (1, 2, 3, 4)])
    out, _, _ = build(tmp_path)
    ours = read_table(out / "table2_last.csv")[("margin+distance", "resnet50_128", "yes", "ours")]
    assert float(ours["cub200/recall@1"]) == pytest.approx(30.0)


@pytest.mark.parametrize("loss,miner,arch,method", [
    ("triplet", "semihard", "resnet50_frozen_normalize", "triplet+semihard"),
    ("triplet", "distance", "resnet50_frozen_normalize", "triplet+distance"),
    ("contrastive", "distance", "resnet50_frozen_normalize", "contrastive+distance"),
    ("lifted", "lifted", "resnet50_frozen", "lifted+lifted"),
    ("npair", "npair", "resnet50_frozen", "npair+npair"),
    ("multisimilarity", "distance", "resnet50_frozen_normalize", "multisimilarity+none"),
])
def test_identify_table2_methods(loss, miner, arch, method):
    config = dict(dataset="cars196", arch=arch, embed_dim=128, loss=loss, batch_mining=miner,
                  embedding_producer_used=False)
    row, dataset, reason = pt.identify(config)
    assert row == pt.RowKey(2, method, "resnet50_128", False)
    assert dataset == "cars196" and not reason


def test_identify_refuses_what_fits_no_table():
    config = dict(dataset="cub200", arch="resnet50_double_frozen_normalize", embed_dim=512,
                  loss="margin", batch_mining="distance")
    row, _, reason = pt.identify(config)
    assert row is None and "Table 1 is multisimilarity" in reason
    row, _, reason = pt.identify(dict(config, arch="resnet50_frozen_normalize", embed_dim=512))
    assert row is None and "128" in reason
    row, _, reason = pt.identify(dict(config, arch="resnet50_frozen", embed_dim=128,
                                      batch_mining="random"))
    assert row is None and "not a Table 2 method" in reason


def test_an_unknown_backbone_gives_a_reason_not_a_crash(tmp_path):
    row, dataset, reason = pt.identify(dict(TABLE2_MARGIN, arch="vgg16_frozen_normalize"))
    assert row is None and dataset == "cub200"
    assert "unknown backbone in --arch 'vgg16_frozen_normalize'" in reason
    make_run(tmp_path / "runs", "vgg", dict(TABLE2_MARGIN, arch="vgg16_frozen_normalize"),
             [epoch_row(1, 0.9)])
    _, _, runs = build(tmp_path)
    assert [(r.used, "unknown backbone" in r.reason) for r in runs] == [(False, True)]


def test_table2_methods_are_read_from_the_shared_list(tmp_path):
    keys = [m.key for m in pt.TABLE2_METHODS]
    assert keys == ["triplet+semihard", "triplet+distance", "contrastive+distance",
                    "margin+distance", "lifted+lifted", "npair+npair", "multisimilarity+none"]
    assert pt.MINERLESS_LOSSES == ("multisimilarity",)
    assert pt.TABLE2_METHODS[0] == pt.Table2Method("triplet_semihard", "triplet", "semihard",
                                                   "resnet50_frozen_normalize", "Triplet [S]")
    bad = tmp_path / "methods.tsv"
    bad.write_text("# comment\nmargin\tmargin distance\tresnet50_frozen\tMargin\n")
    with pytest.raises(pt.TablesError, match="line 2: expected 5 tab-separated columns"):
        pt.read_table2_methods(str(bad))


def test_repository_copy_of_the_paper_figures_is_complete():
    paper = pt.read_paper()
    assert len(paper) == 48 + 126  # Table 1: 4 rows x 12; Table 2: 14 rows x 9
    for layout in pt.table_layouts():
        for row_key, _ in layout.rows:
            for dataset, metrics in layout.metrics.items():
                for metric in metrics:
                    assert (row_key, dataset, metric) in paper
    shared = shared_file("paper/das_paper_results.csv")
    if shared is not None:
        assert filecmp.cmp(shared, pt.PAPER_RESULTS, shallow=False)


def test_command_line_writes_tables_and_refuses_a_missing_runs_folder(tmp_path, capsys):
    make_run(tmp_path / "runs", "m", TABLE2_MARGIN, [epoch_row(1, 0.5)])
    assert pt.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Table 2: 1 of 42 (row, dataset) cells have a run" in printed
    assert (tmp_path / "out" / "table2.md").is_file()
    assert pt.main(["--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert pt.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o3"),
                    "--paper", str(bad)]) == 2
    assert "expected" in capsys.readouterr().err


def test_runs_differing_only_in_seed_are_averaged_with_std_and_seed_count(tmp_path):
    """Three seeds of one setting (plus a duplicate of seed 1 with fewer epochs, and a setting
    with another lr that has fewer seeds): the cell is mean +- sample std over the three."""
    runs_root = tmp_path / "runs"
    for seed, recall in ((0, 0.60), (1, 0.62), (2, 0.67)):
        make_run(runs_root, f"seed{seed}", dict(TABLE2_MARGIN, seed=seed, savename=f"s{seed}"),
                 [epoch_row(1, 0.1), epoch_row(2, 0.2), epoch_row(3, recall)])
    make_run(runs_root, "seed1_again", dict(TABLE2_MARGIN, seed=1, n_epochs=3),
             [epoch_row(1, 0.99)])
    make_run(runs_root, "other_lr", dict(TABLE2_MARGIN, seed=0, lr=1e-4),
             [epoch_row(1, 0.1), epoch_row(2, 0.2), epoch_row(3, 0.9)])
    out, _, runs = build(tmp_path)
    table = read_table(out / "table2_last.csv")
    key = ("margin+distance", "resnet50_128", "yes")
    values = [60.0, 62.0, 67.0]
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5  # sample std: n - 1
    assert float(table[key + ("ours",)]["cub200/recall@1"]) == pytest.approx(mean, abs=1e-4)
    assert float(table[key + ("std",)]["cub200/recall@1"]) == pytest.approx(std, abs=1e-4)
    assert table[key + ("ours",)]["cub200/seeds"] == "3"
    assert f"{mean:.2f} \u00b1 {std:.2f} (3)" in (out / "table2.md").read_text()
    unused = {os.path.basename(r.folder): r.reason for r in runs if not r.used}
    assert set(unused) == {"seed1_again", "other_lr"}
    assert all("another run fills this cell" in reason for reason in unused.values())
