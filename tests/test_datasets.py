"""Dataset parsers against tiny trees in each publisher's layout, bad input, and real Omniglot."""
from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets import DataError

SIZE = (6, 5)


def write_image(path: Path, color: Optional[Tuple[int, int, int]] = None) -> Path:
    """A uniform image; its colour derives from its path, so that different files differ."""
    if color is None:
        color = tuple(zlib.crc32(str(path).encode()).to_bytes(4, "little")[:3])
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", SIZE, color).save(path, format=fmt)
    return path


def make_class_tree(images_dir: Path, counts: Dict[str, int], suffix: str = ".jpg") -> None:
    """One folder per class (created in reverse order, so sorting is really tested)."""
    for name in sorted(counts, reverse=True):
        for i in range(counts[name]):
            write_image(images_dir / name / f"img_{i:02d}{suffix}")


CUB_COUNTS = {"001.Black_footed_Albatross": 2, "002.Laysan_Albatross": 3,
              "003.Sooty_Albatross": 2, "004.Groove_billed_Ani": 4}
CARS_COUNTS = {"AM General Hummer SUV 2000": 3, "Acura RL Sedan 2012": 2,
               "Audi R8 Coupe 2012": 2, "BMW M3 Coupe 2012": 3}


def make_cub(source: Path, counts: Dict[str, int] = CUB_COUNTS) -> Path:
    make_class_tree(source / "cub200" / "images", counts)
    return source


def make_cars(source: Path) -> Path:
    make_class_tree(source / "cars196" / "images", CARS_COUNTS)
    return source


SOP_HEADER = "image_id class_id super_class_id path"
# (class_id, super_class_id, super folder, images); class ids as published: not contiguous,
# 1-based, test ids after train ids.
SOP_TRAIN = [(3, 2, "cabinet_final", 2), (1, 1, "bicycle_final", 3), (2, 1, "bicycle_final", 2)]
SOP_TEST = [(11, 2, "cabinet_final", 2), (12, 4, "mug_final", 3), (14, 1, "bicycle_final", 2)]


def sop_rows(spec: Sequence[Tuple[int, int, str, int]], first_id: int = 1) -> List[str]:
    rows, image_id = [], first_id
    for class_id, super_id, folder, n in spec:
        for i in range(n):
            rows.append(f"{image_id} {class_id} {super_id} {folder}/{class_id}{i:03d}_{i}.JPG")
            image_id += 1
    return rows


def make_sop(source: Path) -> Path:
    root = source / "online_products"
    for name, spec in (("train", SOP_TRAIN), ("test", SOP_TEST)):
        rows = sop_rows(spec)
        for row in rows:
            write_image(root / "images" / row.split()[3])
        info = root / "Info_Files" / f"Ebay_{name}.txt"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text("\n".join([SOP_HEADER] + rows) + "\n")
    return source


# (image_name, item_id, status); the first data row is a train image, which the paper's loader
# drops. Columns are aligned with runs of spaces, as in the published file.
INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "train"),
    ("img/MEN/Denim/id_00000080/01_2_side.jpg", "id_00000080", "train"),
    ("img/WOMEN/Tees/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/WOMEN/Tees/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
    ("img/WOMEN/Tees/id_00000007/01_3_back.jpg", "id_00000007", "gallery"),
    ("img/MEN/Shirts/id_00000001/01_1_front.jpg", "id_00000001", "gallery"),
    ("img/MEN/Shirts/id_00000001/01_2_side.jpg", "id_00000001", "query"),
    ("img/MEN/Shirts/id_00000001/01_3_back.jpg", "id_00000001", "query"),
    ("img/WOMEN/Skirts/id_00000050/01_1_front.jpg", "id_00000050", "gallery"),
]


def inshop_text(rows=INSHOP_ROWS, count=None) -> str:
    lines = [str(len(rows) if count is None else count), "image_name item_id evaluation_status"]
    lines += [f"{name:<60}{item:<15}{status}" for name, item, status in rows]
    return "\n".join(lines) + "\n"


def make_inshop(source: Path, rows=INSHOP_ROWS) -> Path:
    root = source / "in-shop"
    for name, _, _ in rows:
        write_image(root / name)
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(inshop_text(rows))
    return source


OMNI_LIKE = {"Greek/character02": 2, "Greek/character01": 3, "Balinese/character01": 2,
             "Balinese/character10": 2, "Balinese/character02": 3}


def make_nested(tree: Path, counts: Dict[str, int] = OMNI_LIKE) -> Path:
    make_class_tree(tree, counts, suffix=".png")
    return tree


def class_sizes(split: datasets.Split) -> List[int]:
    return np.bincount(split.labels, minlength=split.num_classes).tolist()


def assert_labels_dense(split: datasets.Split) -> None:
    assert split.labels.dtype == np.int64
    assert sorted(set(split.labels.tolist())) == list(range(split.num_classes))


# --------------------------------------------------------------------------- parsers


def test_cub200_sorted_class_folders_first_half_train(tmp_path):
    source = make_cub(tmp_path)
    images = tmp_path / "cub200" / "images"
    # macOS debris with image extensions must not become images or classes.
    (images / "001.Black_footed_Albatross" / "._img_00.jpg").write_bytes(b"\x00\x05")
    (images / ".DS_Store").write_bytes(b"junk")
    splits = datasets.load("cub200", str(source))
    test = splits.evaluation["test"]
    assert splits.name == "cub200" and set(splits.evaluation) == {"test"}
    assert splits.train.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert test.class_names == ["003.Sooty_Albatross", "004.Groove_billed_Ani"]
    assert class_sizes(splits.train) == [2, 3] and class_sizes(test) == [2, 4]
    assert_labels_dense(splits.train)
    assert_labels_dense(test)
    for split in (splits.train, test):
        for path, label in zip(split.images, split.labels):
            assert Path(path).parent.name == split.class_names[label]
            assert Path(path).is_file() and not Path(path).name.startswith(".")


def test_cub200_odd_class_count_gives_train_the_larger_half(tmp_path):
    counts = dict(CUB_COUNTS, **{"005.Crested_Auklet": 2})
    splits = datasets.load("cub200", str(make_cub(tmp_path, counts)))
    assert (splits.train.num_classes, splits.evaluation["test"].num_classes) == (3, 2)


def test_cars196_class_folders_with_spaces(tmp_path):
    splits = datasets.load("cars196", str(make_cars(tmp_path)))
    test = splits.evaluation["test"]
    assert splits.train.class_names == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert test.class_names == ["Audi R8 Coupe 2012", "BMW M3 Coupe 2012"]
    assert (len(splits.train), len(test)) == (5, 5)
    assert class_sizes(splits.train) == [3, 2] and class_sizes(test) == [2, 3]


def test_online_products_header_labels_and_super_classes(tmp_path):
    splits = datasets.load("online_products", str(make_sop(tmp_path)))
    train, test = splits.train, splits.evaluation["test"]
    assert (len(train), len(test)) == (7, 7)  # header line not counted as an image
    # Classes sorted by published class_id, relabelled 0..n-1; ids kept as class names.
    assert train.class_names == ["1", "2", "3"] and test.class_names == ["11", "12", "14"]
    assert train.labels.tolist() == [2, 2, 0, 0, 0, 1, 1]
    assert test.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    # Super-classes 1, 2, 4 (union of both files) become 0, 1, 2 in both splits.
    assert train.super_labels.tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert test.super_labels.tolist() == [1, 1, 2, 2, 2, 0, 0]
    root = tmp_path / "online_products" / "images"
    assert train.images[0] == str(root / "cabinet_final" / "3000_0.JPG")


def test_in_shop_keeps_every_row_and_shares_query_gallery_labels(tmp_path):
    splits = datasets.load("in-shop", str(make_inshop(tmp_path)))
    train = splits.train
    query, gallery = splits.evaluation["test"]
    root = tmp_path / "in-shop"
    assert (len(train), len(query), len(gallery)) == (4, 3, 4)  # 11 rows, none dropped
    assert train.images[0] == str(root / INSHOP_ROWS[0][0])
    assert train.class_names == ["id_00000002", "id_00000080"]
    assert train.labels.tolist() == [0, 0, 1, 1]
    # One label space for query and gallery: the test items sorted by item_id.
    assert query.class_names == gallery.class_names == ["id_00000001", "id_00000007", "id_00000050"]
    assert query.labels.tolist() == [1, 0, 0]
    assert gallery.labels.tolist() == [1, 1, 0, 2]
    names = {row[0]: row[1] for row in INSHOP_ROWS}
    for split in (query, gallery):
        for path, label in zip(split.images, split.labels):
            assert names[str(Path(path).relative_to(root))] == split.class_names[label]
    # Every query has its item among the gallery images.
    assert set(query.labels.tolist()) <= set(gallery.labels.tolist())


def test_folder_nested_leaf_classes_sorted_by_path(tmp_path):
    tree = make_nested(tmp_path / "tree")
    splits = datasets.load("folder", str(tree))
    test = splits.evaluation["test"]
    assert splits.train.class_names == ["Balinese/character01", "Balinese/character02",
                                        "Balinese/character10"]
    assert test.class_names == ["Greek/character01", "Greek/character02"]
    assert class_sizes(splits.train) == [2, 3, 2] and class_sizes(test) == [3, 2]
    # --folder_name names the tree inside --source.
    named = datasets.load("folder", str(tmp_path), folder_name="tree")
    assert named.train.images == splits.train.images


def test_folder_explicit_train_and_test_subfolders(tmp_path):
    make_class_tree(tmp_path / "train", {"cat": 2, "dog": 3, "cow": 2})
    make_class_tree(tmp_path / "test", {"owl/barn": 2, "owl/snowy": 2})
    splits = datasets.load("folder", str(tmp_path))
    assert splits.train.class_names == ["cat", "cow", "dog"]
    assert splits.evaluation["test"].class_names == ["owl/barn", "owl/snowy"]
    assert len(splits.train) == 7 and len(splits.evaluation["test"]) == 4


def test_load_adds_class_disjoint_validation(tmp_path):
    make_class_tree(tmp_path, {f"c{i}": 2 for i in range(10)})
    splits = datasets.load("folder", str(tmp_path), use_tv_split=True, tv_split_perc=0.6)
    assert splits.train.class_names == ["c0", "c1", "c2"]
    assert splits.evaluation["val"].class_names == ["c3", "c4"]
    assert splits.evaluation["test"].class_names == ["c5", "c6", "c7", "c8", "c9"]


# --------------------------------------------------------------------------- bad input


def parse_error(name: str, source, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        datasets.load(name, None if source is None else str(source), **kwargs)
    message = caught.value.short_message()
    assert "\n" not in message and not message.startswith("DataError")
    return message


def assert_mentions(message: str, *parts) -> None:
    for part in parts:
        assert str(part) in message, f"{part!r} missing from: {message}"


@pytest.mark.parametrize("name", ["cub200", "cars196", "online_products", "in-shop", "folder"])
def test_missing_or_absent_source_is_named(tmp_path, name):
    assert_mentions(parse_error(name, None), "--source")
    missing = tmp_path / "nowhere"
    assert_mentions(parse_error(name, missing), f"'{missing}'", "does not exist")


@pytest.mark.parametrize("name", ["cub200", "cars196", "online_products", "in-shop"])
def test_missing_dataset_folder_and_images_folder(tmp_path, name):
    assert_mentions(parse_error(name, tmp_path), f"'{tmp_path / name}'", "does not exist")
    (tmp_path / name).mkdir()
    images = "img" if name == "in-shop" else "images"
    assert_mentions(parse_error(name, tmp_path), f"'{tmp_path / name / images}'", "does not exist")
    # --source naming the dataset folder itself gets a hint towards its parent.
    assert_mentions(parse_error(name, tmp_path / name), "pass its parent", f"'{tmp_path}'")


def test_cub_class_folder_without_images(tmp_path):
    make_cub(tmp_path)
    empty = tmp_path / "cub200" / "images" / "005.Crested_Auklet"
    (empty / "notes").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    assert_mentions(parse_error("cub200", tmp_path), f"'{empty}'", "holds no images", ".jpg")


def test_too_few_classes(tmp_path):
    make_cub(tmp_path, {name: 2 for name in list(CUB_COUNTS)[:3]})
    assert_mentions(parse_error("cub200", tmp_path), "found 3 class folder(s)",
                    f"'{tmp_path / 'cub200' / 'images'}'", "expected at least 4")


def test_empty_image_file_is_refused_at_parse_time(tmp_path):
    make_cars(tmp_path)
    empty = tmp_path / "cars196" / "images" / "Acura RL Sedan 2012" / "zz.jpg"
    empty.write_bytes(b"")
    assert_mentions(parse_error("cars196", tmp_path), f"'{empty}'", "empty (0 bytes)",
                    "expected a readable image file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="file permissions do not bind root")
def test_unreadable_image_is_refused_at_parse_time(tmp_path):
    make_cars(tmp_path)
    locked = tmp_path / "cars196" / "images" / "Audi R8 Coupe 2012" / "img_00.jpg"
    locked.chmod(0)
    assert_mentions(parse_error("cars196", tmp_path), f"'{locked}'", "not readable")


def test_sop_missing_info_file(tmp_path):
    make_sop(tmp_path)
    info = tmp_path / "online_products" / "Info_Files" / "Ebay_test.txt"
    info.unlink()
    assert_mentions(parse_error("online_products", tmp_path), f"'{info}'", "does not exist",
                    SOP_HEADER)


@pytest.mark.parametrize("edit, expected", [
    (lambda lines: lines[1:], ["line 1", "expected the header", SOP_HEADER]),
    (lambda lines: lines[:3] + ["7 4 2"] + lines[3:], ["line 4", "expected 4 fields", "found 3"]),
    (lambda lines: lines[:2] + ["2 x 1 " + lines[2].split()[3]] + lines[3:],
     ["line 3", "class_id 'x' is not an integer"]),
    (lambda lines: lines[:2] + [lines[2].replace(" 2 ", " 3 ", 1)] + lines[3:],
     ["class_id 3", "several super_class_ids"]),
])
def test_sop_malformed_list(tmp_path, edit, expected):
    make_sop(tmp_path)
    info = tmp_path / "online_products" / "Info_Files" / "Ebay_train.txt"
    info.write_text("\n".join(edit(info.read_text().splitlines())) + "\n")
    assert_mentions(parse_error("online_products", tmp_path), f"'{info}'", *expected)


def test_sop_listed_image_missing(tmp_path):
    make_sop(tmp_path)
    images = tmp_path / "online_products" / "images"
    gone = images / "mug_final" / "12001_1.JPG"
    gone.unlink()
    (images / "mug_final" / "12002_2.JPG").unlink()
    info = tmp_path / "online_products" / "Info_Files" / "Ebay_test.txt"
    assert_mentions(parse_error("online_products", tmp_path), f"'{gone}'", f"'{info}' line 5",
                    "does not exist", f"under '{images}'", "1 more of the 7 listed images")


def test_in_shop_missing_partition_file(tmp_path):
    make_inshop(tmp_path)
    partition = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    partition.unlink()
    assert_mentions(parse_error("in-shop", tmp_path), f"'{partition}'", "does not exist",
                    "image_name item_id evaluation_status")


@pytest.mark.parametrize("text, expected", [
    (inshop_text(count=12), ["line 1 announces 12 images but 11 rows"]),
    (inshop_text().split("\n", 1)[1], ["line 1", "expected the image count"]),
    ("11\n" + inshop_text().split("\n", 2)[2], ["line 2", "expected the column names"]),
    (inshop_text().replace("01_1_front.jpg", "01_1_front.jpg  extra", 1),
     ["line 5", "expected 3 fields", "found 4"]),
    (inshop_text().replace("query", "probe", 1), ["line 7", "evaluation_status 'probe'"]),
    (inshop_text(rows=[r for r in INSHOP_ROWS if r[2] != "query"]), ["lists no query images"]),
])
def test_in_shop_malformed_partition(tmp_path, text, expected):
    make_inshop(tmp_path)
    partition = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    partition.write_text(text)
    assert_mentions(parse_error("in-shop", tmp_path), f"'{partition}'", *expected)


def test_in_shop_listed_image_missing(tmp_path):
    make_inshop(tmp_path)
    gone = tmp_path / "in-shop" / INSHOP_ROWS[6][0]
    gone.unlink()
    partition = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    assert_mentions(parse_error("in-shop", tmp_path), f"'{gone}'", f"'{partition}' line 9",
                    "does not exist")


def test_folder_bad_trees(tmp_path):
    make_nested(tmp_path / "tree")
    stray = write_image(tmp_path / "tree" / "Greek" / "loose.png")
    assert_mentions(parse_error("folder", tmp_path / "tree"), f"'{stray.parent}'",
                    "both images", "expected images only in leaf folders")
    stray.unlink()
    empty = tmp_path / "tree" / "Greek" / "character03"
    empty.mkdir()
    assert_mentions(parse_error("folder", tmp_path / "tree"), f"'{empty}'", "holds no images")
    assert_mentions(parse_error("folder", tmp_path, folder_name="absent"),
                    f"'{tmp_path / 'absent'}'", "--folder_name", "does not exist")


def test_folder_symlink_loop(tmp_path):
    tree = make_nested(tmp_path / "tree")
    loop = tree / "Greek" / "loop"
    loop.symlink_to(tree, target_is_directory=True)
    assert_mentions(parse_error("folder", tree), f"'{loop}'", "links back", "without symlink loops")


def test_folder_train_without_test_or_with_extra_folder(tmp_path):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    assert_mentions(parse_error("folder", tmp_path), f"'{tmp_path}'", "no test/",
                    "expected both train/ and test/")
    make_class_tree(tmp_path / "test", {"c": 2, "d": 2})
    make_class_tree(tmp_path / "val", {"e": 2})
    assert_mentions(parse_error("folder", tmp_path), "'val/'", "expected only train/ and test/")


def test_folder_explicit_split_with_one_class(tmp_path):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_class_tree(tmp_path / "test", {"c": 2})
    assert_mentions(parse_error("folder", tmp_path), f"'{tmp_path / 'test'}'",
                    "found 1 class folder(s)", "expected at least 2")


# --------------------------------------------------------------------------- inflated scores


def test_in_shop_query_also_listed_as_gallery_is_refused(tmp_path):
    query = INSHOP_ROWS[4][0]
    rows = INSHOP_ROWS + [(query, "id_00000007", "gallery")]
    make_inshop(tmp_path, rows)
    partition = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    assert_mentions(parse_error("in-shop", tmp_path), f"'{partition}' as query (line 7)",
                    f"'{partition}' as gallery (line 14)", "1 of the 3 images",
                    str(tmp_path / "in-shop" / query), "inflates Recall@K")


def test_in_shop_repeated_row_and_train_item_in_test_are_refused(tmp_path):
    make_inshop(tmp_path, INSHOP_ROWS + [INSHOP_ROWS[7]])
    partition = tmp_path / "in-shop" / "Eval" / "list_eval_partition.txt"
    assert_mentions(parse_error("in-shop", tmp_path), f"'{partition}' line 14", "again",
                    "first on line 10")
    shutil.rmtree(tmp_path / "in-shop")
    make_inshop(tmp_path, INSHOP_ROWS + [("img/WOMEN/Dresses/id_00000002/03_4_full.jpg",
                                          "id_00000002", "gallery")])
    assert_mentions(parse_error("in-shop", tmp_path), f"'{partition}' line 14",
                    "item 'id_00000002' is a gallery item and also a train item (line 3)",
                    "class-disjoint")


def test_in_shop_query_without_gallery_is_counted_and_reported(tmp_path, capsys):
    # Item id_00000007 keeps its query image but loses both gallery images.
    rows = [row for row in INSHOP_ROWS if not (row[1] == "id_00000007" and row[2] == "gallery")]
    make_inshop(tmp_path, rows)
    splits = datasets.load("in-shop", str(tmp_path))
    query, gallery = splits.evaluation["test"]
    from datasets._integrity import queries_without_gallery

    assert queries_without_gallery(query, gallery) == (1, 1)
    assert "warning: 1 of the 3 query images (1 item(s))" in capsys.readouterr().err
    # main.py reports the count next to the figures.
    import csv

    import main

    folder = main.main(["--dataset", "in-shop", "--source", str(tmp_path), "--n_epochs", "0",
                        "--eval_initial", "--arch", "tinycnn_normalize", "--not_pretrained",
                        "--crop_size", "16", "--bs", "4", "--samples_per_class", "2",
                        "--kernels", "0", "--evaluation_metrics", "recall@1",
                        "--save_path", str(tmp_path / "runs")])
    with open(os.path.join(folder, "metrics.csv"), newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["test/queries_without_gallery"]) == 1.0


def test_sop_duplicated_test_lines_are_refused(tmp_path):
    make_sop(tmp_path)
    info = tmp_path / "online_products" / "Info_Files" / "Ebay_test.txt"
    lines = info.read_text().splitlines()
    info.write_text("\n".join(lines + lines[3:5]) + "\n")
    assert_mentions(parse_error("online_products", tmp_path), f"'{info}' line 9", "again",
                    "first on line 4", "2 line(s) repeat")


def test_sop_test_list_equal_to_train_list_is_refused(tmp_path):
    make_sop(tmp_path)
    info = tmp_path / "online_products" / "Info_Files"
    shutil.copy(info / "Ebay_train.txt", info / "Ebay_test.txt")
    assert_mentions(parse_error("online_products", tmp_path), f"'{info / 'Ebay_test.txt'}'",
                    f"'{info / 'Ebay_train.txt'}'", "7 of the 7 images", "copy of Ebay_train.txt")


def test_sop_class_in_both_lists_is_refused(tmp_path):
    make_sop(tmp_path)
    info = tmp_path / "online_products" / "Info_Files" / "Ebay_test.txt"
    lines = info.read_text().splitlines()
    lines[1] = lines[1].replace(" 11 2 ", " 3 2 ", 1)  # a test image of training product 3
    info.write_text("\n".join(lines) + "\n")
    assert_mentions(parse_error("online_products", tmp_path), "class_id 3", f"'{info}' (line 2)",
                    "Ebay_train.txt' (line 2)", "class-disjoint")


def test_folder_train_and_test_holding_the_same_files_are_refused(tmp_path):
    make_class_tree(tmp_path / "train", {"cat": 2, "dog": 3})
    shutil.copytree(tmp_path / "train", tmp_path / "test")
    assert_mentions(parse_error("folder", tmp_path), "class folder 'cat' is in both train/ and "
                    "test/", "2 shared", "class-disjoint")
    # Renamed copies: the bytes are compared.
    shutil.rmtree(tmp_path / "test")
    make_class_tree(tmp_path / "test", {"owl": 2, "bat": 2})
    shutil.copy(tmp_path / "train" / "dog" / "img_01.jpg", tmp_path / "test" / "owl" / "img_01.jpg")
    assert_mentions(parse_error("folder", tmp_path),
                    f"test image '{tmp_path / 'test' / 'owl' / 'img_01.jpg'}' is a copy of "
                    f"training image '{tmp_path / 'train' / 'dog' / 'img_01.jpg'}'",
                    "1 of the 4 test images")


def test_same_file_in_training_and_test_halves_is_refused(tmp_path):
    make_cub(tmp_path)
    images = tmp_path / "cub200" / "images"
    test_image = images / "004.Groove_billed_Ani" / "img_00.jpg"
    test_image.unlink()
    os.link(images / "001.Black_footed_Albatross" / "img_00.jpg", test_image)
    assert_mentions(parse_error("cub200", tmp_path), "in both the training and the test split",
                    f"(as '{test_image}')", "1 of the 6 test images")
    test_image.unlink()
    test_image.symlink_to(images / "003.Sooty_Albatross" / "img_01.jpg")
    assert_mentions(parse_error("cub200", tmp_path), "the test split holds image", "twice")


# --------------------------------------------------------------------------- real Omniglot


def test_omniglot_folder_gives_68_nested_classes_per_split(omniglot_root):
    splits = datasets.load("folder", str(omniglot_root), folder_name="images_background_small1")
    train, test = splits.train, splits.evaluation["test"]
    assert (train.num_classes, test.num_classes) == (68, 68)
    assert class_sizes(train) == [20] * 68 and class_sizes(test) == [20] * 68
    names = train.class_names + test.class_names
    assert names == sorted(names, key=lambda name: name.split("/"))
    assert all(len(name.split("/")) == 2 for name in names)  # alphabet/character
    assert {name.split("/")[0] for name in names} == {"Balinese", "Early_Aramaic", "Greek",
                                                      "Korean", "Latin"}
    assert not set(train.class_names) & set(test.class_names)
    # The same tree named directly by --source.
    direct = datasets.load("folder", str(omniglot_root / "images_background_small1"))
    assert direct.train.images == train.images
    # Its 1-bit PNGs load as 3-channel tensors with ink on a white page.
    loader = datasets.ImageDataset(test, datasets.build_transform(
        datasets.TransformConfig(crop_size=28, mean=(0, 0, 0), std=(1, 1, 1)), train=False))
    image, label, _ = loader[len(test) - 1]
    assert image.shape == (3, 28, 28) and label == 67
    assert image.dtype == torch.uint8 and image.max() == 255 and image.min() < 128
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


# --------------------------------------------------------------------------- bundled default


def test_bundled_omniglot_unpacks_once_into_the_cache_and_splits_68_68(omniglot_cache,
                                                                        omniglot_root,
                                                                        monkeypatch):
    import zipfile  # datasets/omniglot.py imports it only to unpack

    splits = datasets.load("omniglot", None)
    train, test = splits.train, splits.evaluation["test"]
    assert (train.num_classes, test.num_classes) == (68, 68)
    assert class_sizes(train) == [20] * 68 and class_sizes(test) == [20] * 68
    # The same classes, in the same order, as the zip unpacked by hand and read as a folder.
    by_hand = datasets.load("folder", str(omniglot_root), folder_name="images_background_small1")
    assert train.class_names == by_hand.train.class_names
    assert test.class_names == by_hand.evaluation["test"].class_names
    # Unpacked under the cache, in a folder named by the zip's hash, never in the repository.
    (unpacked,) = (omniglot_cache / "das_dml").iterdir()
    assert unpacked.name.startswith("omniglot-")
    assert all(str(path).startswith(str(unpacked)) for path in train.images[:3] + test.images[-3:])
    # A second load reads the cache without opening the zip.
    monkeypatch.setattr(zipfile, "ZipFile", None)
    assert datasets.load("omniglot", None).train.images == train.images


def test_omniglot_source_names_another_zip_and_bad_ones_are_named(omniglot_cache, tmp_path):
    missing = tmp_path / "elsewhere"
    missing.mkdir()
    assert_mentions(parse_error("omniglot", missing),
                    f"'{missing / 'images_background_small1.zip'}'", "does not exist")
    damaged = tmp_path / "images_background_small1.zip"
    damaged.write_bytes(b"not a zip")
    assert_mentions(parse_error("omniglot", damaged), f"cannot unpack the Omniglot zip '{damaged}'")
    assert not [p for p in (omniglot_cache / "das_dml").iterdir()]  # nothing half-unpacked left


def test_omniglot_is_the_default_dataset_with_its_cpu_settings():
    from parameters import parse_options

    opt = parse_options([])
    assert opt.dataset == "omniglot" and opt.eval_initial is True
    assert (opt.arch, opt.crop_size, opt.bs, opt.samples_per_class, opt.lr, opt.n_epochs,
            opt.pretrained) == ("tinycnn_normalize", 48, 112, 4, 1e-3, 8, False)
    assert parse_options(["--no_eval_initial"]).eval_initial is False
    assert parse_options(["--dataset", "cub200"]).eval_initial is False
    assert parse_options(["--dataset", "digits"]).crop_size == 32  # digits stays available


def test_registry_find_returns_the_member_or_none_where_get_refuses():
    """Readers that tolerate other names (sweep rows, the defaults of a name the checks refuse
    later) look a dataset up with find; get keeps refusing with the list of valid names."""
    from utilities.registry import UnknownNameError

    assert datasets.REGISTRY.find("cub200") is datasets.REGISTRY.get("cub200")
    assert datasets.REGISTRY.find("no_such_set") is None
    with pytest.raises(UnknownNameError, match="valid names: .*cub200"):
        datasets.REGISTRY.get("no_such_set")
