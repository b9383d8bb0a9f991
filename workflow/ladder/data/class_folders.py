"""The folder source: a user's <class>/<image> tree (or an archive of one) for train and,
optionally, test, copied into raw/train and raw/test; the layout every such tree has (the digits
source writes one too)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ladder.data import archive
from ladder.data.sources import IMAGE_SUFFIXES, Labelled, Layout, LayoutError, images_in


def download(settings: dict, folder: Path, retries: int) -> None:
    _import_folder(Path(settings["path"]), folder / "train", "dataset.path")
    if settings["test_path"]:
        _import_folder(Path(settings["test_path"]), folder / "test", "dataset.test_path")


def _import_folder(src: Path, dst: Path, key: str) -> None:
    """Copy a <class>/<image> tree (or safely extract an archive of one) to `dst`."""
    if not src.exists():
        raise FileNotFoundError(f"{key} = {src}: no such file or folder")
    if src.is_dir():
        # A copy, not links: DVC makes the files it caches read-only, which must not reach the
        # user's own image folder.
        shutil.copytree(src, dst)
    elif archive.is_archive(src):
        archive.extract(src, dst, source=f"{key} = {src}")
    else:
        raise ValueError(f"{key} = {src}: neither a folder nor a .zip/.tar archive")
    # An archive of one top-level folder that holds the class folders: use that folder.
    entries = [p for p in dst.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and all(p.is_dir() for p in entries[0].iterdir()):
        inner = entries[0].rename(dst.with_name(dst.name + ".inner"))
        shutil.rmtree(dst)
        inner.rename(dst)


def layout(raw: Path) -> Layout:
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
            images = images_in(folder / name)
            if folder == train and not images:
                raise LayoutError(
                    f"{folder / name}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths += images
            labels += [index[name]] * len(images)
        return Labelled(paths, np.asarray(labels, dtype=np.int64))

    test = raw / "test"
    return Layout(classes, labelled(train), labelled(test) if test.is_dir() else None)
