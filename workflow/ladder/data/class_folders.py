"""The folder source: a user's <class>/<image> tree (or an archive of one) for train and,
optionally, test, imported into raw/train and raw/test; the layout every such tree has (the
digits source writes one too)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ladder.data import archive
from ladder.data.sources import IMAGE_SUFFIXES, Labelled, Layout, LayoutError, images_in

log = logging.getLogger(__name__)


def download(settings: dict, folder: Path, retries: int) -> None:
    _import_folder(Path(settings["path"]), folder / "train", "dataset.path")
    if settings["test_path"]:
        _import_folder(Path(settings["test_path"]), folder / "test", "dataset.test_path")


def _import_folder(src: Path, dst: Path, key: str) -> None:
    """Link a <class>/<image> tree (or safely extract an archive of one) into `dst`."""
    if not src.exists():
        raise FileNotFoundError(f"{key} = {src}: no such file or folder")
    if src.is_dir():
        # Reflinks or hard links where the file system allows (FileSharer, below), not a second
        # copy of the dataset. DVC does not cache these files (stages.Out.dvc_files), so it never
        # makes them, and the user's images with them, read-only. An image edited in place in
        # either folder differs from the raw manifest's digest, and prepare refuses it.
        sharer = FileSharer()
        shutil.copytree(src, dst, copy_function=sharer)
        log.info("%s: %s", key, ", ".join(f"{n} by {way}" for way, n in sharer.used.items() if n))
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


class FileSharer:
    """A `copy_function` for shutil.copytree that gives each new file the content of its source
    with as little new disk as the file system allows: a reflink (btrfs, xfs: copy-on-write, the
    two independent from then on), else a hard link (the same file: a write in place would
    reach both; ladder writes nothing in place), else a copy (across file systems, or a file
    another user owns where fs.protected_hardlinks is set). A way the file system refuses
    outright is not tried again for the other files; `used` counts each way taken."""

    FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
    # What a file system that cannot do a way at all answers (any reflink failure counts too).
    CANNOT = frozenset({errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS})

    def __init__(self) -> None:
        self.ways = ["reflink", "hardlink"]
        self.used = {"reflink": 0, "hardlink": 0, "copy": 0}

    def __call__(self, src: str, dst: str) -> str:
        for way in list(self.ways):
            try:
                getattr(self, f"_{way}")(src, dst)
            except OSError as e:
                if e.errno in self.CANNOT or way == "reflink":
                    self.ways.remove(way)
                continue
            self.used[way] += 1
            return dst
        shutil.copy2(src, dst)
        self.used["copy"] += 1
        return dst

    def _reflink(self, src: str, dst: str) -> None:
        import fcntl

        with Path(src).open("rb") as s, Path(dst).open("xb") as d:
            try:
                fcntl.ioctl(d.fileno(), self.FICLONE, s.fileno())
            except OSError:
                Path(dst).unlink()
                raise

    def _hardlink(self, src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=True)  # a symlink's target, as a copy would read


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
