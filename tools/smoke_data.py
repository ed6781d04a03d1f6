"""Generated test images, the one source of them: the published dataset layouts for smoke runs
(``SMOKE=1 bash table1.sh``) and plain class-folder trees for ``--dataset folder`` (the tests').

    python -m tools.smoke_data OUT [--datasets cars196 cub200 in-shop online_products]
    python -m tools.smoke_data OUT --layout folder [--pattern glyph|patch|stripes]

The first writes ``OUT/<dataset>/`` exactly as the parsers in ``datasets/`` expect the real data,
so a smoke run goes through the same parsing, loading and evaluation code as a real one. Where each
file goes is the dataset's own ``smoke`` layout, declared in its file in datasets/ (e.g.
``cub200/images/<NNN.Class_Name>/*.jpg``, or SOP's images plus ``Info_Files/Ebay_*.txt``); this
module draws the images. Every class there is a colour and a stripe direction plus noise
(``stripes``), so that even one epoch learns something. The second writes ``OUT/<class>/<i>.png``
for ``--dataset folder --source OUT``; with its defaults, ``glyph`` and ``patch`` write the tests'
``generated_folder`` and ``tiny_folder`` byte for byte. Nothing is downloaded; a few hundred
kilobytes are written. Nothing is overwritten: every file is first compared with what OUT holds,
and a file of another content (a user's image, or one of another --seed) stops the command before
it writes anything. Sizes are bounded (``MAX_SIZE``, ``MAX_CLASSES``, ``MAX_IMAGES_PER_CLASS``,
``MAX_PIXELS``).

One routine, ``write_classes``, writes every layout: per class, in class order, a pattern draws
the class's constants from the generator, then its images, so one seed fixes every file.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from PIL import Image

import datasets
from utilities.errors import UserError, run_command

DEFAULT_CLASSES = 16  # half train, half test: 8 classes, enough for a batch of 16 at 2 per class
DEFAULT_IMAGES_PER_CLASS = 4
DEFAULT_IMAGE_SIZE = 40
MIN_CLASSES = 4  # two train and two test classes (datasets/_layout.py's MIN_CLASSES_PER_SPLIT)
JPEG_QUALITY = 90
# Upper bounds checked before anything is drawn: one image must fit in memory and the whole set
# on a disk (MAX_PIXELS of noise images is about 1 GB of PNG files).
MAX_SIZE = 2048
MAX_CLASSES = 10000
MAX_IMAGES_PER_CLASS = 10000
MAX_PIXELS = 2 ** 28

# A pattern is called once per class, ``pattern(rng, label, size)``: it draws the class's
# constants from ``rng`` and returns the function that draws one image of that class.
DrawImage = Callable[[np.random.Generator], Image.Image]
T = TypeVar("T")
ClassPattern = Callable[[np.random.Generator, int, int], DrawImage]


def stripes_image(rng: np.random.Generator, label: int, size: int) -> Image.Image:
    """An RGB image whose colour and stripe orientation depend on ``label``; noise varies it."""
    hue = (label * 0.61803398875) % 1.0  # golden-ratio steps keep neighbouring classes apart
    base = np.array([np.cos(2 * np.pi * (hue + shift)) for shift in (0.0, 1 / 3, 2 / 3)])
    colour = 128 + 100 * base
    coords = np.arange(size)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    angle = np.pi * ((label * 0.38196601125) % 1.0)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / 8))
    pixels = colour[None, None, :] * (0.75 + 0.25 * stripes[..., None])
    pixels = pixels + rng.normal(0.0, 12.0, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def stripes_pattern(rng: np.random.Generator, label: int, size: int) -> DrawImage:
    """``stripes_image`` of ``label``: the class constants follow from the label, none drawn."""
    return lambda image_rng: stripes_image(image_rng, label, size)


GLYPH_CELLS = 5  # a 5x5 binary glyph ...
GLYPH_SCALE = 5  # ... drawn as 25x25 pixels
GLYPH_SIDE = GLYPH_CELLS * GLYPH_SCALE
GLYPH_COLOUR = np.array([230, 230, 230])
GLYPH_NOISE_HIGH = 160  # noise in [0, 160): strong, yet below the glyph's grey


def glyph_pattern(rng: np.random.Generator, label: int, size: int) -> DrawImage:
    """A class-specific glyph at a random place on strong noise, so an untrained network retrieves
    poorly and learning to ignore the noise pays. Every class draws its glyph in the same colour:
    only the glyph's shape tells the classes apart."""
    glyph = rng.random((GLYPH_CELLS, GLYPH_CELLS)) > 0.5
    rng.integers(60, 255, size=3)  # unused draw: keeps the glyphs and noise of earlier runs
    mask = np.kron(glyph, np.ones((GLYPH_SCALE, GLYPH_SCALE), dtype=bool))

    def draw(image_rng: np.random.Generator) -> Image.Image:
        image = image_rng.integers(0, GLYPH_NOISE_HIGH, size=(size, size, 3)).astype(np.uint8)
        y, x = image_rng.integers(0, size - GLYPH_SIDE, size=2)
        image[y:y + GLYPH_SIDE, x:x + GLYPH_SIDE][mask] = GLYPH_COLOUR
        return Image.fromarray(image)

    return draw


def patch_pattern(rng: np.random.Generator, label: int, size: int) -> DrawImage:
    """Uniform noise with a class colour square over its middle half (4:12 of 16 pixels)."""
    colour = rng.integers(0, 255, size=3)
    low, high = size // 4, size - size // 4

    def draw(image_rng: np.random.Generator) -> Image.Image:
        image = image_rng.integers(0, 255, size=(size, size, 3)).astype(np.uint8)
        image[low:high, low:high] = colour
        return Image.fromarray(image)

    return draw


@dataclass(frozen=True)
class Pattern:
    """A class pattern with its defaults for ``--layout folder``."""

    draw_class: ClassPattern
    classes: int
    images_per_class: int
    size: int
    min_size: int
    class_name: str  # str.format template of the class index

    def folder(self, index: int) -> str:
        return self.class_name.format(index)


PATTERNS: Dict[str, Pattern] = {
    # 8 x 14 glyphs of 40 x 40 pixels: the tests' generated_folder
    "glyph": Pattern(glyph_pattern, 8, 14, 40, GLYPH_SIDE + 1, "class_{:02d}"),
    # 12 x 4 patches of 16 x 16 pixels: the tests' tiny_folder
    "patch": Pattern(patch_pattern, 12, 4, 16, 4, "c{}"),
    "stripes": Pattern(stripes_pattern, DEFAULT_CLASSES, DEFAULT_IMAGES_PER_CLASS,
                       DEFAULT_IMAGE_SIZE, 1, "class_{:02d}"),
}


class SmokeDataError(UserError, ValueError):
    """Bad input to tools.smoke_data; the message names the flag, value or file."""


class ExistingFileError(SmokeDataError):
    """A file the generator would write exists with other content (a user's file)."""


_CHECK_ONLY = [False]  # True during the dry pass of no_overwrite: compare, write nothing


def _write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path``; an existing file with exactly these bytes (this generator's
    own earlier output) is left as it is, one with other content is refused, naming it."""
    if os.path.isdir(path):
        raise ExistingFileError(f"'{path}' is a folder where a generated file belongs; choose an "
                                f"empty OUT folder")
    if os.path.exists(path):
        with open(path, "rb") as handle:
            if handle.read() == data:
                return
        raise ExistingFileError(f"'{path}' exists and is not the generated file of that name; "
                                f"refusing to write over it (choose an empty OUT folder)")
    if _CHECK_ONLY[0]:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as error:
        if os.path.isfile(path):  # a partial file (full disk) is not left behind
            os.remove(path)
        raise SmokeDataError(f"cannot write '{path}': {error.strerror or error}") from None


def _save(image: Image.Image, path: str) -> None:
    """Save in the format the extension names (JPEG at quality 90, PNG with PIL's
    defaults)."""
    buffer = io.BytesIO()
    if os.path.splitext(path)[1].lower() in (".jpg", ".jpeg"):
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    _write_bytes(buffer.getvalue(), path)


def _write_text(path: str, text: str) -> None:
    _write_bytes(text.encode(), path)


@contextlib.contextmanager
def _dry_pass() -> Iterator[None]:
    _CHECK_ONLY[0] = True
    try:
        yield
    finally:
        _CHECK_ONLY[0] = False


def no_overwrite(write: Callable[[], T]) -> T:
    """Run ``write`` twice: first comparing every file it would write with what exists (a file
    of another content stops it before anything is written), then writing."""
    with _dry_pass():
        write()
    return write()


def write_classes(root: str, pattern: ClassPattern, size: int, rng: np.random.Generator,
                  counts: Sequence[int], path_of: Callable[[int, int], str]
                  ) -> List[Tuple[int, int, str]]:
    """Write ``counts[c]`` images of each class ``c`` to ``root/path_of(c, i)``; returns the
    ``(class, index, relative path)`` of every image in the order written.

    Class by class: the pattern draws the class's constants, then each image draws from the same
    ``rng``; this order is what makes the files depend on the seed alone.
    """
    written = []
    for label, count in enumerate(counts):
        draw = pattern(rng, label, size)
        for index in range(count):
            relative = path_of(label, index)
            _save(draw(rng), os.path.join(root, relative))
            written.append((label, index, relative))
    return written


PathT = TypeVar("PathT", str, Path)  # the folder is returned as given: a str or a Path


def write_class_folder(root: PathT, pattern: str, classes: Optional[int] = None,
                       images_per_class: Optional[int] = None, size: Optional[int] = None,
                       seed: int = 0) -> PathT:
    """``root/<class>/<i>.png``, a ``--dataset folder`` tree of the named pattern; None takes the
    pattern's default. Returns ``root``."""
    spec = PATTERNS[pattern]
    classes = spec.classes if classes is None else classes
    images_per_class = spec.images_per_class if images_per_class is None else images_per_class
    write_classes(str(root), spec.draw_class, spec.size if size is None else size,
                  np.random.default_rng(seed), [images_per_class] * classes,
                  lambda label, index: os.path.join(spec.folder(label), f"{index}.png"))
    return root


def write_glyph_folder(root: PathT) -> PathT:
    """The tests' ``generated_folder``: 8 classes x 14 glyph-on-noise images (``glyph_pattern``)."""
    return write_class_folder(root, "glyph")


def write_patch_folder(root: PathT, classes: int = 12, per_class: int = 4) -> PathT:
    """``classes`` x ``per_class`` images of 16x16 noise with a class colour patch."""
    return write_class_folder(root, "patch", classes, per_class)


class LayoutWriter:
    """The ``datasets.SmokeWriter`` a dataset's ``smoke`` layout writes through: files under
    ``root`` (``OUT/<name>``), every image drawn by ``stripes_pattern`` from the one ``rng``."""

    def __init__(self, root: str, size: int, rng: np.random.Generator) -> None:
        self.root, self.size, self.rng = root, size, rng

    def images(self, counts: Sequence[int], path_of: Callable[[int, int], str]
               ) -> List[Tuple[int, int, str]]:
        return write_classes(self.root, stripes_pattern, self.size, self.rng, counts, path_of)

    def text(self, relative: str, text: str) -> None:
        _write_text(os.path.join(self.root, relative), text)


def smoke_layouts() -> Dict[str, datasets.Dataset]:
    """The datasets that declare a smoke layout, by name."""
    return {d.name: d for d in datasets.described() if d.smoke is not None}


def _check_counts(num_classes: int, images_per_class: int, size: int = 1) -> None:
    if not 1 <= size <= MAX_SIZE:
        raise SmokeDataError(f"--size must be in 1..{MAX_SIZE} pixels, got {size}")
    if num_classes > MAX_CLASSES or images_per_class > MAX_IMAGES_PER_CLASS:
        raise SmokeDataError(f"--classes must be at most {MAX_CLASSES} and --images_per_class "
                             f"at most {MAX_IMAGES_PER_CLASS}, got {num_classes} and "
                             f"{images_per_class}")
    if num_classes * images_per_class * size * size > MAX_PIXELS:
        raise SmokeDataError(f"{num_classes} classes x {images_per_class} images of {size} x "
                             f"{size} pixels exceed the {MAX_PIXELS} pixels a generated set "
                             f"may hold; generate fewer or smaller images")
    if num_classes < MIN_CLASSES:
        raise SmokeDataError(f"--classes must be at least {MIN_CLASSES} (two train and two test "
                             f"classes), got {num_classes}")
    if images_per_class < 2:
        raise SmokeDataError(f"--images_per_class must be at least 2, got {images_per_class}")


def make_smoke_datasets(out: str, names: Optional[Sequence[str]] = None,
                        num_classes: int = DEFAULT_CLASSES,
                        images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
                        size: int = DEFAULT_IMAGE_SIZE, seed: int = 0) -> Dict[str, str]:
    """Write the named datasets (default: every one with a smoke layout, by name) under
    ``out``; returns dataset name -> its folder. The datasets draw from one generator in the
    order named, so ``names`` and ``seed`` fix every file.

    ``num_classes`` counts train and test classes together (the first half trains).
    """
    layouts = smoke_layouts()
    names = list(layouts) if names is None else list(names)
    unknown = [name for name in names if name not in layouts]
    if unknown:
        raise SmokeDataError(f"unknown smoke dataset(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(layouts)}")
    _check_counts(num_classes, images_per_class, size)

    def write() -> Dict[str, str]:
        rng = np.random.default_rng(seed)
        folders = {}
        for name in names:
            folders[name] = os.path.join(out, name)
            layouts[name].smoke(LayoutWriter(folders[name], size, rng), num_classes,
                                images_per_class)
        return folders

    return no_overwrite(write)


def make_folder_dataset(out: str, pattern: str, num_classes: Optional[int] = None,
                        images_per_class: Optional[int] = None, size: Optional[int] = None,
                        seed: int = 0) -> Tuple[str, int, int, int]:
    """``write_class_folder`` with the command's checks; returns (folder, classes, images per
    class, size) as written."""
    if pattern not in PATTERNS:
        raise SmokeDataError(f"unknown --pattern {pattern!r}; choose from {', '.join(PATTERNS)}")
    spec = PATTERNS[pattern]
    num_classes = spec.classes if num_classes is None else num_classes
    images_per_class = spec.images_per_class if images_per_class is None else images_per_class
    size = spec.size if size is None else size
    _check_counts(num_classes, images_per_class, size)
    if size < spec.min_size:
        raise SmokeDataError(f"--size must be at least {spec.min_size} for --pattern {pattern}, "
                             f"got {size}")
    no_overwrite(lambda: write_class_folder(out, pattern, num_classes, images_per_class, size,
                                            seed))
    return out, num_classes, images_per_class, size


def _pattern_defaults(field: str) -> str:
    return ", ".join(f"{name} {getattr(spec, field)}" for name, spec in PATTERNS.items())


def main(argv: Optional[List[str]] = None) -> int:
    # Defaults depend on --layout and --pattern, so each help text states its own.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="Folder to write <dataset>/ folders into (a --source), or "
                                    "with --layout folder the class tree itself.")
    parser.add_argument("--layout", choices=("published", "folder"), default="published",
                        help="published: the datasets' own layouts; folder: OUT/<class>/"
                             "<i>.png for --dataset folder --source OUT (default: published).")
    names = list(smoke_layouts())
    parser.add_argument("--datasets", nargs="+", choices=names,
                        help=f"--layout published only (default: all: {' '.join(names)}).")
    parser.add_argument("--pattern", choices=tuple(PATTERNS),
                        help="--layout folder only (default glyph): glyph on noise, colour "
                             "patch on noise, or the published layouts' colour stripes.")
    parser.add_argument("--classes", type=int,
                        help=f"Classes, train and test together (first half train); default "
                             f"{DEFAULT_CLASSES}, or the pattern's with --layout folder "
                             f"({_pattern_defaults('classes')}).")
    parser.add_argument("--images_per_class", type=int,
                        help=f"Default {DEFAULT_IMAGES_PER_CLASS}, or the pattern's with --layout "
                             f"folder ({_pattern_defaults('images_per_class')}).")
    parser.add_argument("--size", type=int,
                        help=f"Image side in pixels; default {DEFAULT_IMAGE_SIZE}, or the "
                             f"pattern's with --layout folder ({_pattern_defaults('size')}).")
    parser.add_argument("--seed", type=int, default=0, help="Default 0.")
    args = parser.parse_args(argv)

    def command() -> int:
        if not 0 <= args.seed <= 2 ** 32 - 1:
            raise SmokeDataError(f"--seed must be in 0..{2 ** 32 - 1}, got {args.seed}")
        if args.layout == "folder":
            if args.datasets is not None:
                raise SmokeDataError("--datasets applies to --layout published; --layout folder "
                                     "writes one class tree (choose its images with --pattern)")
            folder, classes, per_class, size = make_folder_dataset(
                args.out, args.pattern or "glyph", args.classes, args.images_per_class,
                args.size, args.seed)
            print(f"folder: {folder} ({classes} classes x {per_class} images of {size} x {size} "
                  f"pixels; train with --dataset folder --source {folder})")
            return 0
        if args.pattern is not None:
            raise SmokeDataError("--pattern applies to --layout folder; the published layouts "
                                 "are always drawn with colour stripes")
        folders = make_smoke_datasets(
            args.out, args.datasets,
            DEFAULT_CLASSES if args.classes is None else args.classes,
            DEFAULT_IMAGES_PER_CLASS if args.images_per_class is None else args.images_per_class,
            DEFAULT_IMAGE_SIZE if args.size is None else args.size, args.seed)
        for name, folder in folders.items():
            print(f"{name}: {folder}")
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
