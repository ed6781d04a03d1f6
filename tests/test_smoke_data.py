"""``python -m tools.smoke_data``, the one source of generated images: its class-folder layout
(``--layout folder``) and its bad input; the published layouts are covered by the SMOKE sweeps."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict

import pytest
from PIL import Image

import datasets
from tests.fixtures import write_glyph_folder, write_patch_folder
from tools import smoke_data


def digests(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("pattern, size", [("glyph", 26), ("patch", 8), ("stripes", 12)])
def test_folder_layout_writes_classes_times_images_and_loads_as_a_folder_dataset(
        pattern, size, tmp_path, capsys):
    out = tmp_path / "tree"
    assert smoke_data.main([str(out), "--layout", "folder", "--pattern", pattern, "--classes",
                            "5", "--images_per_class", "3", "--size", str(size)]) == 0
    assert f"5 classes x 3 images of {size} x {size} pixels" in capsys.readouterr().out
    classes = sorted(p for p in out.iterdir())
    assert len(classes) == 5 and all(len(list(c.glob("*.png"))) == 3 for c in classes)
    with Image.open(next(out.rglob("*.png"))) as image:
        assert image.size == (size, size) and image.mode == "RGB"
    splits = datasets.load("folder", str(out))  # first 3 classes train, last 2 test
    assert len(splits.train.class_names) == 3 and len(splits.train.images) == 9
    assert len(splits.evaluation["test"].class_names) == 2


@pytest.mark.parametrize("pattern, writer", [("glyph", write_glyph_folder),
                                             ("patch", write_patch_folder)])
def test_folder_layout_defaults_are_the_tests_generated_folders_byte_for_byte(
        pattern, writer, tmp_path, capsys):
    assert smoke_data.main([str(tmp_path / "cli"), "--layout", "folder", "--pattern",
                            pattern]) == 0
    capsys.readouterr()
    written = digests(tmp_path / "cli")
    assert written == digests(writer(tmp_path / "fixture"))
    assert len(written) == {"glyph": 8 * 14, "patch": 12 * 4}[pattern]


def test_the_same_seed_writes_the_same_files_and_another_seed_other_files(tmp_path, capsys):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert smoke_data.main([str(tmp_path / name), "--layout", "folder", "--pattern",
                                "patch", "--classes", "4", "--seed", seed]) == 0
    capsys.readouterr()
    a, b, c = (digests(tmp_path / name) for name in "abc")
    assert a == b and a.keys() == c.keys() and a != c


@pytest.mark.parametrize("argv, message", [
    (["--pattern", "glyph"], "--pattern applies to --layout folder"),
    (["--layout", "folder", "--datasets", "cub200"], "--datasets applies to --layout published"),
    (["--layout", "folder", "--size", "25"], "--size must be at least 26 for --pattern glyph"),
    (["--layout", "folder", "--pattern", "patch", "--classes", "3"],
     "--classes must be at least 4"),
    (["--classes", "3"], "--classes must be at least 4"),
])
def test_bad_arguments_stop_with_one_line(argv, message, tmp_path, capsys):
    assert smoke_data.main([str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
