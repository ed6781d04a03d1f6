"""datasets.prepare against tiny fake downloads in each publisher's format (tgz, zip, tar, unpacked
folders, Stanford Cars' .mat files written with scipy.io.savemat), and every refusal."""
from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import scipy.io

import datasets
from datasets import DataError
from datasets.prepare import main as prepare_main
from datasets.prepare import prepare
from tests.test_datasets import (INSHOP_ROWS, SOP_HEADER, SOP_TEST, SOP_TRAIN, class_sizes,
                                 inshop_text, sop_rows, write_image)

# ----------------------------------------------------------------------------- fake downloads

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
               "004.Groove_billed_Ani"]
CUB_COUNTS = [2, 3, 2, 3]


def make_cub_download(parent: Path) -> Path:
    """CUB_200_2011/ as in CUB_200_2011.tgz: images/, images.txt, image_class_labels.txt,
    classes.txt (1-based ids)."""
    home = parent / "CUB_200_2011"
    images, labels = [], []
    for class_id, (name, count) in enumerate(zip(CUB_CLASSES, CUB_COUNTS), start=1):
        for i in range(count):
            relative = f"{name}/{name.split('.')[1]}_{i:04d}_{class_id}.jpg"
            write_image(home / "images" / relative)
            images.append(relative)
            labels.append(class_id)
    (home / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(images, 1)))
    (home / "image_class_labels.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(labels, 1)))
    (home / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CUB_CLASSES, 1)))
    return home


def archive(folder: Path, path: Path, arcname: str = None) -> Path:
    """Pack ``folder`` (as ``arcname``) into a .tgz/.tar or .zip named by ``path``'s suffix."""
    arcname = arcname or folder.name
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as bundle:
            for file in sorted(folder.rglob("*")):
                bundle.write(file, f"{arcname}/{file.relative_to(folder)}")
    else:
        with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as bundle:
            bundle.add(folder, arcname)
    return path


CARS_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012",
              "smart fortwo Convertible 2012"]
CARS_IMAGES = [1, 2, 3, 4, 1, 2, 3, 4, 3]  # class of car_ims/000001.jpg, 000002.jpg, ...


def savemat_annotations(path: Path, rows: List[Dict], **extra) -> None:
    """An ``annotations`` struct array as in the Stanford Cars .mat files."""
    names = list(rows[0])
    records = np.zeros((1, len(rows)), dtype=[(n, "O") for n in names])
    for i, row in enumerate(rows):
        records[0, i] = tuple(row[n] if isinstance(row[n], str) else np.array([[row[n]]])
                              for n in names)
    scipy.io.savemat(str(path), dict(annotations=records, **extra))


def class_names_cell(names: List[str]) -> np.ndarray:
    cell = np.empty((1, len(names)), dtype=object)
    cell[0, :] = names
    return cell


def make_cars_annos_download(parent: Path, classes: List[int] = CARS_IMAGES) -> Path:
    """car_ims/ and cars_annos.mat (relative_im_path, bbox, class, test) in ``parent``."""
    rows = []
    for i, class_id in enumerate(classes, start=1):
        write_image(parent / "car_ims" / f"{i:06d}.jpg")
        rows.append(dict(relative_im_path=f"car_ims/{i:06d}.jpg", bbox_x1=3, bbox_y1=4,
                         bbox_x2=50, bbox_y2=60, **{"class": class_id}, test=i % 2))
    savemat_annotations(parent / "cars_annos.mat", rows, class_names=class_names_cell(CARS_NAMES))
    return parent


def make_cars_devkit_download(parent: Path, with_test_labels: bool = True) -> Path:
    """cars_train/, cars_test/ (both numbered from 00001.jpg) and devkit/*.mat."""
    (parent / "devkit").mkdir(parents=True)
    for split, classes in (("train", [1, 2, 3, 4, 1]), ("test", [2, 3, 4, 1])):
        rows = []
        for i, class_id in enumerate(classes, start=1):
            write_image(parent / f"cars_{split}" / f"{i:05d}.jpg")
            rows.append(dict(bbox_x1=1, bbox_y1=2, bbox_x2=30, bbox_y2=40, **{"class": class_id},
                             fname=f"{i:05d}.jpg"))
        if split == "train":
            savemat_annotations(parent / "devkit" / "cars_train_annos.mat", rows)
        elif with_test_labels:
            savemat_annotations(parent / "cars_test_annos_withlabels.mat", rows)
        else:
            savemat_annotations(parent / "devkit" / "cars_test_annos.mat",
                                [{k: v for k, v in row.items() if k != "class"} for row in rows])
    scipy.io.savemat(str(parent / "devkit" / "cars_meta.mat"),
                     dict(class_names=class_names_cell(CARS_NAMES)))
    return parent


def make_sop_download(parent: Path) -> Path:
    """Stanford_Online_Products/ with Ebay_train.txt and Ebay_test.txt at its root."""
    home = parent / "Stanford_Online_Products"
    home.mkdir(parents=True)
    first = 1
    for split, spec in (("train", SOP_TRAIN), ("test", SOP_TEST)):
        rows = sop_rows(spec, first_id=first)
        first += len(rows)
        for row in rows:
            write_image(home / row.split()[3])
        (home / f"Ebay_{split}.txt").write_text("\n".join([SOP_HEADER] + rows) + "\n")
    (home / "Ebay_info.txt").write_text("image_id class_id super_class_id path\n")
    return home


def make_inshop_download(parent: Path, zipped: bool) -> Path:
    """img.zip (or img/) and Eval/list_eval_partition.txt in ``parent``."""
    images = parent / ("unzipped" if zipped else "") / "img"
    for name, _, _ in INSHOP_ROWS:
        write_image(images.parent / name)
    if zipped:
        archive(images, parent / "img.zip", "img")
        for file in sorted(images.parent.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        images.parent.rmdir()
    (parent / "Eval").mkdir(parents=True, exist_ok=True)
    (parent / "Eval" / "list_eval_partition.txt").write_text(inshop_text())
    return parent


def refusal(name: str, source: Path, data_root: Path, *parts: str) -> str:
    with pytest.raises(DataError) as caught:
        prepare(name, str(source), str(data_root))
    message = caught.value.short_message()
    for part in parts:
        assert part in message, f"{part!r} missing from: {message}"
    assert not (data_root / name).exists()  # nothing half-written
    assert not [p for p in data_root.glob(".*")] if data_root.exists() else True
    return message


# ----------------------------------------------------------------------------- results


def test_cub_from_the_publisher_tgz(tmp_path, capsys):
    tgz = archive(make_cub_download(tmp_path / "download"), tmp_path / "CUB_200_2011.tgz")
    target = prepare("cub200", str(tgz), str(tmp_path / "data"))
    assert target == str(tmp_path / "data" / "cub200")
    splits = datasets.load("cub200", str(tmp_path / "data"))
    assert splits.train.class_names == CUB_CLASSES[:2]
    assert splits.evaluation["test"].class_names == CUB_CLASSES[2:]
    assert class_sizes(splits.train) == [2, 3] and class_sizes(splits.evaluation["test"]) == [2, 3]
    out = capsys.readouterr()
    assert "cub200: 10 images (published 11,788), 4 classes (published 200)" in out.out
    assert "warning: cub200 is smaller than published" in out.err
    assert "10 moved" in out.out  # unpacked files are moved into place, not copied
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cub200"]  # no staging left
    assert tgz.is_file()


def test_cub_from_the_unpacked_folder_is_hard_linked(tmp_path, capsys):
    home = make_cub_download(tmp_path / "download")
    prepare("cub200", str(tmp_path / "download"), str(tmp_path / "data"))
    relative = f"{CUB_CLASSES[3]}/Groove_billed_Ani_0002_4.jpg"
    written = tmp_path / "data" / "cub200" / "images" / relative
    assert os.stat(written).st_ino == os.stat(home / "images" / relative).st_ino
    assert "10 hard-linked" in capsys.readouterr().out


def test_cub_from_the_prepared_tar_of_the_paper_repository(tmp_path):
    images = make_cub_download(tmp_path / "download") / "images"
    tar = archive(images, tmp_path / "cub200.tar", "cub200/images")
    prepare("cub200", str(tar), str(tmp_path / "data"))
    assert datasets.load("cub200", str(tmp_path / "data")).train.class_names == CUB_CLASSES[:2]


def test_cars_from_car_ims_tgz_and_cars_annos_mat(tmp_path, capsys):
    download = make_cars_annos_download(tmp_path / "download")
    archive(download / "car_ims", download / "car_ims.tgz")
    for file in (download / "car_ims").iterdir():
        file.unlink()
    (download / "car_ims").rmdir()
    prepare("cars196", str(download), str(tmp_path / "data"))
    splits = datasets.load("cars196", str(tmp_path / "data"))
    # Folders named NNN.<class name>, so sorted folders follow the published class ids; the '/'
    # of 'Ram C/V' cannot be in a folder name.
    assert splits.train.class_names == ["001.AM General Hummer SUV 2000", "002.Acura RL Sedan 2012"]
    assert splits.evaluation["test"].class_names == ["003.Ram C-V Cargo Van Minivan 2012",
                                                     "004.smart fortwo Convertible 2012"]
    assert class_sizes(splits.train) == [2, 2] and class_sizes(splits.evaluation["test"]) == [3, 2]
    assert "cars196: 9 images (published 16,185), 4 classes (published 196)" in \
        capsys.readouterr().out


def test_cars_from_unpacked_car_ims(tmp_path):
    make_cars_annos_download(tmp_path / "download")
    prepare("cars196", str(tmp_path / "download"), str(tmp_path / "data"))
    images = tmp_path / "data" / "cars196" / "images"
    assert (images / "003.Ram C-V Cargo Van Minivan 2012" / "000009.jpg").stat().st_ino == \
        (tmp_path / "download" / "car_ims" / "000009.jpg").stat().st_ino


def test_cars_from_the_devkit_train_and_test_folders(tmp_path):
    make_cars_devkit_download(tmp_path / "download")
    prepare("cars196", str(tmp_path / "download"), str(tmp_path / "data"))
    splits = datasets.load("cars196", str(tmp_path / "data"))
    assert class_sizes(splits.train) == [3, 2] and class_sizes(splits.evaluation["test"]) == [2, 2]
    # cars_train/ and cars_test/ both start at 00001.jpg: their files are kept apart.
    first = tmp_path / "data" / "cars196" / "images" / "001.AM General Hummer SUV 2000"
    assert sorted(p.name for p in first.iterdir()) == ["test_00004.jpg", "train_00001.jpg",
                                                       "train_00005.jpg"]


def test_sop_from_the_publisher_zip(tmp_path, capsys):
    home = make_sop_download(tmp_path / "download")
    zipped = archive(home, tmp_path / "Stanford_Online_Products.zip")
    prepare("online_products", str(zipped), str(tmp_path / "data"))
    splits = datasets.load("online_products", str(tmp_path / "data"))
    assert splits.train.class_names == ["1", "2", "3"]
    assert splits.evaluation["test"].class_names == ["11", "12", "14"]
    assert (len(splits.train), len(splits.evaluation["test"])) == (7, 7)
    assert "online_products: 14 images (published 120,053), 6 classes (published 22,634)" in \
        capsys.readouterr().out


def test_sop_from_the_prepared_tar(tmp_path):
    home = make_sop_download(tmp_path / "download")
    prepared = tmp_path / "online_products"
    (prepared / "Info_Files").mkdir(parents=True)
    os.rename(home, prepared / "images")
    for split in ("train", "test"):
        os.rename(prepared / "images" / f"Ebay_{split}.txt",
                  prepared / "Info_Files" / f"Ebay_{split}.txt")
    tar = archive(prepared, tmp_path / "online_products.tar")
    prepare("online_products", str(tar), str(tmp_path / "data"))
    assert len(datasets.load("online_products", str(tmp_path / "data")).train) == 7


@pytest.mark.parametrize("zipped", [True, False], ids=["img.zip", "img folder"])
def test_in_shop_from_img_zip_or_folder_and_the_partition_file(tmp_path, capsys, zipped):
    make_inshop_download(tmp_path / "download", zipped)
    prepare("in-shop", str(tmp_path / "download"), str(tmp_path / "data"))
    splits = datasets.load("in-shop", str(tmp_path / "data"))
    query, gallery = splits.evaluation["test"]
    assert (len(splits.train), len(query), len(gallery)) == (4, 3, 4)
    assert "in-shop: 11 images (published 52,712), 5 items (published 7,982)" in \
        capsys.readouterr().out


def test_command_line_prints_the_one_line_refusal(tmp_path, capsys):
    make_cub_download(tmp_path / "download")
    assert prepare_main(["cub200", "--from", str(tmp_path / "download"),
                         "--to", str(tmp_path / "data")]) == 0
    assert "python main.py --dataset cub200 --source" in capsys.readouterr().out
    assert prepare_main(["cub200", "--from", str(tmp_path / "download"),
                         "--to", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- refusals


def test_cub_refusals_name_what_is_missing_or_disagrees(tmp_path):
    home = make_cub_download(tmp_path / "download")
    data = tmp_path / "data"
    gone = home / "images" / CUB_CLASSES[1] / "Laysan_Albatross_0001_2.jpg"
    gone.rename(gone.with_suffix(".bak"))
    refusal("cub200", home, data, f"'{home / 'images.txt'}' lists", f"'{gone}' does not exist",
            "1 of the 10 listed files")
    gone.with_suffix(".bak").rename(gone)
    gone.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    refusal("cub200", home, data, f"image '{gone}' does not decode", "1 of the 10 images")
    write_image(gone)
    labels = (home / "image_class_labels.txt").read_text().splitlines()
    (home / "image_class_labels.txt").write_text("\n".join(labels[:-1]) + "\n")
    refusal("cub200", home, data, "image id 10", "has no class in", "image_class_labels.txt")
    labels[0] = "1 2"
    (home / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    refusal("cub200", home, data, "image id 1", "outside the folder of its class 2",
            "expected the annotation files to agree")
    labels[0] = "1 1"
    (home / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    with open(home / "classes.txt", "a") as handle:
        handle.write("5 005.Crested_Auklet\n")
    refusal("cub200", home, data, "class 5 '005.Crested_Auklet'", "has no image")


def test_cars_refusals(tmp_path):
    download = make_cars_annos_download(tmp_path / "a")
    (download / "car_ims" / "000004.jpg").unlink()
    refusal("cars196", download, tmp_path / "data", "cars_annos.mat' lists '000004.jpg'",
            "1 of the 9 listed files")
    only = make_cars_annos_download(tmp_path / "b", classes=[1, 2, 3, 1, 2, 3])
    refusal("cars196", only, tmp_path / "data", "class 4 'smart fortwo Convertible 2012' has no "
            "image", "cars_annos.mat")
    devkit = make_cars_devkit_download(tmp_path / "c", with_test_labels=False)
    refusal("cars196", devkit, tmp_path / "data", "no cars_test_annos_withlabels.mat",
            "cars_test_annos.mat' has no class labels")


def test_sop_and_in_shop_refuse_missing_listed_images(tmp_path):
    home = make_sop_download(tmp_path / "sop")
    (home / "mug_final" / "12001_1.JPG").unlink()
    refusal("online_products", home, tmp_path / "data", "Ebay_test.txt' lists "
            "'mug_final/12001_1.JPG'", "1 of the 7 listed files")
    download = make_inshop_download(tmp_path / "inshop", zipped=False)
    (download / INSHOP_ROWS[5][0]).unlink()
    refusal("in-shop", download, tmp_path / "data", "list_eval_partition.txt' lists "
            f"'{INSHOP_ROWS[5][0]}'", "1 of the 11 listed files")


def test_inputs_that_are_not_a_download_are_refused(tmp_path):
    data = tmp_path / "data"
    refusal("cub200", tmp_path / "nowhere", data, "does not exist")
    text = tmp_path / "notes.txt"
    text.write_text("x")
    refusal("cub200", text, data, "is a file but not an archive")
    broken = tmp_path / "CUB_200_2011.tgz"
    broken.write_bytes(b"not gzip")
    refusal("cub200", broken, data, f"cannot unpack '{broken}'")
    empty = tmp_path / "empty"
    empty.mkdir()
    refusal("online_products", empty, data, "found no Stanford Online Products files",
            "Stanford_Online_Products.zip")
    refusal("in-shop", empty, data, "found no list_eval_partition.txt")
    refusal("cars196", empty, data, "found no Stanford Cars files", "cars_annos.mat")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        prepare("mnist", str(empty), str(data))
