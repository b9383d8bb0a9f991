"""`ladder stats`: per-channel mean and std of the train split, in [0, 1] units.

Streams over the memory-mapped array and counts the 256 possible values of each channel: the
moments then follow exactly from the histograms in float64, without ever holding the images as
floats (a Tiny ImageNet train split is 1 GB as uint8, 8 GB as float64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ladder import io, manifest

CHUNK = 4096  # images per step


def channel_histograms(x: np.ndarray) -> np.ndarray:
    """(channels, 256) int64 counts of each value, accumulated chunk by chunk."""
    channels = x.shape[-1]
    hist = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(x), CHUNK):
        chunk = np.ascontiguousarray(x[start : start + CHUNK])
        for c in range(channels):
            hist[c] += np.bincount(chunk[..., c].reshape(-1), minlength=256)
    return hist


def compute(train_x: str | Path) -> dict:
    x = np.load(train_x, mmap_mode="r")
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"{train_x}: expected uint8 NHWC images, got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{train_x}: the train split is empty")
    hist = channel_histograms(x).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(axis=1)
    mean = hist @ values / n
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "images": len(x),
        "pixels_per_channel": int(n[0]),
    }


def write(data: str | Path, out: str | Path) -> dict:
    """stats.json of the prepared folder `data` (results/data/prepared): a record (its own
    digest inside, ladder.io.write_record) that training checks before using it."""
    manifest.verify(data, ["train_x.npy"])
    stats = compute(Path(data) / "train_x.npy")
    io.write_record(out, stats)
    return stats
