"""What a dataset member says about itself: one :class:`Dataset` record per file in datasets/.

Next to its parser, a member registers the facts other code reads from it, so that a new dataset
is one file (the whole contract, with an example: docs/ARCHITECTURE.md, "Adding a dataset"):

- ``defaults``: options left unset on the command line (``parameters.resolve_dataset_defaults``);
- ``recall_ks``: the K of Recall@K it is evaluated at (parameters.py, tools/paper_tables.py);
- ``published``: the publisher's size (``tools.prepare`` prints it next to what was found);
- ``folders``: what ``<source>/<name>/`` holds once prepared (checked by ``tools.sweep``);
- ``read_download``: how ``tools.prepare`` finds the files of the publisher's download;
- ``smoke``: a miniature of the prepared layout (``tools.smoke_data``, SMOKE sweeps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:  # annotations only
    from ._data import DatasetSplits
    from ._download import Plan


@dataclass(frozen=True)
class Defaults:
    """Defaults of the options a run leaves unset (``parameters.resolve_dataset_defaults``)."""

    arch: str
    crop_size: int
    n_epochs: int
    pretrained: bool
    bs: int
    samples_per_class: int
    augmentation: str
    lr: float = 1e-5
    eval_initial: bool = False  # evaluate the untrained network first (epoch 0)


# The published image benchmarks' settings (a pretrained ResNet50 at 224 pixels).
IMAGE_BENCHMARK = Defaults(arch="resnet50_frozen_normalize", crop_size=224, n_epochs=150,
                           pretrained=True, bs=112, samples_per_class=2, augmentation="base")
DEFAULT_RECALL_KS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Published:
    """The publisher's size: ``(classes, images)`` of the training split and of the evaluation
    split (query and gallery together); ``class_word`` names a class in messages."""

    train: Tuple[int, int]
    test: Tuple[int, int]
    class_word: str = "classes"

    @property
    def classes(self) -> int:
        return self.train[0] + self.test[0]

    @property
    def images(self) -> int:
        return self.train[1] + self.test[1]


class SmokeWriter(Protocol):
    """What ``tools.smoke_data`` hands a member's ``smoke`` layout: it writes under
    ``OUT/<name>/`` and draws every image itself (the layout only says where files go)."""

    def images(self, counts: Sequence[int], path_of: Callable[[int, int], str]
               ) -> List[Tuple[int, int, str]]:
        """``counts[c]`` images of class ``c`` at ``path_of(c, i)`` (relative, ``.jpg``/``.JPG``
        written as JPEG, anything else as PNG), class by class; returns ``(class, i, path)``."""

    def text(self, relative: str, text: str) -> None:
        """A text file (a list file of the layout) at ``relative``."""


Parser = Callable[[Optional[str], Optional[str]], "DatasetSplits"]
ReadDownload = Callable[[str], "Plan"]
SmokeLayout = Callable[[SmokeWriter, int, int], None]  # (writer, classes, images per class)


@dataclass(frozen=True)
class Dataset:
    """One dataset: its parser and what the rest of the code reads about it (see module doc).

    Calling the record calls the parser, ``dataset(source, folder_name) -> DatasetSplits``.
    """

    name: str  # --dataset NAME; a prepared copy lives in <source>/<name>/
    parse: Parser
    defaults: Defaults = IMAGE_BENCHMARK
    recall_ks: Tuple[int, ...] = DEFAULT_RECALL_KS
    published: Optional[Published] = None  # None: no fixed size (e.g. the user's own tree)
    title: str = ""  # short name in tables (default: the name)
    aliases: Tuple[str, ...] = ()  # other words that select its rows in table1.sh / table2.sh
    folders: Tuple[str, ...] = ()  # subfolders of <source>/<name>/ once prepared
    read_download: Optional[ReadDownload] = None  # None: nothing to prepare
    smoke: Optional[SmokeLayout] = None  # None: no generated miniature
    # Hash every evaluation image to refuse byte-identical copies in a split searched against
    # itself: for trees no publisher has vetted (the published sets' list files are checked).
    byte_copies_checked: bool = False

    def __call__(self, source: Optional[str], folder_name: Optional[str] = None
                 ) -> "DatasetSplits":
        return self.parse(source, folder_name)

    @property
    def heading(self) -> str:
        return self.title or self.name
