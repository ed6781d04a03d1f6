"""Helpers shared by the parsers of published layouts.

Every check here runs at parse time, before training, and fails with one :class:`DataError`
naming the path and what was expected: a missing folder or list file, a class folder without
images, a listed image that is missing, empty or unreadable, a malformed list line, too few
classes. Images are only decoded later, by :func:`datasets._decode.load_image`.
"""
from __future__ import annotations

import os
import stat
import sys
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from ._data import DataError, DatasetSplits, Split

# torchvision's image extensions plus GIF (read as its first frame).
IMAGE_EXTENSIONS = tuple(sorted({ext.lower() for ext in IMG_EXTENSIONS} | {".gif"}))
SKIPPED_LISTED = 10  # skipped files named in the note (all are counted)
MIN_CLASSES_PER_SPLIT = 2  # retrieval needs at least one other class to be meaningful

# (relative class name, image paths of that class), in the published class order.
ClassImages = Tuple[str, List[str]]


def dataset_root(source: Optional[str], name: str, layout: str) -> str:
    """``<source>/<name>``, checked to be a folder; ``layout`` describes what it should hold."""
    if source is None:
        raise DataError(f"--dataset {name} needs --source: the folder that holds {name}/ "
                        f"({layout})")
    source = os.path.abspath(os.path.expanduser(source))
    require_dir(source, f"the --source folder holding {name}/ ({layout})")
    root = os.path.join(source, name)
    if not os.path.isdir(root):
        hint = ""
        if os.path.basename(source) == name:
            hint = (f"; --source names the dataset folder itself, pass its parent "
                    f"'{os.path.dirname(source)}'")
        raise DataError(f"expected the {name} folder ({layout}) at '{root}', but it does not "
                        f"exist{hint}")
    return root


def require_dir(path: str, what: str) -> str:
    """Stop with a message naming ``path`` unless it is an existing folder."""
    if not os.path.exists(path):
        raise DataError(f"expected {what} at '{path}', but it does not exist")
    if not os.path.isdir(path):
        raise DataError(f"expected {what} at '{path}', but it is a file, not a folder")
    return path


def require_file(path: str, what: str) -> str:
    """Stop with a message naming ``path`` unless it is an existing regular file."""
    if not os.path.exists(path):
        raise DataError(f"expected {what} at '{path}', but it does not exist")
    if not os.path.isfile(path):
        raise DataError(f"expected {what} at '{path}', but it is not a file")
    return path


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def visible_entries(folder: str, skipped: Optional[List[str]] = None) -> List[os.DirEntry]:
    """Entries of ``folder`` sorted by name, without hidden ones ('.DS_Store', macOS '._x.jpg'
    resource forks, which carry image extensions but are not images) and '__MACOSX'; hidden
    files are appended to ``skipped`` when given."""
    try:
        with os.scandir(folder) as entries:
            everything = list(entries)
    except OSError as error:
        raise DataError(f"cannot list folder '{folder}': {error.strerror}") from None
    if skipped is not None:
        skipped += sorted(e.path for e in everything if is_hidden(e.name) and not e.is_dir())
    return sorted((e for e in everything if not is_hidden(e.name)), key=lambda entry: entry.name)


def report_skipped(skipped: Sequence[str], root: str) -> None:
    """One note on stderr counting the files of a class tree that were not read as images (not
    an image extension, or hidden) and naming the first SKIPPED_LISTED of them."""
    if not skipped:
        return
    shown = ", ".join(f"'{os.path.relpath(path, root)}'" for path in skipped[:SKIPPED_LISTED])
    more = f" and {len(skipped) - SKIPPED_LISTED} more" if len(skipped) > SKIPPED_LISTED else ""
    print(f"note: skipped {len(skipped)} file(s) under '{root}' that are not images (extensions "
          f"read: {' '.join(IMAGE_EXTENSIONS)}) or are hidden: {shown}{more}", file=sys.stderr,
          flush=True)


def image_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be an image file (missing, not a file, empty, unreadable), or None.

    Only metadata is checked, which stays fast on 120k-image lists; decoding happens at load time.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not stat.S_ISREG(status.st_mode):
        return "is not a file"
    if status.st_size == 0:
        return "is empty (0 bytes)"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def class_images(folder: str, skipped: Optional[List[str]] = None) -> List[str]:
    """Image files directly inside a class folder, sorted by name; each must be readable.
    Other files (and hidden ones) are appended to ``skipped`` when given."""
    entries = visible_entries(folder, skipped)
    paths = [e.path for e in entries if is_image_name(e.name) and not e.is_dir()]
    if skipped is not None:
        skipped += [e.path for e in entries if not e.is_dir() and not is_image_name(e.name)]
    if not paths:
        raise DataError(f"class folder '{folder}' holds no images; expected image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}) directly inside it")
    for path in paths:
        problem = image_problem(path)
        if problem:
            raise DataError(f"image '{path}' {problem}; expected a readable image file")
    return paths


def flat_class_folders(images_dir: str) -> List[ClassImages]:
    """Classes = the subfolders of ``images_dir`` (CUB, CARS layout), sorted by folder name."""
    skipped: List[str] = []
    classes = [(e.name, class_images(e.path, skipped))
               for e in visible_entries(images_dir, skipped) if e.is_dir()]
    report_skipped(skipped, images_dir)
    if not classes:
        raise DataError(f"folder '{images_dir}' holds no class folders; expected one subfolder "
                        f"of images per class")
    return classes


def leaf_class_folders(tree: str) -> List[ClassImages]:
    """Classes = the leaf folders of ``tree`` (nested too, e.g. alphabet/character), named by their
    path relative to ``tree`` with '/' and sorted component by component."""
    classes: List[ClassImages] = []
    skipped: List[str] = []

    def visit(folder: str, parts: Tuple[str, ...], ancestors: Tuple[str, ...]) -> None:
        entries = visible_entries(folder)
        subfolders = [e for e in entries if e.is_dir()]
        if not subfolders:
            classes.append(("/".join(parts) or ".", class_images(folder, skipped)))
            return
        visible_entries(folder, skipped)  # again, recording its hidden files this time
        skipped.extend(e.path for e in entries if not e.is_dir() and not is_image_name(e.name))
        stray = [e.name for e in entries if not e.is_dir() and is_image_name(e.name)]
        if stray:
            raise DataError(f"folder '{folder}' holds both images (e.g. '{stray[0]}') and "
                            f"subfolders; expected images only in leaf folders, one per class")
        for entry in subfolders:
            real = os.path.realpath(entry.path)
            if real in ancestors:
                raise DataError(f"folder '{entry.path}' links back to its parent '{real}'; "
                                f"expected a tree without symlink loops")
            visit(entry.path, parts + (entry.name,), ancestors + (real,))

    visit(tree, (), (os.path.realpath(tree),))
    report_skipped(skipped, tree)
    return classes


def require_classes(count: int, minimum: int, where: str, what: str) -> None:
    if count < minimum:
        raise DataError(f"found {count} {what} in '{where}'; expected at least {minimum}")


def halve_classes(classes: Sequence[ClassImages], where: str) -> Tuple[List[ClassImages],
                                                                      List[ClassImages]]:
    """First half of the sorted classes train (the larger half for an odd count), rest test."""
    require_classes(len(classes), 2 * MIN_CLASSES_PER_SPLIT, where,
                    "class folder(s) (half train, half test)")
    n_train = (len(classes) + 1) // 2
    return list(classes[:n_train]), list(classes[n_train:])


def split_from_classes(classes: Sequence[ClassImages]) -> Split:
    """A Split with labels 0..len(classes)-1 in the given class order."""
    images: List[str] = []
    labels: List[int] = []
    for label, (_, paths) in enumerate(classes):
        images += paths
        labels += [label] * len(paths)
    return Split(images, np.asarray(labels, dtype=np.int64), [name for name, _ in classes])


def class_folder_dataset(name: str, source: Optional[str], layout: str) -> DatasetSplits:
    """``<source>/<name>/images/<class>/*``: classes sorted by folder name, first half train,
    second half test (the CUB200 and CARS196 protocol)."""
    root = dataset_root(source, name, layout)
    images_dir = require_dir(os.path.join(root, "images"), f"the images folder ({layout})")
    train, test = halve_classes(flat_class_folders(images_dir), images_dir)
    return DatasetSplits(name, split_from_classes(train), {"test": split_from_classes(test)})


def read_list_file(path: str) -> List[Tuple[int, List[str]]]:
    """Non-blank lines of a whitespace-separated list file as (1-based line number, fields)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # tolerate a BOM
            lines = handle.read().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"list file '{path}' is not UTF-8 text; expected the published text "
                        f"file") from None
    except OSError as error:
        raise DataError(f"cannot read list file '{path}': {error.strerror}") from None
    return [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]


def check_listed_images(paths: Sequence[str], line_numbers: Sequence[int], list_file: str,
                        images_dir: str) -> None:
    """Every image a list file names must be a readable file; one message for all problems."""
    problems = [(path, number, problem) for path, number in zip(paths, line_numbers)
                for problem in [image_problem(path)] if problem]
    if problems:
        path, number, problem = problems[0]
        more = (f"; {len(problems) - 1} more of the {len(paths)} listed images are missing or "
                f"unreadable" if len(problems) > 1 else "")
        raise DataError(f"image '{path}' listed in '{list_file}' line {number} {problem}; "
                        f"expected the listed images under '{images_dir}'{more}")


def parse_int(text: str, list_file: str, number: int, column: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"'{list_file}' line {number}: {column} '{text}' is not an "
                        f"integer") from None


def dense_labels(keys: Iterable) -> Tuple[np.ndarray, List]:
    """Map published ids to 0..n-1 in sorted id order; returns (labels, sorted unique ids)."""
    unique, labels = np.unique(np.asarray(list(keys)), return_inverse=True)
    return labels.astype(np.int64).reshape(-1), unique.tolist()


def check_unique_rows(paths: Sequence[str], line_numbers: Sequence[int], list_file: str,
                      what: str = "image") -> None:
    """Refuse a list file that names one image on several lines (a duplicated test line makes
    the image its own nearest neighbour and inflates Recall@K)."""
    first: dict = {}
    repeats = []
    for path, number in zip(paths, line_numbers):
        key = os.path.normpath(path)
        if key in first:
            repeats.append((path, first[key], number))
        else:
            first[key] = number
    if repeats:
        path, earlier, number = repeats[0]
        raise DataError(f"'{list_file}' line {number} lists {what} '{path}' again (first on line "
                        f"{earlier}); {len(repeats)} line(s) repeat an earlier one; expected each "
                        f"image once (repeated images inflate retrieval scores)")


def check_disjoint_lists(paths_a: Sequence[str], lines_a: Sequence[int], where_a: str,
                         paths_b: Sequence[str], lines_b: Sequence[int], where_b: str,
                         expected: str) -> None:
    """Refuse images listed in both ``a`` and ``b`` (e.g. Ebay_train.txt and Ebay_test.txt, or
    In-Shop query and gallery rows), naming the first one and how many there are."""
    first = {os.path.normpath(path): number for path, number in zip(paths_a, lines_a)}
    shared = [(path, first[os.path.normpath(path)], number)
              for path, number in zip(paths_b, lines_b) if os.path.normpath(path) in first]
    if shared:
        path, line_a, line_b = shared[0]
        raise DataError(f"image '{path}' is listed in {where_b} (line {line_b}) and in {where_a} "
                        f"(line {line_a}); {len(shared)} of the {len(paths_b)} images of "
                        f"{where_b} are also in {where_a}; expected {expected}")
