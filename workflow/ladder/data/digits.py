"""The digits source: scikit-learn's bundled digits, written as a class-folder tree (read by
ladder.data.class_folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def download(settings: dict, folder: Path, retries: int) -> None:
    write_digits(folder / "train")


def write_digits(dst: Path) -> None:
    """scikit-learn's bundled digits (1,797 real 8x8 scans, 10 classes) as <digit>/<n>.png files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    for n, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = dst / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{n:04d}.png")
