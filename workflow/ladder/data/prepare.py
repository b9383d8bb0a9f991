"""`ladder prepare`: decode, resize and split the raw images into memory-mappable arrays.

Writes results/data/prepared/{train,val,test}_{x,y}.npy (uint8 NHWC images, int64 labels) and
classes.json, with the folder's manifest. Splits are stratified and seeded, so the same settings
give identical arrays (and an identical manifest: nothing downstream reruns).
"""

from __future__ import annotations

import hashlib
import io as stdio
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from ladder import io, manifest, provenance, store
from ladder.data.sources import IMAGE_SUFFIXES as IMAGES
from ladder.data.sources import Labelled, read_layout

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHUNK = 256  # images per task sent to a decoding worker


class ImageDecodeError(ValueError):
    """An image file is corrupt, truncated or unreadable; the message names it."""


def prepare(raw: str | Path, out: str | Path, settings: dict, workers: int | None = None) -> dict:
    """Build the prepared arrays from `raw` with `settings` (results/configs/prepare.json)."""
    started = time.perf_counter()
    raw = Path(raw)
    # Every raw file is checked against its digest before it is used: the images as the workers
    # decode them (they read each file once anyway), everything else (label lists, the
    # archive) now.
    listed = manifest.read(raw)
    made_with = provenance.made_with()  # the settings and the raw data's manifest, by digest
    if store.restore("prepare", made_with, out):
        return {"restored": str(out)}
    manifest.verify(raw, [r for r in listed["files"] if Path(r).suffix.lower() not in IMAGES])
    expected = Expected(raw, listed)
    layout = read_layout(raw, settings["source"])
    splits = split(layout.pool, layout.test, settings)
    size = settings["image_size"]
    workers = workers or os.cpu_count() or 1

    digests: dict[str, np.ndarray] = {}
    with manifest.folder(out, made_with=made_with) as tmp:
        for name, (paths, labels) in splits.items():
            digests[name] = _decode_into(tmp / f"{name}_x.npy", paths, size, workers, expected)
            np.save(tmp / f"{name}_y.npy", labels)
        io.write_json(tmp / "classes.json", layout.classes)
    store.keep("prepare", made_with, out)

    summary = {
        "classes": len(layout.classes),
        "images": {name: len(paths) for name, (paths, _) in splits.items()},
        "duplicates": duplicates(digests),
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("prepared %s", summary)
    return summary


def split(
    pool: Labelled, test: Labelled | None, settings: dict
) -> dict[str, tuple[list[Path], np.ndarray]]:
    """Stratified, seeded train/val (and test, when the source has none) split of `pool`."""
    seed = settings["split_seed"]
    idx = np.arange(len(pool.paths))
    if test is None:
        idx, test_idx = _stratified(
            idx, pool.labels, settings["test_fraction"], seed, "dataset.test_fraction"
        )
        test = Labelled([pool.paths[i] for i in test_idx], pool.labels[test_idx])
    train_idx, val_idx = _stratified(
        idx, pool.labels[idx], settings["val_fraction"], seed, "dataset.val_fraction"
    )
    return {
        "train": ([pool.paths[i] for i in train_idx], pool.labels[train_idx]),
        "val": ([pool.paths[i] for i in val_idx], pool.labels[val_idx]),
        "test": (test.paths, test.labels),
    }


def _stratified(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int, key: str):
    counts = np.bincount(labels)
    rare = np.flatnonzero((counts > 0) & (counts < 2))
    if rare.size:
        raise ValueError(
            f"{key} = {fraction}: class {int(rare[0])} has a single image; "
            "a stratified split needs at least 2 per class"
        )
    try:
        keep, held = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as e:
        raise ValueError(
            f"{key} = {fraction}: cannot split {len(idx)} images stratified: {e}"
        ) from None
    return np.sort(keep), np.sort(held)


@dataclass(frozen=True)
class Expected:
    """The raw files' digests, for the decoding workers to check what they read."""

    raw: Path
    manifest: dict

    def check(self, path: Path, data: bytes) -> None:
        manifest.check_bytes(self.raw, path.relative_to(self.raw).as_posix(), data, self.manifest)


def _decode_into(
    path: Path, paths: list[Path], size: int, workers: int, expected: Expected | None = None
) -> np.ndarray:
    """Decode `paths` in parallel into a .npy memmap at `path`; return each image's digest.
    Workers write their rows into the memmap themselves: only digests cross process lines.
    With `expected`, each file's bytes are checked against the raw manifest first."""
    array = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    del array  # header and size are on disk; workers open it themselves
    digests = np.empty(len(paths), dtype="S16")
    tasks = [(path, i, paths[i : i + CHUNK], size) for i in range(0, len(paths), CHUNK)]
    global _EXPECTED
    _EXPECTED = expected  # inherited by the forked workers, not sent with every task
    # fork: workers inherit everything, and nothing here holds threads (torch is not imported).
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for start, hashes in pool.imap_unordered(_decode_chunk, tasks):
            digests[start : start + len(hashes)] = hashes
    return digests


_EXPECTED: Expected | None = None


def _decode_chunk(task: tuple[Path, int, list[Path], int]) -> tuple[int, list[bytes]]:
    path, start, paths, size = task
    expected = _EXPECTED
    out = np.load(path, mmap_mode="r+")
    hashes = []
    for i, p in enumerate(paths):
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ImageDecodeError(f"{p}: cannot read image ({e})") from None
        if expected is not None:
            expected.check(p, data)
        out[start + i] = image = decode(stdio.BytesIO(data), size, name=p)
        hashes.append(hashlib.blake2b(image.tobytes(), digest_size=16).digest())
    out.flush()
    return start, hashes


def decode(source: Path | BinaryIO, size: int, name: Path | None = None) -> np.ndarray:
    """Fully decode one image (a path, or its bytes as a file; `name` names it in errors) to RGB
    uint8 of side `size` (grayscale, CMYK, palettes: RGB)."""
    try:
        with Image.open(source) as im:
            im.load()  # a full decode: Image.verify() would not notice a truncated JPEG
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{name or source}: cannot decode image ({e})") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def duplicates(digests: dict[str, np.ndarray]) -> dict[str, int]:
    """Count images whose exact pixels appear in two splits (and repeats within each split)."""
    sets = {name: set(d.tolist()) for name, d in digests.items()}
    counts = {}
    for a_i, a in enumerate(SPLITS):
        counts[f"within_{a}"] = len(digests[a]) - len(sets[a])
        for b in SPLITS[a_i + 1 :]:
            counts[f"{a}_{b}"] = len(sets[a] & sets[b])
    return counts
