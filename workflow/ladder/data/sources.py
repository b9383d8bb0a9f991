"""Dataset sources: the labelled images a source's raw files hold, as every source's layout
reader returns them.

After `ladder download`, results/data/raw/ holds one of two layouts (each source's entry in
ladder.data.registry names its reader):
- tinyimagenet (ladder.data.tinyimagenet): the official archive and its extracted
  `tiny-imagenet-200/` tree;
- folder and digits (ladder.data.class_folders): `train/<class>/<image>` and, optionally,
  `test/<class>/<image>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladder.data.registry import SOURCES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DownloadError(RuntimeError):
    """The archive could not be fetched or does not match its checksum."""


class LayoutError(ValueError):
    """The raw files do not have the layout the source promises; the message names the path."""


@dataclass(frozen=True)
class Labelled:
    paths: list[Path]
    labels: np.ndarray  # int64, index into Layout.classes


@dataclass(frozen=True)
class Layout:
    classes: list[dict]  # [{"index", "id", "name"}]
    pool: Labelled  # labelled images that train and val (and test, when `test` is None) come from
    test: Labelled | None  # a separate labelled test set, or None


def read_layout(raw: Path, source: str) -> Layout:
    """The labelled images in `raw`, read as the source's registry entry says."""
    if source not in SOURCES:
        raise ValueError(f"dataset.source: unknown source {source!r}")
    return SOURCES[source].layout_reader()(raw)


def images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
