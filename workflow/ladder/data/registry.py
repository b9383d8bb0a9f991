"""The dataset sources, one entry each: what its download reads, whether it brings its own test
set, and the functions that download it and read its raw layout.

ladder.config derives from these entries what `download` and `prepare` read (so an edit to
another source's keys reruns nothing); ladder.data.download and ladder.data.sources dispatch
through them. The schema (params.schema.yaml) names the sources for users; tests/test_registries.py
fails when the two disagree. Adding a source: an entry here, its module in ladder/data/ (a
download and a layout function, or another source's layout), its name in the schema.

Light on purpose: Snakemake imports ladder.config (hence this module) whenever it loads the
workflow, so nothing here imports pooch, PIL or scikit-learn. An entry names its functions
("module:function"), imported only when a stage runs.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str
    reads: tuple[str, ...]  # the `dataset.*` keys its download reads besides `source`
    # Whether the raw files hold a labelled test set (given the dataset settings); where they
    # do not, prepare draws one with `dataset.test_fraction`.
    own_test_set: Callable[[Mapping], bool]
    download: str  # "module:function(settings, folder, retries)": fill the raw folder
    layout: str  # "module:function(raw) -> Layout": the labelled images in the raw folder
    # The files each function runs, relative to workflow/ladder/: download.json and prepare.json
    # record their digests (ladder.config.source_code), so that adding or editing another
    # source reruns nothing.
    download_code: tuple[str, ...]
    layout_code: tuple[str, ...]

    def downloader(self) -> Callable:
        return pkgutil.resolve_name(self.download)

    def layout_reader(self) -> Callable:
        return pkgutil.resolve_name(self.layout)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            name="tinyimagenet",
            reads=("url", "md5"),
            own_test_set=lambda dataset: True,  # the official val split, with its labels
            download="ladder.data.tinyimagenet:download",
            layout="ladder.data.tinyimagenet:layout",
            download_code=("data/tinyimagenet.py", "data/archive.py"),
            layout_code=("data/tinyimagenet.py", "data/archive.py"),  # (it imports it)
        ),
        Source(
            name="folder",
            reads=("path", "test_path"),
            own_test_set=lambda dataset: bool(dataset["test_path"]),
            download="ladder.data.class_folders:download",
            layout="ladder.data.class_folders:layout",
            download_code=("data/class_folders.py", "data/archive.py"),
            layout_code=("data/class_folders.py", "data/archive.py"),
        ),
        Source(
            name="digits",
            reads=(),
            own_test_set=lambda dataset: False,
            download="ladder.data.digits:download",
            layout="ladder.data.class_folders:layout",
            download_code=("data/digits.py",),
            layout_code=("data/class_folders.py", "data/archive.py"),
        ),
    ]
}
