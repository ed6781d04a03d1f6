"""tools.prepare against tiny fake downloads in each publisher's format (tgz, zip, tar, unpacked
folders, Stanford Cars' .mat files written with scipy.io.savemat), and every refusal."""
from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import scipy.io

import datasets
from datasets import DataError
import tools.prepare as prepare_module
from tools.prepare import main as prepare_main
from tools.prepare import prepare
from tests.fixtures import REPO_ROOT
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
                         "--to", str(tmp_path / "data")]) == 2
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


# ----------------------------------------------------------------------------- hostile downloads
# (issue 20: partial or hostile downloads, messages that name what the user has)


def cub_members(home: Path) -> List[Path]:
    """CUB_200_2011/ files with the images first, the lists last (as a download cut before
    images.txt sees them)."""
    files = sorted(p for p in home.rglob("*") if p.is_file())
    return [p for p in files if "images" in p.relative_to(home).parts[:1]] + \
        [p for p in files if p.parent == home]


def tar_of(home: Path, path: Path, members: List[Path]) -> Path:
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as bundle:
        for file in members:
            bundle.add(file, f"{home.name}/{file.relative_to(home)}", recursive=False)
    return path


def assert_nothing_written(data: Path) -> None:
    assert not data.exists() or sorted(p.name for p in data.iterdir()) == []


def test_a_cub_archive_cut_before_images_txt_is_not_taken_for_the_prepared_layout(tmp_path):
    home = make_cub_download(tmp_path / "download")
    members = cub_members(home)
    assert members[6].name.endswith(".jpg") and members[-1].name.endswith(".txt")
    # A well-formed tar holding only the first 6 of the 10 images: no images.txt.
    cut = tar_of(home, tmp_path / "CUB_200_2011.tgz", members[:6])
    message = refusal("cub200", cut, tmp_path / "data", "is the publisher's CUB-200-2011 "
                      "download, but it lacks images.txt", "incomplete download")
    assert ".unpacked" not in message and "CUB_200_2011' in '" in message
    assert_nothing_written(tmp_path / "data")
    # The same folder unpacked by hand is refused the same way.
    partial = tmp_path / "partial"
    for file in members[:6]:
        (partial / file.relative_to(home.parent)).parent.mkdir(parents=True, exist_ok=True)
        (partial / file.relative_to(home.parent)).write_bytes(file.read_bytes())
    refusal("cub200", partial, tmp_path / "data", "lacks images.txt, image_class_labels.txt, "
            "classes.txt")


@pytest.mark.parametrize("suffix", [".tar", ".tgz", ".zip"])
def test_an_archive_that_ends_early_is_refused_naming_it(tmp_path, suffix):
    home = make_cub_download(tmp_path / "download")
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".zip":
        archive(home, whole)
    else:
        tar_of(home, whole, cub_members(home))
    data = whole.read_bytes()
    cut = tmp_path / f"CUB_200_2011{suffix}"
    if suffix == ".tar":  # cut exactly after a member: tarfile itself reports no error
        with tarfile.open(whole) as bundle:
            sixth = bundle.getmembers()[6]
        cut.write_bytes(data[:sixth.offset])
        expected = "the archive ends early (after 6 member(s)"
    else:
        cut.write_bytes(data[:len(data) * 2 // 3])
        expected = "download it again"
    message = refusal("cub200", cut, tmp_path / "data", f"cannot unpack '{cut}'", expected)
    assert "\n" not in message and not message.rstrip().endswith(":")


def test_archives_are_read_by_content_and_garbage_gets_a_whole_message(tmp_path):
    home = make_cub_download(tmp_path / "download")
    zipped_as_tgz = archive(home, tmp_path / "CUB.zip").rename(tmp_path / "CUB_200_2011.tgz")
    prepare("cub200", str(zipped_as_tgz), str(tmp_path / "data"))  # a zip named .tgz unpacks
    assert len(datasets.load("cub200", str(tmp_path / "data")).train) == 5
    garbage = tmp_path / "other.tgz"
    garbage.write_bytes(b"<html>not found</html>" * 40)
    message = refusal("cub200", garbage, tmp_path / "data2", f"cannot unpack '{garbage}': neither "
                      "a tar (.tgz, .tar.gz, .tar) nor a zip archive", "download it again")
    assert "could not be opened successfully" not in message
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    refusal("cub200", empty, tmp_path / "data2", f"cannot unpack '{empty}': the file is empty")


def test_a_wrong_archive_for_the_dataset_names_the_archive(tmp_path):
    sop = archive(make_sop_download(tmp_path / "download"),
                  tmp_path / "Stanford_Online_Products.zip")
    message = refusal("cub200", sop, tmp_path / "data", f"found no CUB-200-2011 files under "
                      f"'{sop}'")
    assert ".unpacked" not in message


def test_a_damaged_image_inside_an_archive_names_the_member_and_the_archive(tmp_path):
    home = make_cub_download(tmp_path / "download")
    bad = home / "images" / CUB_CLASSES[2] / "Sooty_Albatross_0001_3.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    tgz = archive(home, tmp_path / "CUB_200_2011.tgz")
    refusal("cub200", tgz, tmp_path / "data", f"image 'CUB_200_2011/images/{CUB_CLASSES[2]}/"
            f"Sooty_Albatross_0001_3.jpg' in '{tgz}' does not decode")


def member_bytes(bundle: zipfile.ZipFile, name: str, data: bytes) -> None:
    bundle.writestr(zipfile.ZipInfo(name), data)


@pytest.mark.parametrize("member,problem", [("../evil.jpg", "contains '..'"),
                                            ("/tmp/evil.jpg", "is an absolute path"),
                                            ("CUB_200_2011\\..\\evil.jpg", "contains a backslash")])
def test_zip_members_that_leave_the_archive_are_refused(tmp_path, member, problem):
    home = make_cub_download(tmp_path / "download")
    zipped = archive(home, tmp_path / "CUB_200_2011.zip")
    with zipfile.ZipFile(zipped, "a") as bundle:
        member_bytes(bundle, member, b"x")
    refusal("cub200", zipped, tmp_path / "data", f"cannot unpack '{zipped}': member "
            f"'{member}' {problem}")
    assert not (tmp_path / "evil.jpg").exists()


def test_tar_members_that_leave_the_archive_are_refused(tmp_path):
    home = make_cub_download(tmp_path / "download")
    tgz = archive(home, tmp_path / "CUB_200_2011.tar")
    with tarfile.open(tgz, "a") as bundle:
        info = tarfile.TarInfo("../evil.jpg")
        info.size = 1
        bundle.addfile(info, io.BytesIO(b"x"))
    refusal("cub200", tgz, tmp_path / "data", f"cannot unpack '{tgz}'", "evil.jpg")
    assert not (tmp_path / "evil.jpg").exists()
    linked = tmp_path / "linked.tar"  # a link member pointing outside
    with tarfile.open(linked, "w") as bundle:
        bundle.add(home, "CUB_200_2011")
        info = tarfile.TarInfo("CUB_200_2011/images/link.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/hostname"
        bundle.addfile(info)
    refusal("cub200", linked, tmp_path / "data", f"cannot unpack '{linked}'", "link.jpg")


def rewrite_images_txt(home: Path, index: int, path: str) -> None:
    lines = (home / "images.txt").read_text().splitlines()
    lines[index] = f"{index + 1} {path}"
    (home / "images.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("listed,problem", [
    ("/etc/hostname", "is an absolute path"),
    (f"{CUB_CLASSES[0]}/../../../outside.jpg", "contains '..'"),
    (f"{CUB_CLASSES[0]}/./x.jpg", "'.' component"),
    (f"{CUB_CLASSES[0]}/linked.jpg", "outside the download"),
], ids=["absolute", "dotdot", "dot", "symlink-out"])
def test_paths_in_the_publishers_lists_are_data_not_trusted_paths(tmp_path, listed, problem):
    home = make_cub_download(tmp_path / "download")
    outside = tmp_path / "outside.jpg"
    write_image(outside)
    rewrite_images_txt(home, 0, listed)
    tgz = archive(home, tmp_path / "CUB_200_2011.tgz")
    os.symlink(outside, home / "images" / CUB_CLASSES[0] / "linked.jpg")
    refusal("cub200", home, tmp_path / "data", f"'{home / 'images.txt'}'", f"'{listed}'", problem)
    # inside an archive the message names the list as a member of the archive
    if "linked" not in listed:
        refusal("cub200", tgz, tmp_path / "data", f"'CUB_200_2011/images.txt' in '{tgz}'",
                problem)


def test_list_paths_of_the_other_datasets_are_checked_too(tmp_path):
    home = make_sop_download(tmp_path / "sop")
    text = (home / "Ebay_train.txt").read_text().replace("bicycle_final/", "../bicycle_final/", 1)
    (home / "Ebay_train.txt").write_text(text)
    refusal("online_products", home, tmp_path / "data", "Ebay_train.txt' line 4 names "
            "'../bicycle_final/", "contains '..'")
    download = make_inshop_download(tmp_path / "inshop", zipped=False)
    partition = download / "Eval" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace(INSHOP_ROWS[0][0], "/etc/hostname"))
    refusal("in-shop", download, tmp_path / "data", "names '/etc/hostname'", "expected a path "
            "inside img/")
    cars = make_cars_annos_download(tmp_path / "cars")
    rows = [dict(relative_im_path="car_ims/../../x.jpg" if i == 1 else f"car_ims/{i:06d}.jpg",
                 **{"class": c}) for i, c in enumerate(CARS_IMAGES, start=1)]
    savemat_annotations(cars / "cars_annos.mat", rows, class_names=class_names_cell(CARS_NAMES))
    refusal("cars196", cars, tmp_path / "data", "cars_annos.mat' names 'car_ims/../../x.jpg'",
            "contains '..'")


def test_lists_cut_or_edited_are_refused(tmp_path):
    home = make_cub_download(tmp_path / "cub")
    rewrite_images_txt(home, 4, (home / "images.txt").read_text().splitlines()[3].split()[1])
    refusal("cub200", home, tmp_path / "data", "images.txt' lists 'images/", "twice")
    home = make_cub_download(tmp_path / "cub2")
    lines = (home / "classes.txt").read_text().splitlines()
    (home / "classes.txt").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    refusal("cub200", home, tmp_path / "data", "classes.txt' line 2: id '3', expected 2")
    download = make_inshop_download(tmp_path / "inshop", zipped=False)
    partition = download / "Eval" / "list_eval_partition.txt"
    partition.write_text("\n".join(partition.read_text().splitlines()[:-2]) + "\n")
    refusal("in-shop", download, tmp_path / "data", "lists 9 image(s), but its first line says "
            "'11'")


def test_prepared_class_folders_with_a_numbering_gap_are_refused(tmp_path):
    images = make_cub_download(tmp_path / "download") / "images"
    for file in (images / CUB_CLASSES[1]).iterdir():
        file.unlink()
    (images / CUB_CLASSES[1]).rmdir()
    tar = archive(images, tmp_path / "cub200.tar", "cub200/images")
    refusal("cub200", tar, tmp_path / "data", "no class folder numbered 002", "1 of 1..4")


def test_to_a_file_and_ctrl_c_are_one_line(tmp_path, capsys, monkeypatch):
    tgz = archive(make_cub_download(tmp_path / "download"), tmp_path / "CUB_200_2011.tgz")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert prepare_main(["cub200", "--from", str(tgz), "--to", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --to '{a_file}' is a file; expected the folder (DATA_ROOT) to write " \
                  f"cub200/ into (it is created when missing)\n"

    def interrupted(path):
        raise KeyboardInterrupt

    data = tmp_path / "data"
    monkeypatch.setattr(prepare_module, "decode_problem", interrupted)
    assert prepare_main(["cub200", "--from", str(tgz), "--to", str(data)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and err.count("\n") == 1
    assert_nothing_written(data)  # nothing half-written to be taken for a prepared layout
    monkeypatch.undo()
    assert prepare_main(["cub200", "--from", str(tgz), "--to", str(data)]) == 0


def test_list_files_without_their_header_lines_are_refused(tmp_path):
    home = make_sop_download(tmp_path / "sop")
    lines = (home / "Ebay_test.txt").read_text().splitlines()
    (home / "Ebay_test.txt").write_text("\n".join(lines[1:]) + "\n")  # first image taken as header
    refusal("online_products", home, tmp_path / "data", "Ebay_test.txt' does not start with the "
            "line 'image_id class_id super_class_id path'")
    download = make_inshop_download(tmp_path / "inshop", zipped=False)
    partition = download / "Eval" / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    partition.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    refusal("in-shop", download, tmp_path / "data", "list_eval_partition.txt' line 2 is not "
            "'image_name item_id evaluation_status'")


def test_a_full_disk_while_writing_names_the_to_folder_and_leaves_nothing(tmp_path, monkeypatch):
    home = make_cub_download(tmp_path / "download")
    real_place, calls = prepare_module.place, {"n": 0}

    def fills_up(source, destination, move):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device", destination)
        return real_place(source, destination, move)

    monkeypatch.setattr(prepare_module, "place", fills_up)
    message = refusal("cub200", home, tmp_path / "data", f"cannot write under --to "
                      f"'{tmp_path / 'data'}': No space left on device; nothing was kept there")
    assert ".preparing" not in message
    assert_nothing_written(tmp_path / "data")


# ----------------------------------------------------------------------------- the command's place

ARCHIVE_MODULES = ("tarfile", "zipfile", "concurrent.futures")


def test_import_datasets_leaves_the_prepare_command_and_its_archive_modules_alone():
    """The command lives in tools/: ``import datasets`` loads no part of it, and no module of
    datasets/ imports tarfile, zipfile or a thread pool when loaded (torch itself loads
    tarfile and zipfile, so their absence from sys.modules cannot be asserted)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, datasets; print(' '.join(sorted(m for m in sys.modules "
         "if m.startswith(('tools', 'datasets.prepare')))))"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
    for path in sorted((REPO_ROOT / "datasets").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in tree.body if isinstance(node, ast.Import)
                 for alias in node.names]
        names += [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n and n.startswith(ARCHIVE_MODULES)], path.name
