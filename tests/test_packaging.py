"""Installing the project must not put the layout's generic folder names into site-packages."""
import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_wheel_installs_no_module_only_metadata(tmp_path):
    """`pip install .` next to Hugging Face `datasets` must leave it importable: the wheel holds
    the project's metadata and dependency list, and no top-level package or module."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps",
                             "--no-build-isolation", "--no-index", "-w", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = tmp_path.glob("das_dml-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert all(name.endswith(".dist-info") for name in top_level), sorted(top_level)
    metadata = next(n for n in names if n.endswith("/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: torch" in text and "Requires-Dist: faiss-cpu" in text
