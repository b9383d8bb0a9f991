"""Dataset sources: how each one's raw files are laid out, and which labelled images they hold.

After `ladder download`, results/data/raw/ holds one of two layouts (each source's entry in
ladder.data.registry names its reader):
- tinyimagenet: the official archive and its extracted `tiny-imagenet-200/` tree;
- folder and digits: `train/<class>/<image>` and, optionally, `test/<class>/<image>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladder.data.registry import SOURCES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def tinyimagenet_layout(raw: Path) -> Layout:
    """The official archive's tree: train/<wnid>/images/, val/ with val_annotations.txt."""
    roots = sorted(p.parent for p in raw.glob("*/wnids.txt"))
    if not roots:
        raise LayoutError(f"{raw}: no */wnids.txt - not a Tiny ImageNet tree")
    root = roots[0]
    wnids = sorted(
        line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()
    )
    words = {}
    if (root / "words.txt").exists():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
    classes = [
        {
            "index": i,
            "id": w,
            "name": words.get(w, w).split(",")[0].strip(),
            "words": words.get(w, w),
        }
        for i, w in enumerate(wnids)
    ]
    index = {w: i for i, w in enumerate(wnids)}

    paths, labels = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise LayoutError(f"{folder}: missing training folder for class {wnid}")
        images = _images_in(folder)
        if not images:
            raise LayoutError(f"{folder}: no images for class {wnid}")
        paths += images
        labels += [index[wnid]] * len(images)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.exists():
        raise LayoutError(
            f"{annotations}: missing (labels of the official val split, our test split)"
        )
    test_paths, test_labels = [], []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise LayoutError(
                f"{annotations}:{n}: expected '<file>\\t<wnid>' with a known wnid, got {line!r}"
            )
        path = root / "val" / "images" / fields[0]
        if not path.exists():
            raise LayoutError(f"{annotations}:{n}: image {path} is missing")
        test_paths.append(path)
        test_labels.append(index[fields[1]])
    order = np.argsort([p.name for p in test_paths], kind="stable")
    return Layout(
        classes,
        Labelled(paths, np.asarray(labels, dtype=np.int64)),
        Labelled([test_paths[i] for i in order], np.asarray(test_labels, dtype=np.int64)[order]),
    )


def class_folders_layout(raw: Path) -> Layout:
    """train/<class>/<image> and, optionally, test/<class>/<image>."""
    train = raw / "train"
    if not train.is_dir():
        raise LayoutError(f"{train}: missing - expected train/<class>/<image> folders")
    names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise LayoutError(f"{train}: found {len(names)} class folder(s); need at least 2")
    classes = [{"index": i, "id": n, "name": n} for i, n in enumerate(names)]
    index = {n: i for i, n in enumerate(names)}

    def labelled(folder: Path) -> Labelled:
        paths, labels = [], []
        for name in sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            if name not in index:
                raise LayoutError(
                    f"{folder / name}: class {name!r} is not among the training classes"
                )
            images = _images_in(folder / name)
            if folder == train and not images:
                raise LayoutError(
                    f"{folder / name}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths += images
            labels += [index[name]] * len(images)
        return Labelled(paths, np.asarray(labels, dtype=np.int64))

    test = raw / "test"
    return Layout(classes, labelled(train), labelled(test) if test.is_dir() else None)
