"""Turn a benchmark as its publisher ships it into the layout ``--dataset NAME`` reads.

    python -m tools.prepare NAME --from PATH --to DATA_ROOT

then ``python main.py --dataset NAME --source DATA_ROOT``. ``--from`` is the downloaded archive
(``.tgz``, ``.tar.gz``, ``.tar``, ``.zip``), the folder holding the download(s), or the unpacked
folder. What is recognised is each dataset's own: the ``read_download`` of its file in datasets/
finds the publisher's files and says where each goes (``--help`` lists them); this command
unpacks, checks, writes and reports, the same for every dataset.

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

import argparse
import errno
import lzma
import os
import re
import shutil
import sys
import tarfile
import textwrap
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional

from PIL import Image

import datasets
from datasets import DataError, QueryGallery, Split
from datasets._download import SEARCH_DEPTH, Plan, unsafe_member
from datasets._layout import visible_entries
from utilities.errors import run_command
from utilities.options import OptionParser

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")


# --------------------------------------------------------------------------- finding the files


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and is_archive_file(path)


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces collapsed (library errors span lines)."""
    return " ".join(str(text).split())


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


def archives_under(root: str, depth: int = SEARCH_DEPTH) -> List[str]:
    found, level = [], [root]
    for _ in range(depth + 1):
        found += [e.path for folder in level for e in visible_entries(folder) if is_archive(e.path)]
        level = [e.path for folder in level for e in visible_entries(folder) if e.is_dir()]
    return found


# --------------------------------------------------------------------------- checking and writing


def decode_problem(path: str) -> Optional[str]:
    """Why ``path`` does not decode as an image, or None. JPEGs decode at reduced scale (draft
    mode), which reads every byte of the file at a fraction of the cost."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except Exception as error:  # PIL raises many types for corrupt or truncated files
        return one_line(error) or type(error).__name__
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


def preparable() -> Dict[str, datasets.Dataset]:
    """The datasets that say how to read their publisher's download, by name."""
    return {d.name: d for d in datasets.described() if d.read_download is not None}


def report_counts(name: str, splits: datasets.DatasetSplits) -> List[str]:
    """Counts next to the published ones; a warning line when the data set is smaller."""
    parts: List[Split] = [splits.train]
    for evaluation in splits.evaluation.values():
        parts += list(evaluation) if isinstance(evaluation, QueryGallery) else [evaluation]
    images = sum(len(part) for part in parts)
    # Splits are class-disjoint (checked by load); In-Shop's query and gallery share their items.
    classes = splits.train.num_classes + sum(
        (evaluation.query if isinstance(evaluation, QueryGallery) else evaluation).num_classes
        for evaluation in splits.evaluation.values())
    published = datasets.REGISTRY.get(name).published
    if published is None:
        return [f"{name}: {images:,} images, {classes:,} classes; train {len(splits.train):,} "
                f"images / {splits.train.num_classes:,} classes"]
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
    readers = preparable()
    if name not in readers:
        raise DataError(f"unknown dataset '{name}' for tools.prepare; valid names: "
                        f"{', '.join(readers)}")
    read_download = readers[name].read_download
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
                plan = read_download(source)
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
            plan = read_download(unpacked)
        print(f"found {plan.described}: {len(plan.images):,} images", flush=True)
        check_decodes(plan)
        done: Dict[str, int] = {}
        for destination, file in plan.files.items():
            ours = os.path.realpath(file).startswith(os.path.realpath(unpacked) + os.sep)
            how = place(file, os.path.join(staging, name, destination), move=ours)
            done[how] = done.get(how, 0) + 1
        splits = datasets.load(name, staging)
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


def download_help(readers: Dict[str, datasets.Dataset]) -> str:
    """What --from may be for each dataset: the docstrings of their ``read_download``."""
    lines = ["what --from may be, per dataset (its read_download in datasets/<name>.py):"]
    for name, dataset in readers.items():
        text = " ".join((dataset.read_download.__doc__ or "").replace("``", "").split())
        lines.append(textwrap.fill(f"{name}: {text}", 79, initial_indent="  ",
                                   subsequent_indent="    "))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: bad input is one ``error: ...`` line and exit status 2, Ctrl-C 130;
    nothing half-written is left under --to either way."""
    readers = preparable()
    parser = OptionParser(
        prog="python -m tools.prepare",
        description="Write a benchmark, from what its publisher ships, in the layout "
                    "`main.py --dataset NAME --source DATA_ROOT` reads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=download_help(readers))
    parser.add_argument("name", choices=list(readers), help="the dataset")
    parser.add_argument("--from", dest="source", required=True,
                        help="downloaded archive, folder holding the download(s), or the unpacked "
                             "folder")
    parser.add_argument("--to", dest="data_root", required=True,
                        help="DATA_ROOT: NAME/ is written inside it")
    args = parser.parse_args(argv)
    return run_command(lambda: prepare(args.name, args.source, args.data_root) and 0)


if __name__ == "__main__":
    sys.exit(main())
