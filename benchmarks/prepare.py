"""Time `prepare` and `stats` on a generated archive the size of Tiny ImageNet.

Generates (once, cached in --work) a zip in the official layout with 200 classes x 500 train
images and 10,000 val images, 64x64 JPEGs, extracts it as `ladder download` does, then times
prepare (decode, split, write arrays) and stats, each against a simple baseline in the same run:
a single-process decode loop, and the float64 mean/std numpy would compute on the whole split.

    python benchmarks/prepare.py [--work /tmp/ladder-bench] [--workers N]
        [--classes 200 --train-per-class 500 --val 10000]   (tests run it at tiny sizes)

Targets on a 2-core machine: prepare <= 60 s, stats <= 10 s.
"""

from __future__ import annotations

import argparse
import io as stdio
import os
import platform
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
from ladder import manifest
from ladder.data import archive, prepare, stats
from PIL import Image

CLASSES, TRAIN_PER_CLASS, VAL, SIZE = 200, 500, 10_000, 64


def make_archive(
    path: Path, classes: int = CLASSES, per_class: int = TRAIN_PER_CLASS, val: int = VAL
) -> None:
    rng = np.random.default_rng(0)
    # Smooth random images compress like photographs; pure noise would make JPEGs 5x larger.
    base = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    wnids = [f"n{i:08d}" for i in range(classes)]

    def jpeg(i: int) -> bytes:
        small = np.roll(base[i % 64], i % 7, axis=0) ^ np.uint8(i % 251)
        img = Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        if i % 10 == 0:
            img = img.convert("L")  # some grayscale, as in the real set
        buf = stdio.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    root = "tiny-imagenet-200"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/wnids.txt", "\n".join(wnids) + "\n")
        zf.writestr(f"{root}/words.txt", "".join(f"{w}\tclass {w}\n" for w in wnids))
        n = 0
        for w in wnids:
            for j in range(per_class):
                zf.writestr(f"{root}/train/{w}/images/{w}_{j}.JPEG", jpeg(n))
                n += 1
        lines = []
        for i in range(val):
            zf.writestr(f"{root}/val/images/val_{i}.JPEG", jpeg(n + i))
            lines.append(f"val_{i}.JPEG\t{wnids[i % classes]}\t0\t0\t63\t63\n")
        zf.writestr(f"{root}/val/val_annotations.txt", "".join(lines))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/ladder-bench"))
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--classes", type=int, default=CLASSES)
    p.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS)
    p.add_argument("--val", type=int, default=VAL)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    tag = f"{args.classes}x{args.train_per_class}+{args.val}"
    zip_path, raw, out = (
        args.work / f"tiny-imagenet-{tag}.zip",
        args.work / f"raw-{tag}",
        args.work / f"prepared-{tag}",
    )

    if not zip_path.exists():
        _, seconds = timed(make_archive, zip_path, args.classes, args.train_per_class, args.val)
        print(f"generated {zip_path} ({zip_path.stat().st_size / 1e6:.0f} MB) in {seconds:.0f} s")
    if not manifest.sibling(raw).exists():
        # As `ladder download` leaves it: extracted, with the folder's manifest.
        def extract() -> None:
            with manifest.folder(raw) as tmp:
                archive.extract(zip_path, tmp)

        _, seconds = timed(extract)
        print(f"extracted in {seconds:.1f} s")

    settings = {"source": "tinyimagenet", "val_fraction": 0.2, "split_seed": 0, "image_size": SIZE}
    shutil.rmtree(out, ignore_errors=True)
    summary, t_prepare = timed(prepare.prepare, raw, out, settings, workers=args.workers)

    # Baseline: the same decode in one process, on a 5,000-image sample, scaled up.
    sample = sorted((raw / "tiny-imagenet-200" / "train").rglob("*.JPEG"))[:5000]
    _, t_sample = timed(lambda: [prepare.decode(q, SIZE) for q in sample])
    t_serial = t_sample / len(sample) * sum(summary["images"].values())

    _, t_stats = timed(stats.compute, out / "train_x.npy")
    x = np.load(out / "train_x.npy", mmap_mode="r")
    _, t_naive = timed(lambda: (x.astype(np.float64) / 255).std(axis=(0, 1, 2)))

    print(f"\nmachine: {platform.node()} {os.cpu_count()} cores, {args.workers} workers")
    print(f"images: {summary['images']}, duplicates: {summary['duplicates']}")
    print(f"{'step':<10}{'ours (s)':>10}{'baseline (s)':>14}{'speed-up':>10}  baseline")
    rows = [
        ("prepare", t_prepare, t_serial, "one process (estimated from 5,000 images)"),
        ("stats", t_stats, t_naive, "float64 numpy on the whole split (8 GB)"),
    ]
    for step, ours, base, what in rows:
        print(f"{step:<10}{ours:>10.1f}{base:>14.1f}{base / ours:>9.1f}x  {what}")
    print(f"targets: prepare <= 60 s {'met' if t_prepare <= 60 else 'MISSED'}, "
          f"stats <= 10 s {'met' if t_stats <= 10 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
