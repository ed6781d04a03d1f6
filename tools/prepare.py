"""Turn a benchmark as its publisher ships it into the layout ``--dataset NAME`` reads.

    python -m datasets.prepare NAME --from PATH --to DATA_ROOT

then ``python main.py --dataset NAME --source DATA_ROOT``. ``--from`` is the downloaded archive
(``.tgz``, ``.tar.gz``, ``.tar``, ``.zip``), the folder holding the download(s), or the unpacked
folder; what is recognised per dataset:

- ``cub200``: ``CUB_200_2011.tgz`` or its ``CUB_200_2011/`` folder (``images/``, ``images.txt``,
  ``image_class_labels.txt``, ``classes.txt``), or the prepared ``cub200.tar`` of the DAS
  repository (``cub200/images/<class>/``).
- ``cars196``: ``car_ims.tgz`` or ``car_ims/`` with ``cars_annos.mat``; or ``cars_train/`` and
  ``cars_test/`` with the devkit's ``cars_meta.mat``, ``cars_train_annos.mat`` and
  ``cars_test_annos_withlabels.mat``; or the prepared ``cars196.tar``. Images are grouped into
  ``images/NNN.<class name>/`` (NNN the published class id, so that sorted folders follow the
  published class order: classes 1-98 train, 99-196 test).
- ``online_products``: ``Stanford_Online_Products.zip`` or its folder (``Ebay_train.txt``,
  ``Ebay_test.txt``, ``<category>_final/``), or the prepared ``online_products.tar``.
- ``in-shop``: ``img.zip`` or ``img/`` with ``Eval/list_eval_partition.txt``.

Files of unpacked input are hard-linked into place (symlinked across file systems, copied only
where neither works), so 60k images are not stored twice; an archive is unpacked into a staging
folder under DATA_ROOT and its files moved into place. Before anything is written the download is
checked: every listed file exists and decodes, every class has images, the annotation files
agree; an inconsistent download is refused naming what is missing. The result is written under
a temporary name, loaded with :func:`datasets.load` (which runs the checks of every training
run) and only then renamed to ``DATA_ROOT/NAME``. The counts are printed next to the published
ones, with a warning when a consistent download is smaller.

What a download may not do (each refused in one line naming the archive or list file, exit
status 2): end early (a tar without its end-of-archive blocks, a gzip/bz2/xz stream cut short,
a zip without its central directory or with a bad CRC), hold files that do not decode, lack one
of the publisher's list files while other publisher files are there (a CUB archive cut before
``images.txt`` is not taken for the prepared ``images/<class>/`` layout), or name paths that are
absolute, contain ``..`` or resolve outside the unpacked download (in archive members and in the
publisher's list files alike). Ctrl-C removes what was written; ``DATA_ROOT/NAME`` only appears
once everything was written and checked.
"""
from __future__ import annotations

import errno
import lzma
import os
import re
import shutil
import sys
import tarfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from utilities.errors import run_command
from utilities.options import OptionParser

from .._base import DataError
from .._layout import is_image_name, read_list_file, visible_entries

SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]
INSHOP_HEADER = ["image_name", "item_id", "evaluation_status"]
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
SEARCH_DEPTH = 3  # how deep below --from the publisher's files are looked for


@dataclass(frozen=True)
class Published:
    images: int
    classes: int
    class_word: str = "classes"


PUBLISHED = {
    "cub200": Published(11788, 200),
    "cars196": Published(16185, 196),
    "online_products": Published(120053, 22634),
    "in-shop": Published(52712, 7982, "items"),
}


@dataclass
class Plan:
    """What to write: destination path (relative to DATA_ROOT/NAME) -> source file."""

    files: Dict[str, str] = field(default_factory=dict)
    images: List[str] = field(default_factory=list)  # destinations that must decode
    described: str = ""

    def add(self, destination: str, source: str, image: bool = True,
            list_file: str = "") -> None:
        if destination in self.files:
            where = f"'{list_file}' lists" if list_file else "the download holds"
            raise DataError(f"{where} '{destination}' twice (from '{self.files[destination]}' and "
                            f"'{source}'); expected every image once")
        self.files[destination] = source
        if image:
            self.images.append(destination)


# --------------------------------------------------------------------------- finding the files


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and is_archive_file(path)


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces collapsed (library errors span lines)."""
    return " ".join(str(text).split())


def unsafe_member(name: str) -> Optional[str]:
    """Why an archive member or list-file path may not be used, or None: absolute paths, drive
    letters, backslashes and '..' components could write or read outside the download."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash"
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        return "contains '..'"
    if "." in parts or "" in parts:
        return "contains an empty or '.' component"
    return None


def safe_roots(root: str) -> List[str]:
    """Real paths that files named by list files under ``root`` may resolve into: ``root`` and
    what its top-level links point to (the loose files of a folder of downloads)."""
    roots = [os.path.realpath(root)]
    roots += [os.path.realpath(e.path) for e in visible_entries(root) if e.is_symlink()]
    return roots


def listed_path(base: str, relative: str, list_file: str, roots: Sequence[str],
                line: Optional[int] = None) -> str:
    """``base/relative`` for a path named in a publisher's list file. Such paths are data: one
    that is absolute, has '..' or resolves outside ``roots`` (the unpacked download) is refused."""
    where = f"'{list_file}'" + (f" line {line}" if line else "")
    problem = unsafe_member(relative)
    if problem:
        raise DataError(f"{where} names '{relative}', which {problem}; expected a path relative "
                        f"to the download, inside it")
    path = os.path.join(base, relative)
    real = os.path.realpath(path)
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise DataError(f"{where} names '{relative}', which resolves to '{real}', outside the "
                        f"download; expected a file inside it")
    return path


def tar_ends_properly(bundle: tarfile.TarFile) -> bool:
    """Whether a fully read tar ends with its end-of-archive block and its compressed stream is
    complete. tarfile stops without an error at a file that ends between two members, which is
    how a download cut at the wrong moment (or a tar of only its first members) looks."""
    handle = bundle.fileobj
    handle.seek(bundle.offset)
    block = handle.read(tarfile.BLOCKSIZE)
    if len(block) != tarfile.BLOCKSIZE or block.count(b"\0") != tarfile.BLOCKSIZE:
        return False
    while handle.read(1 << 20):  # a gzip/bz2/xz stream cut short raises EOFError here
        pass
    return True


def archive_problem(archive: str) -> str:
    """Why ``archive`` opens neither as a tar nor as a zip, from its first bytes."""
    with open(archive, "rb") as handle:
        head = handle.read(8)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        return "a zip archive that ends early or is damaged (no central directory)"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        return "a compressed stream that ends early or is damaged"
    return "neither a tar (.tgz, .tar.gz, .tar) nor a zip archive"


def unpack(archive: str, into: str) -> List[str]:
    """Unpack a tar (any compression) or zip archive, whatever its name says, into ``into``;
    returns its member paths. Refuses, naming ``archive``: an archive that ends early or is
    damaged, members with absolute or '..' paths or links leaving ``into``, and a zip whose
    content exceeds the free space."""
    print(f"unpacking {archive} ...", flush=True)
    os.makedirs(into, exist_ok=True)
    expected = "expected a complete .tgz/.tar.gz/.tar/.zip download; download it again"
    try:
        try:
            bundle = tarfile.open(archive)
        except tarfile.ReadError:
            bundle = None
        if bundle is not None:
            with bundle:
                bundle.extractall(into, filter="data")  # refuses links and paths leaving `into`
                names = [member.name for member in bundle.getmembers()]
                if not tar_ends_properly(bundle):
                    raise DataError(f"cannot unpack '{archive}': the archive ends early (after "
                                    f"{len(names)} member(s), without its end-of-archive "
                                    f"blocks); {expected}")
            return names
        if not zipfile.is_zipfile(archive):
            raise DataError(f"cannot unpack '{archive}': {archive_problem(archive)}; {expected}")
        with zipfile.ZipFile(archive) as bundle:
            infos = bundle.infolist()
            for info in infos:
                problem = unsafe_member(info.filename)
                if problem:
                    raise DataError(f"cannot unpack '{archive}': member '{info.filename}' "
                                    f"{problem}; expected paths inside the archive")
            needed, free = sum(info.file_size for info in infos), shutil.disk_usage(into).free
            if needed > free:
                raise DataError(f"cannot unpack '{archive}': it holds {needed / 2**30:.1f} GiB, "
                                f"but '{into}' has {free / 2**30:.1f} GiB free; expected room "
                                f"for the unpacked download under --to")
            bundle.extractall(into)
            return [info.filename for info in infos]
    except DataError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
            ValueError) as error:
        raise DataError(f"cannot unpack '{archive}': {one_line(error) or type(error).__name__}; "
                        f"{expected}") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"cannot unpack '{archive}' into '{into}': no space left on the "
                            f"device; expected room for the unpacked download under --to") \
                from None
        if error.filename is None or os.path.abspath(error.filename) == os.path.abspath(archive):
            raise DataError(f"cannot unpack '{archive}': {one_line(error.strerror or error)}; "
                            f"{expected}") from None
        raise


def find_dir(root: str, accept: Callable[[str], bool], depth: int = SEARCH_DEPTH) -> Optional[str]:
    """The shallowest folder under ``root`` (``root`` included) that ``accept`` takes."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [e.path for folder in level for e in visible_entries(folder) if e.is_dir()]
    return None


def find_file(root: str, name: str, depth: int = SEARCH_DEPTH) -> Optional[str]:
    folder = find_dir(root, lambda f: os.path.isfile(os.path.join(f, name)), depth)
    return os.path.join(folder, name) if folder else None


def archives_under(root: str, depth: int = SEARCH_DEPTH) -> List[str]:
    found, level = [], [root]
    for _ in range(depth + 1):
        found += [e.path for folder in level for e in visible_entries(folder) if is_archive(e.path)]
        level = [e.path for folder in level for e in visible_entries(folder) if e.is_dir()]
    return found


def has(folder: str, *names: str) -> bool:
    return all(os.path.exists(os.path.join(folder, name)) for name in names)


def has_class_folders(images_dir: str) -> bool:
    if not os.path.isdir(images_dir):
        return False
    folders = [e for e in visible_entries(images_dir) if e.is_dir()]
    return bool(folders) and any(is_image_name(e.name) for e in visible_entries(folders[0].path))


def class_folder_plan(images_dir: str, plan: Plan) -> Plan:
    """An already prepared ``images/<class>/*`` tree (the DAS repository's tar files). Class
    folders numbered as published (``001.Name``) must run 1, 2, 3, ... without a gap."""
    folders = [e for e in visible_entries(images_dir) if e.is_dir()]
    numbers = [int(m.group(1)) for m in (re.match(r"^(\d+)\.", f.name) for f in folders) if m]
    if numbers and len(numbers) == len(folders):
        absent = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
        if absent:
            raise DataError(f"'{images_dir}' has no class folder numbered {absent[0]:03d} "
                            f"({len(absent)} of 1..{max(numbers)} are missing); expected every "
                            f"published class (an incomplete download or unpack?)")
    for folder in folders:
        images = [e for e in visible_entries(folder.path) if is_image_name(e.name) and e.is_file()]
        if not images:
            raise DataError(f"class folder '{folder.path}' holds no images; expected the "
                            f"images of every class")
        for image in images:
            plan.add(f"images/{folder.name}/{image.name}", image.path)
    plan.described = f"prepared class folders '{images_dir}'"
    return plan


def require(path: Optional[str], what: str, where: str) -> str:
    if path is None:
        raise DataError(f"found no {what} under '{where}'; is the download complete?")
    return path


def missing_files(listed: Sequence[Tuple[str, str]], list_file: str) -> None:
    """Refuse when files named by ``list_file`` (pairs of listed name, path) are absent."""
    absent = [(name, path) for name, path in listed if not os.path.isfile(path)]
    if absent:
        name, path = absent[0]
        raise DataError(f"'{list_file}' lists '{name}', but '{path}' does not exist; "
                        f"{len(absent)} of the {len(listed)} listed files are missing (an "
                        f"incomplete download or unpack?)")


# --------------------------------------------------------------------------- per dataset


CUB_LISTS = ("images.txt", "image_class_labels.txt", "classes.txt")
# Files and folders of CUB_200_2011.tgz besides images/: one of them without the lists means the
# publisher's download, cut short or partly unpacked, never the prepared class-folder layout.
CUB_MARKERS = CUB_LISTS + ("train_test_split.txt", "bounding_boxes.txt", "attributes", "parts",
                           "attributes.txt")


def plan_cub200(root: str) -> Plan:
    plan = Plan()
    home = find_dir(root, lambda f: has(f, *CUB_LISTS, "images"))
    if home is None:
        partial = find_dir(root, lambda f: os.path.basename(f) == "CUB_200_2011" or
                           any(os.path.exists(os.path.join(f, m)) for m in CUB_MARKERS))
        if partial is not None:
            absent = [name for name in CUB_LISTS + ("images",) if not has(partial, name)]
            raise DataError(f"'{partial}' is the publisher's CUB-200-2011 download, but it lacks "
                            f"{', '.join(absent)}; an incomplete download or unpack (expected "
                            f"images/, {', '.join(CUB_LISTS)})")
        prepared = find_dir(root, lambda f: os.path.basename(f) == "images" and
                            has_class_folders(f))
        if prepared is not None:
            return class_folder_plan(prepared, plan)
        raise DataError(f"found no CUB-200-2011 files under '{root}'; expected CUB_200_2011.tgz, "
                        f"its CUB_200_2011/ folder (images/, images.txt, image_class_labels.txt, "
                        f"classes.txt) or the prepared cub200.tar (cub200/images/<class>/)")

    def table(name: str) -> Dict[str, str]:
        """``<id> <value>`` rows; the publisher numbers them 1, 2, 3, ... without gaps."""
        path = os.path.join(home, name)
        rows: Dict[str, str] = {}
        for number, fields in read_list_file(path):
            if len(fields) != 2:
                raise DataError(f"'{path}' line {number}: expected '<id> <value>', found "
                                f"'{' '.join(fields)}'")
            if fields[0] != str(len(rows) + 1):
                raise DataError(f"'{path}' line {number}: id '{fields[0]}', expected "
                                f"{len(rows) + 1} (the published ids run 1, 2, 3, ... without "
                                f"gaps or repeats; a damaged or edited file?)")
            rows[fields[0]] = fields[1]
        if not rows:
            raise DataError(f"'{path}' is empty; expected the publisher's list")
        return rows

    classes, images, labels = (table(n) for n in ("classes.txt", "images.txt",
                                                  "image_class_labels.txt"))
    images_file = os.path.join(home, "images.txt")
    labels_file = os.path.join(home, "image_class_labels.txt")
    classes_file = os.path.join(home, "classes.txt")
    for class_id, class_name in classes.items():
        if "/" in class_name or "\\" in class_name or class_name in (".", ".."):
            raise DataError(f"'{classes_file}': class {class_id} is named '{class_name}'; "
                            f"expected a folder name (no '/', not '.' or '..')")
    unlabelled = sorted(set(images) - set(labels), key=int)
    unknown = sorted(set(labels) - set(images), key=int)
    if unlabelled or unknown:
        first = (f"image id {unlabelled[0]} of '{images_file}' has no class in '{labels_file}'"
                 if unlabelled else f"image id {unknown[0]} of '{labels_file}' is not in "
                                    f"'{images_file}'")
        raise DataError(f"{first}; {len(unlabelled) + len(unknown)} image id(s) disagree; "
                        f"expected both files to list the same images")
    roots = safe_roots(root)
    images_dir = os.path.join(home, "images")
    listed = [(rel, listed_path(images_dir, rel, images_file, roots)) for rel in images.values()]
    for image_id, relative in images.items():
        class_id = labels[image_id]
        if class_id not in classes:
            raise DataError(f"'{labels_file}': image id {image_id} has class {class_id}, which "
                            f"'{classes_file}' does not list")
        if relative.split("/")[0] != classes[class_id]:
            raise DataError(f"'{images_file}': image id {image_id} '{relative}' lies outside the "
                            f"folder of its class {class_id} '{classes[class_id]}' in "
                            f"'{labels_file}'; expected the annotation files to agree")
    empty = sorted(set(classes) - set(labels.values()), key=int)
    if empty:
        raise DataError(f"class {empty[0]} '{classes[empty[0]]}' of '{classes_file}' has no "
                        f"image; {len(empty)} class(es) are empty; expected images of every class")
    missing_files(listed, images_file)
    for relative, path in listed:
        plan.add(f"images/{relative}", path, list_file=images_file)
    plan.described = f"CUB-200-2011 '{home}'"
    return plan


def _mat(path: str) -> dict:
    from scipy.io import loadmat  # only the Cars annotations are .mat files

    try:
        return loadmat(path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for damaged files
        raise DataError(f"cannot read the annotation file '{path}': {error}") from None


def _annotations(path: str, fields: Iterable[str]) -> np.ndarray:
    content = _mat(path)
    if "annotations" not in content:
        raise DataError(f"'{path}' holds no 'annotations' struct; expected the Stanford Cars "
                        f"annotation file")
    records = np.atleast_1d(content["annotations"])
    absent = [name for name in fields if name not in (records.dtype.names or ())]
    if absent:
        raise DataError(f"'{path}': the annotations have no field '{absent[0]}' (fields: "
                        f"{', '.join(records.dtype.names or ())}); expected "
                        f"{', '.join(fields)}")
    return records


def _class_names(path: str) -> List[str]:
    content = _mat(path)
    if "class_names" not in content:
        raise DataError(f"'{path}' holds no 'class_names'; expected the 196 Stanford Cars class "
                        f"names")
    return [str(name) for name in np.atleast_1d(content["class_names"])]


def _cars_folder(class_id: int, names: List[str]) -> str:
    return f"{class_id:03d}." + names[class_id - 1].replace("/", "-")


def _add_cars(plan: Plan, entries: List[Tuple[str, str, int]], names: List[str],
              annotation_file: str) -> None:
    """entries: (listed name, source path, class id) -> images/NNN.<name>/<file>."""
    bad = [(name, c) for name, _, c in entries if not 1 <= c <= len(names)]
    if bad:
        raise DataError(f"'{annotation_file}': '{bad[0][0]}' has class {bad[0][1]}, outside "
                        f"1..{len(names)} of the class names; expected the annotation files to "
                        f"agree")
    missing_files([(name, path) for name, path, _ in entries], annotation_file)
    empty = sorted(set(range(1, len(names) + 1)) - {c for _, _, c in entries})
    if empty:
        raise DataError(f"class {empty[0]} '{names[empty[0] - 1]}' has no image in "
                        f"'{annotation_file}'; {len(empty)} class(es) are empty; expected images "
                        f"of every class")
    for name, path, class_id in entries:
        plan.add(f"images/{_cars_folder(class_id, names)}/{name}", path,
                 list_file=annotation_file)


def plan_cars196(root: str) -> Plan:
    plan = Plan()
    annos = find_file(root, "cars_annos.mat")
    if annos is not None:
        home = os.path.dirname(annos)
        records = _annotations(annos, ("relative_im_path", "class"))
        entries = []
        roots = safe_roots(root)
        ims = None
        for relative, class_id in zip(records["relative_im_path"], records["class"]):
            relative = str(relative)
            path = listed_path(home, relative, annos, roots)
            if not os.path.exists(path):  # car_ims/ unpacked elsewhere under --from
                ims = ims or find_dir(root, lambda f: os.path.basename(f) == "car_ims")
                if ims:
                    path = listed_path(ims, os.path.basename(relative), annos, roots)
            entries.append((os.path.basename(relative), path, int(class_id)))
        _add_cars(plan, entries, _class_names(annos), annos)
        plan.described = f"Stanford Cars '{annos}' with car_ims/"
        return plan
    train_annos = find_file(root, "cars_train_annos.mat")
    if train_annos is not None:
        meta = require(find_file(root, "cars_meta.mat"), "the devkit's cars_meta.mat", root)
        test_annos = find_file(root, "cars_test_annos_withlabels.mat")
        if test_annos is None:
            unlabelled = find_file(root, "cars_test_annos.mat")
            hint = (f" ('{unlabelled}' has no class labels)" if unlabelled else "")
            raise DataError(f"found cars_train_annos.mat but no cars_test_annos_withlabels.mat "
                            f"under '{root}'{hint}; expected the test annotations with labels, "
                            f"published beside the devkit")
        names = _class_names(meta)
        entries = []
        for split, annos_file in (("train", train_annos), ("test", test_annos)):
            images_dir = require(find_dir(root, lambda f: os.path.basename(f) == f"cars_{split}"
                                          and os.path.isdir(f)),
                                 f"the folder cars_{split}/ of cars_{split}.tgz", root)
            records = _annotations(annos_file, ("fname", "class"))
            roots = safe_roots(root)
            entries += [(f"{split}_{fname}",
                         listed_path(images_dir, str(fname), annos_file, roots), int(c))
                        for fname, c in zip(records["fname"], records["class"])]
        _add_cars(plan, entries, names, f"{train_annos}' and '{test_annos}")
        plan.described = f"Stanford Cars devkit '{os.path.dirname(train_annos)}'"
        return plan
    prepared = find_dir(root, lambda f: os.path.basename(f) == "images" and has_class_folders(f))
    if prepared is not None:
        return class_folder_plan(prepared, plan)
    raise DataError(f"found no Stanford Cars files under '{root}'; expected car_ims.tgz or "
                    f"car_ims/ with cars_annos.mat, cars_train/ and cars_test/ with the devkit's "
                    f".mat files, or the prepared cars196.tar (cars196/images/<class>/)")


def plan_online_products(root: str) -> Plan:
    plan = Plan()
    prepared = find_dir(root, lambda f: has(f, "Info_Files/Ebay_train.txt",
                                            "Info_Files/Ebay_test.txt", "images"))
    if prepared is not None:  # the DAS repository's online_products.tar
        home, images_dir = os.path.join(prepared, "Info_Files"), os.path.join(prepared, "images")
    else:  # Stanford_Online_Products.zip: the lists beside the <category>_final/ folders
        home = images_dir = find_dir(root, lambda f: has(f, "Ebay_train.txt", "Ebay_test.txt"))
        if home is None:
            raise DataError(f"found no Stanford Online Products files under '{root}'; expected "
                            f"Stanford_Online_Products.zip, its folder (Ebay_train.txt, "
                            f"Ebay_test.txt, <category>_final/) or the prepared "
                            f"online_products.tar (images/, Info_Files/)")
    for split in ("train", "test"):
        list_file = os.path.join(home, f"Ebay_{split}.txt")
        rows = read_list_file(list_file)
        if not rows or rows[0][1] != SOP_HEADER:
            raise DataError(f"'{list_file}' does not start with the line '{' '.join(SOP_HEADER)}'"
                            f"; expected the publisher's list (a damaged or edited file?)")
        listed = []
        roots = safe_roots(root)
        for number, fields in rows[1:]:
            if len(fields) != 4:
                raise DataError(f"'{list_file}' line {number}: expected 4 fields (image_id "
                                f"class_id super_class_id path), found {len(fields)}")
            listed.append((fields[3], listed_path(images_dir, fields[3], list_file, roots,
                                                  number)))
        if not listed:
            raise DataError(f"'{list_file}' lists no images; expected the publisher's list")
        missing_files(listed, list_file)
        for relative, path in listed:
            plan.add(f"images/{relative}", path, list_file=list_file)
        plan.add(f"Info_Files/Ebay_{split}.txt", list_file, image=False)
    plan.described = f"Stanford Online Products '{home}'"
    return plan


def plan_in_shop(root: str) -> Plan:
    plan = Plan()
    partition = find_file(root, "list_eval_partition.txt")
    if partition is None:
        raise DataError(f"found no list_eval_partition.txt under '{root}'; expected In-Shop's "
                        f"Eval/list_eval_partition.txt next to img.zip or img/")
    images_parent = find_dir(root, lambda f: os.path.isdir(os.path.join(f, "img")))
    if images_parent is None:
        raise DataError(f"found no img/ folder (nor img.zip) under '{root}'; expected In-Shop's "
                        f"images next to Eval/list_eval_partition.txt")
    listed = []
    rows = read_list_file(partition)
    if len(rows) < 2 or rows[1][1] != INSHOP_HEADER:
        raise DataError(f"'{partition}' line 2 is not '{' '.join(INSHOP_HEADER)}'; expected the "
                        f"publisher's partition file (count line, column names, rows)")
    roots = safe_roots(root)
    for number, fields in rows[2:]:
        if len(fields) != 3:
            raise DataError(f"'{partition}' line {number}: expected 3 fields (image_name item_id "
                            f"evaluation_status), found {len(fields)}")
        if not fields[0].startswith("img/"):
            raise DataError(f"'{partition}' line {number} names '{fields[0]}'; expected a path "
                            f"inside img/")
        listed.append((fields[0], listed_path(images_parent, fields[0], partition, roots,
                                              number)))
    count = rows[0][1] if rows else []
    if len(count) != 1 or not count[0].isdigit() or int(count[0]) != len(listed):
        raise DataError(f"'{partition}' lists {len(listed)} image(s), but its first line says "
                        f"'{' '.join(count)}'; expected the count line to match the rows (a "
                        f"truncated or edited file?)")
    missing_files(listed, partition)
    for relative, path in listed:
        plan.add(relative, path, list_file=partition)
    plan.add("Eval/list_eval_partition.txt", partition, image=False)
    plan.described = f"In-Shop '{partition}' with '{os.path.join(images_parent, 'img')}'"
    return plan


PLANNERS = {"cub200": plan_cub200, "cars196": plan_cars196,
            "online_products": plan_online_products, "in-shop": plan_in_shop}


# --------------------------------------------------------------------------- checking and writing


def decode_problem(path: str) -> Optional[str]:
    """Why ``path`` does not decode as an image, or None. JPEGs decode at reduced scale (draft
    mode), which reads every byte of the file at a fraction of the cost."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except Exception as error:  # PIL raises many types for corrupt or truncated files
        return " ".join(str(error).split()) or type(error).__name__
    return None


def check_decodes(plan: Plan) -> None:
    sources = [plan.files[destination] for destination in plan.images]
    workers = max(1, min(8, os.cpu_count() or 1))
    print(f"decoding {len(sources)} images ...", flush=True)
    pool = ThreadPoolExecutor(workers)  # PIL releases the GIL while decoding
    try:
        problems = [(path, problem) for path, problem in zip(sources, pool.map(decode_problem,
                                                                                 sources))
                    if problem]
    finally:  # Ctrl-C: drop the queued images instead of decoding all of them first
        pool.shutdown(wait=True, cancel_futures=True)
    if problems:
        path, problem = problems[0]
        raise DataError(f"image '{path}' does not decode ({problem}); {len(problems)} of the "
                        f"{len(sources)} images do not; expected a complete, undamaged download")


def place(source: str, destination: str, move: bool) -> str:
    """Move (files we unpacked), else hard-link, else symlink, else copy; returns what was done."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    if move:
        os.replace(source, destination)
        return "moved"
    try:
        os.link(source, destination, follow_symlinks=True)
        return "hard-linked"
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    try:
        os.symlink(os.path.abspath(source), destination)
        return "symlinked"
    except OSError:
        shutil.copy2(source, destination)
        return "copied"


def report_counts(name: str, splits) -> List[str]:
    """Counts next to the published ones; a warning line when the data set is smaller."""
    from .._base import QueryGallery, Split  # as `load` above
    parts: List[Split] = [splits.train]
    for evaluation in splits.evaluation.values():
        parts += list(evaluation) if isinstance(evaluation, QueryGallery) else [evaluation]
    images = sum(len(part) for part in parts)
    # Splits are class-disjoint (checked by load); In-Shop's query and gallery share their items.
    classes = splits.train.num_classes + sum(
        (evaluation.query if isinstance(evaluation, QueryGallery) else evaluation).num_classes
        for evaluation in splits.evaluation.values())
    published = PUBLISHED[name]
    lines = [f"{name}: {images:,} images (published {published.images:,}), {classes:,} "
             f"{published.class_word} (published {published.classes:,}); train "
             f"{len(splits.train):,} images / {splits.train.num_classes:,} {published.class_word}"]
    if images < published.images or classes < published.classes:
        lines.append(f"warning: {name} is smaller than published; its files agree with its own "
                     f"lists and it will be used, but figures are not comparable with the "
                     f"paper's (if you did not make this subset yourself, the download is "
                     f"incomplete)")
    return lines


class Download:
    """Where the files of --from came from, so that a message names the archive (or the loose
    file) instead of the temporary folder it was unpacked into and that is deleted by then."""

    def __init__(self, source: str, unpacked: str) -> None:
        self.source, self.unpacked = source, unpacked
        self.owner: Dict[str, str] = {}  # member path inside `unpacked` -> archive or loose file

    def add(self, origin: str, members: Iterable[str]) -> None:
        for member in members:
            member = os.path.normpath(member).lstrip("/")
            member = "" if member == "." else member
            while member and member not in self.owner:  # the member and its folders
                self.owner[member] = origin
                member = os.path.dirname(member)

    def name(self, path: str) -> str:
        """A path inside ``unpacked`` as '<member>' in '<archive>'."""
        if path == self.unpacked:
            return f"'{self.source}'"
        relative = os.path.relpath(path, self.unpacked)
        probe = relative
        while probe not in self.owner and os.path.dirname(probe):
            probe = os.path.dirname(probe)
        origin = self.owner.get(probe)
        if origin is None:
            return f"'{relative}' (unpacked from '{self.source}')"
        if os.path.isdir(origin) or not is_archive_file(origin):  # a loose file of --from
            return f"'{os.path.join(os.path.dirname(origin), relative)}'"
        return f"'{relative}' in '{origin}'"

    def rewrite(self, error: DataError) -> DataError:
        prefix = self.unpacked

        def replace(match: "re.Match[str]") -> str:
            path = match.group(1)
            if path == prefix or path.startswith(prefix + os.sep):
                return self.name(path)
            return match.group(0)

        return DataError(re.sub(r"'([^']*)'", replace, error.short_message()))


def is_archive_file(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def check_data_root(data_root: str, name: str) -> str:
    """``data_root/name``, refusing a --to that is a file or already holds ``name``."""
    if os.path.exists(data_root) and not os.path.isdir(data_root):
        raise DataError(f"--to '{data_root}' is a file; expected the folder (DATA_ROOT) to write "
                        f"{name}/ into (it is created when missing)")
    target = os.path.join(data_root, name)
    if os.path.lexists(target):
        raise DataError(f"'{target}' already exists; remove it (or choose another --to) to "
                        f"prepare {name} again")
    return target


def prepare(name: str, source: str, data_root: str) -> str:
    """Write ``data_root/name`` from the download at ``source``; returns that folder."""
    from .. import load  # datasets/__init__ imports this package while it is being defined

    if name not in PLANNERS:
        raise DataError(f"unknown dataset '{name}' for datasets.prepare; valid names: "
                        f"{', '.join(PLANNERS)}")
    source = os.path.abspath(os.path.expanduser(source))
    data_root = os.path.abspath(os.path.expanduser(data_root))
    if not os.path.exists(source):
        raise DataError(f"--from '{source}' does not exist; expected the downloaded archive or "
                        f"the folder holding the download")
    target = check_data_root(data_root, name)
    archives = [source] if os.path.isfile(source) else []
    if archives and not is_archive_file(source) and not (tarfile.is_tarfile(source) or
                                                         zipfile.is_zipfile(source)):
        raise DataError(f"--from '{source}' is a file but not an archive; expected one of "
                        f"{', '.join(ARCHIVE_SUFFIXES)} or a folder")
    try:
        os.makedirs(data_root, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create --to '{data_root}': {error.strerror or error}") from None
    staging = os.path.join(data_root, f".{name}.preparing")
    unpacked = os.path.join(data_root, f".{name}.unpacked")
    download = Download(source, unpacked)
    for leftover in (staging, unpacked):  # from an interrupted earlier run
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        if not archives:
            try:
                plan = PLANNERS[name](source)
            except DataError:
                archives = archives_under(source)
                if not archives:
                    raise
        if archives:
            for archive in archives:
                download.add(archive, unpack(archive, unpacked))
            if not archives[0] == source:  # a folder of downloads: archives plus loose files
                for entry in visible_entries(source):
                    beside = os.path.join(unpacked, entry.name)
                    if not is_archive(entry.path) and not os.path.lexists(beside):
                        os.symlink(entry.path, beside)
                        download.add(entry.path, [entry.name])
            plan = PLANNERS[name](unpacked)
        print(f"found {plan.described}: {len(plan.images):,} images", flush=True)
        check_decodes(plan)
        done: Dict[str, int] = {}
        for destination, file in plan.files.items():
            ours = os.path.realpath(file).startswith(os.path.realpath(unpacked) + os.sep)
            how = place(file, os.path.join(staging, name, destination), move=ours)
            done[how] = done.get(how, 0) + 1
        splits = load(name, staging)
        os.rename(os.path.join(staging, name), target)
    except DataError as error:
        raise download.rewrite(error) from None
    except OSError as error:  # a full disk or a read-only --to while unpacking or placing files
        if error.filename is None:
            raise
        name_ = os.path.abspath(str(error.filename))
        reason = error.strerror or type(error).__name__
        if name_.startswith(data_root + os.sep):
            raise DataError(f"cannot write under --to '{data_root}': {reason}; nothing was "
                            f"kept there") from None
        raise DataError(f"cannot read '{name_}' of --from '{source}': {reason}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    print(f"wrote {target} ({', '.join(f'{n:,} {how}' for how, n in done.items())})")
    for line in report_counts(name, splits):
        print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
    print(f"train with: python main.py --dataset {name} --source {data_root}")
    return target


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: bad input is one ``error: ...`` line and exit status 2, Ctrl-C 130;
    nothing half-written is left under --to either way."""
    parser = OptionParser(
        prog="python -m datasets.prepare",
        description="Write a benchmark, from what its publisher ships, in the layout "
                    "`main.py --dataset NAME --source DATA_ROOT` reads.")
    parser.add_argument("name", choices=sorted(PLANNERS), help="the dataset")
    parser.add_argument("--from", dest="source", required=True,
                        help="downloaded archive, folder holding the download(s), or the unpacked "
                             "folder")
    parser.add_argument("--to", dest="data_root", required=True,
                        help="DATA_ROOT: NAME/ is written inside it")
    args = parser.parse_args(argv)
    return run_command(lambda: prepare(args.name, args.source, args.data_root) and 0)
