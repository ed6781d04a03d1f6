"""Tiny generated datasets in the published layouts, for smoke runs (``SMOKE=1 bash table1.sh``).

    python -m tools.smoke_data OUT [--datasets cub200 cars196 online_products in-shop]

writes ``OUT/<dataset>/`` exactly as the parsers in ``datasets/`` expect the real data, so a smoke
run goes through the same parsing, loading and evaluation code as a real one:

* ``cub200/images/<NNN.Class_Name>/*.jpg``
* ``cars196/images/<class folder with spaces>/*.jpg``
* ``online_products/images/<super>_final/*.JPG`` plus ``Info_Files/Ebay_{train,test}.txt``
* ``in-shop/img/<GROUP>/<Category>/id_<item>/*.jpg`` plus ``Eval/list_eval_partition.txt``

Every class is a colour and a stripe direction plus noise, so that even one epoch learns something.
Nothing is downloaded; a few hundred kilobytes are written.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

DATASETS = ("cub200", "cars196", "online_products", "in-shop")
DEFAULT_CLASSES = 16  # half train, half test: 8 classes, enough for a batch of 16 at 2 per class
DEFAULT_IMAGES_PER_CLASS = 4
DEFAULT_IMAGE_SIZE = 40


def class_image(rng: np.random.Generator, label: int, size: int) -> Image.Image:
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


def _save(image: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format="JPEG", quality=90)


def write_class_folders(root: str, class_names: Sequence[str], images_per_class: int, size: int,
                        rng: np.random.Generator, extension: str = ".jpg") -> None:
    """``root/images/<class name>/<class name>_<i>.jpg`` (the CUB and CARS layout)."""
    for label, name in enumerate(class_names):
        for index in range(images_per_class):
            file_name = f"{name.replace(' ', '_')}_{index:04d}{extension}"
            _save(class_image(rng, label, size), os.path.join(root, "images", name, file_name))


def make_cub200(out: str, num_classes: int, images_per_class: int, size: int,
                rng: np.random.Generator) -> str:
    names = [f"{i + 1:03d}.Smoke_Bird_{i + 1:03d}" for i in range(num_classes)]
    root = os.path.join(out, "cub200")
    write_class_folders(root, names, images_per_class, size, rng)
    return root


def make_cars196(out: str, num_classes: int, images_per_class: int, size: int,
                 rng: np.random.Generator) -> str:
    # The DML codebases' CARS folders are car names with spaces, e.g. "Acura RL Sedan 2012".
    names = [f"Smoke Car Model {i + 1:03d} 20{10 + i % 10}" for i in range(num_classes)]
    root = os.path.join(out, "cars196")
    write_class_folders(root, names, images_per_class, size, rng)
    return root


SOP_SUPER_CLASSES = ("bicycle", "cabinet", "chair")


def make_online_products(out: str, num_classes: int, images_per_class: int, size: int,
                         rng: np.random.Generator) -> str:
    """Half the products train, half test; published-style ids (class ids 1.., super ids 1..)."""
    root = os.path.join(out, "online_products")
    n_train = (num_classes + 1) // 2
    rows: Dict[str, List[str]] = {"train": [], "test": []}
    image_id = 1
    for class_index in range(num_classes):
        split = "train" if class_index < n_train else "test"
        class_id = class_index + 1
        super_index = class_index % len(SOP_SUPER_CLASSES)
        folder = f"{SOP_SUPER_CLASSES[super_index]}_final"
        count = 2 + (class_index % max(images_per_class - 1, 1))  # 2.. images, as in SOP
        for index in range(count):
            relative = f"{folder}/{1000000 + class_id}_{index}.JPG"
            _save(class_image(rng, class_index, size), os.path.join(root, "images", relative))
            rows[split].append(f"{image_id} {class_id} {super_index + 1} {relative}")
            image_id += 1
    os.makedirs(os.path.join(root, "Info_Files"), exist_ok=True)
    for split, lines in rows.items():
        with open(os.path.join(root, "Info_Files", f"Ebay_{split}.txt"), "w") as handle:
            handle.write("image_id class_id super_class_id path\n" + "\n".join(lines) + "\n")
    return root


def make_in_shop(out: str, num_classes: int, images_per_class: int, size: int,
                 rng: np.random.Generator) -> str:
    """Half the items train; each test item has query and gallery images."""
    root = os.path.join(out, "in-shop")
    n_train = (num_classes + 1) // 2
    lines = []
    for item_index in range(num_classes):
        item = f"id_{item_index + 1:08d}"
        group, category = ("WOMEN", "Dresses") if item_index % 2 == 0 else ("MEN", "Shirts_Polos")
        for index in range(max(images_per_class, 2)):
            relative = f"img/{group}/{category}/{item}/{index + 1:02d}_{index + 1}_front.jpg"
            _save(class_image(rng, item_index, size), os.path.join(root, relative))
            if item_index < n_train:
                status = "train"
            else:
                status = "query" if index % 2 == 0 else "gallery"
            lines.append(f"{relative} {item} {status}")
    os.makedirs(os.path.join(root, "Eval"), exist_ok=True)
    with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as handle:
        handle.write(f"{len(lines)}\nimage_name item_id evaluation_status\n")
        handle.write("\n".join(lines) + "\n")
    return root


MAKERS = {"cub200": make_cub200, "cars196": make_cars196,
          "online_products": make_online_products, "in-shop": make_in_shop}


def make_smoke_datasets(out: str, names: Sequence[str] = DATASETS,
                        num_classes: int = DEFAULT_CLASSES,
                        images_per_class: int = DEFAULT_IMAGES_PER_CLASS,
                        size: int = DEFAULT_IMAGE_SIZE, seed: int = 0) -> Dict[str, str]:
    """Write the named datasets under ``out``; returns dataset name -> its folder.

    ``num_classes`` counts train and test classes together (the first half trains).
    """
    unknown = [name for name in names if name not in MAKERS]
    if unknown:
        raise ValueError(f"unknown smoke dataset(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(DATASETS)}")
    if num_classes < 4:
        raise ValueError(f"--classes must be at least 4 (two train and two test classes), "
                         f"got {num_classes}")
    if images_per_class < 2:
        raise ValueError(f"--images_per_class must be at least 2, got {images_per_class}")
    rng = np.random.default_rng(seed)
    return {name: MAKERS[name](out, num_classes, images_per_class, size, rng) for name in names}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", help="Folder to write <dataset>/ folders into (a --source).")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--classes", type=int, default=DEFAULT_CLASSES,
                        help="Classes per dataset, train and test together (first half train).")
    parser.add_argument("--images_per_class", type=int, default=DEFAULT_IMAGES_PER_CLASS)
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help="Image side in pixels.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        folders = make_smoke_datasets(args.out, args.datasets, args.classes, args.images_per_class,
                                      args.size, args.seed)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
