"""`ladder prepare`: decode, resize and split the raw images into memory-mappable arrays.

Writes results/data/prepared/{train,val,test}_{x,y}.npy (uint8 NHWC images, int64 labels) and
classes.json, with the folder's manifest. Splits are stratified and seeded, so the same settings
give identical arrays (and an identical manifest: nothing downstream reruns).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from ladder import io, manifest
from ladder.data.sources import Labelled, read_layout

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHUNK = 256  # images per task sent to a decoding worker


class ImageDecodeError(ValueError):
    """An image file is corrupt, truncated or unreadable; the message names it."""


def prepare(raw: str | Path, out: str | Path, settings: dict, workers: int | None = None) -> dict:
    """Build the prepared arrays from `raw` with `settings` (results/configs/prepare.json)."""
    started = time.perf_counter()
    manifest.read(raw)
    layout = read_layout(Path(raw), settings["source"])
    splits = split(layout.pool, layout.test, settings)
    size = settings["image_size"]
    workers = workers or os.cpu_count() or 1

    digests: dict[str, np.ndarray] = {}
    with manifest.folder(out) as tmp:
        for name, (paths, labels) in splits.items():
            digests[name] = _decode_into(tmp / f"{name}_x.npy", paths, size, workers)
            np.save(tmp / f"{name}_y.npy", labels)
        io.write_json(tmp / "classes.json", layout.classes)

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


def _decode_into(path: Path, paths: list[Path], size: int, workers: int) -> np.ndarray:
    """Decode `paths` in parallel into a .npy memmap at `path`; return each image's digest.
    Workers write their rows into the memmap themselves: only digests cross process lines."""
    array = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    del array  # header and size are on disk; workers open it themselves
    digests = np.empty(len(paths), dtype="S16")
    tasks = [(path, i, paths[i : i + CHUNK], size) for i in range(0, len(paths), CHUNK)]
    # fork: workers inherit everything, and nothing here holds threads (torch is not imported).
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for start, hashes in pool.imap_unordered(_decode_chunk, tasks):
            digests[start : start + len(hashes)] = hashes
    return digests


def _decode_chunk(task: tuple[Path, int, list[Path], int]) -> tuple[int, list[bytes]]:
    path, start, paths, size = task
    out = np.load(path, mmap_mode="r+")
    hashes = []
    for i, p in enumerate(paths):
        out[start + i] = image = decode(p, size)
        hashes.append(hashlib.blake2b(image.tobytes(), digest_size=16).digest())
    out.flush()
    return start, hashes


def decode(path: Path, size: int) -> np.ndarray:
    """Fully decode one image to RGB uint8 of side `size` (grayscale, CMYK, palettes: RGB)."""
    try:
        with Image.open(path) as im:
            im.load()  # a full decode: Image.verify() would not notice a truncated JPEG
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{path}: cannot decode image ({e})") from None
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
