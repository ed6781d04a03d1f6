"""Reading a publisher's download: what a dataset's ``read_download`` builds on.

A member's ``read_download(root)`` (see :mod:`datasets._description`) looks under ``root`` (the
unpacked download, or the folder the user named) for the publisher's files and returns a
:class:`Plan`: which file goes where under ``<DATA_ROOT>/<name>/``. ``tools.prepare`` unpacks
archives, calls it, checks that every image decodes and writes the plan. Paths named in a
publisher's list files are data: :func:`listed_path` refuses any that could lead outside the
download. Nothing here opens an archive or decodes an image.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ._data import DataError
from ._layout import is_image_name, visible_entries

SEARCH_DEPTH = 3  # how deep below --from the publisher's files are looked for


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
