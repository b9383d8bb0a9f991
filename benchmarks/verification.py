"""What checking every byte a stage reads costs (ladder.digest, ladder.manifest.verify).

On a prepared split the size of Tiny ImageNet's (80,000 train, 20,000 val and 10,000 test images,
64x64x3, generated once into --work), it times what each stage checks before it reads: training
its splits, evaluation its own, stats the train images; then the digest rate on files the size
of an EfficientNetV2-S checkpoint, and, for the shipped ladder's checkpoints (68.6 GB, as
`ladder plan` counts them), what evaluating all of them costs in digests; then the planning
checks as a Snakemake run makes them (a stat per file of a folder, and a folder dataset's
listing) on a folder of small files. xxh3-128, what manifests record now, is measured against
BLAKE2b, what they recorded before, in the same run. The page cache is warm (each file is read
once before it is timed): these are the digests' costs, not the disk's.

    python benchmarks/verification.py [--work /tmp/ladder-verify] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from ladder import digest, manifest
from ladder.data import sources_on_disk

CHECKPOINT_MB = 80  # an EfficientNetV2-S checkpoint
LADDER_CHECKPOINT_GB = 68.6  # the shipped ladder's, from `ladder plan`
READS = {  # stage -> the prepared files it checks before it reads them
    "train": ("train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy", "classes.json"),
    "evaluate": ("val_x.npy", "val_y.npy", "test_x.npy", "test_y.npy", "classes.json"),
    "stats": ("train_x.npy",),
}


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of `repeats` calls, after one to warm up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def prepared(folder: Path, sizes: dict[str, int], side: int) -> Path:
    """A prepared folder of random images and labels, with its manifest (made once)."""
    if manifest.sibling(folder).exists():
        return folder
    rng = np.random.default_rng(0)
    with manifest.folder(folder) as tmp:
        for split, n in sizes.items():
            x = np.lib.format.open_memmap(
                tmp / f"{split}_x.npy", "w+", np.uint8, (n, side, side, 3)
            )
            for start in range(0, n, 4096):
                stop = min(n, start + 4096)
                x[start:stop] = rng.integers(0, 256, (stop - start, side, side, 3), np.uint8)
            x.flush()
            del x
            np.save(tmp / f"{split}_y.npy", rng.integers(0, 200, n))
        (tmp / "classes.json").write_text(json.dumps([{"index": i} for i in range(200)]))
    return folder


def small_files(folder: Path, count: int) -> Path:
    """`count` files of 2 kB in 200 class folders, like an extracted image dataset (made once)."""
    if (folder / "done").exists():
        return folder
    for i in range(count):
        path = folder / f"c{i % 200:03d}" / f"{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(2048))
    (folder / "done").write_text("")
    return folder


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/ladder-verify"))
    p.add_argument("--train", type=int, default=80_000)
    p.add_argument("--val", type=int, default=20_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--checkpoints", type=int, default=4, help=f"files of {CHECKPOINT_MB} MB")
    p.add_argument("--checkpoint-mb", type=float, default=CHECKPOINT_MB)
    p.add_argument("--files", type=int, default=100_000, help="small files for the planning")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    tag = f"{args.train}-{args.val}-{args.test}-{args.size}"
    data = prepared(args.work / f"prepared-{tag}", sizes, args.size)
    rows = []

    def row(what: str, gb: float, algorithm: str, cpu_wall: tuple[float, float]) -> None:
        cpu, wall = cpu_wall
        rows.append({"what": what, "gb": round(gb, 3), "algorithm": algorithm,
                     "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                     "gb_per_cpu_s": round(gb / cpu, 2) if cpu else None})  # fmt: skip

    # What each stage checks before it reads.
    for stage, names in READS.items():
        gb = sum((data / n).stat().st_size for n in names) / 1e9
        row(f"{stage}: prepared files", gb, digest.ALGORITHM,
            timed(lambda names=names: manifest.verify(data, names), args.repeats))  # fmt: skip
        row(f"{stage}: prepared files", gb, digest.LEGACY,
            timed(lambda names=names: [digest.file_digest(data / n, digest.LEGACY) for n in names],
                  args.repeats))  # fmt: skip

    # Checkpoints: the rate, and the shipped ladder's checkpoints at that rate.
    ckpt = args.work / f"checkpoints-{args.checkpoints}x{args.checkpoint_mb:g}"
    ckpt.mkdir(exist_ok=True)
    files = []
    for i in range(args.checkpoints):
        path = ckpt / f"epoch_{i + 1:03d}.pt"
        if not path.exists():
            path.write_bytes(os.urandom(int(args.checkpoint_mb * 1e6)))
        files.append(path)
    gb = sum(f.stat().st_size for f in files) / 1e9
    for algorithm in (digest.ALGORITHM, digest.LEGACY):
        cpu_wall = timed(
            lambda a=algorithm: [digest.file_digest(f, a) for f in files], args.repeats
        )
        row("checkpoints", gb, algorithm, cpu_wall)
        scale = LADDER_CHECKPOINT_GB / gb
        ladder = (cpu_wall[0] * scale, cpu_wall[1] * scale)
        row("the ladder's checkpoints, at that rate", LADDER_CHECKPOINT_GB, algorithm, ladder)

    # Planning: a stat per file (manifest.read), and a folder dataset's listing.
    raw = small_files(args.work / f"files-{args.files}", args.files)
    listed = manifest.build(raw)  # its manifest, inside and beside, as `download` writes them
    (raw / manifest.INNER).write_text(json.dumps(listed))
    manifest.sibling(raw).write_text(json.dumps(listed))
    row(f"planning: stat {args.files:,} files (manifest.read)", 0, "-",
        timed(lambda: manifest.read(raw), args.repeats))  # fmt: skip
    row(f"planning: listing {args.files:,} files (a folder dataset)", 0, "-",
        timed(lambda: sources_on_disk.listing(raw), args.repeats))  # fmt: skip

    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "sizes": {**sizes, "side": args.size},
        "rows": rows,
    }
    width = max(len(r["what"]) for r in rows)
    print(f"{'what':{width}}  {'GB':>7}  {'digest':9}  {'CPU-s':>8}  {'wall-s':>8}  GB/CPU-s")
    for r in rows:
        rate = "" if r["gb_per_cpu_s"] is None else f"{r['gb_per_cpu_s']:.2f}"
        print(f"{r['what']:{width}}  {r['gb']:7.3f}  {r['algorithm']:9}  {r['cpu_s']:8.3f}  "
              f"{r['wall_s']:8.3f}  {rate}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
