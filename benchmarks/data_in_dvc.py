"""DVC's bookkeeping of a class-folder dataset: `dvc commit` and `dvc status` CPU seconds, disk
and link counts, at a few dataset sizes, for this checkout and, with --before, an older one in
the same run.

For each size a dataset of tiny PNG images (8x8, random pixels, 100 class folders) is made once
and kept in --work. Each tree gets a scratch project of its own code (git, DVC and its
.dvc/config) whose params.yaml imports that folder (dataset.source: folder), and runs what a
Snakemake run and `ladder dvc-commit` do: the configure, download (the folder import) and prepare
stage commands, then `dvc commit --force`, then `dvc status` (twice: the second counts, the first
may still refresh DVC's state). CPU time is the command and its children (getrusage), so other
work on the machine does not count. Disk is what results/ and .dvc/cache add to the dataset
folder, each file counted once however many links it has (du over all three); the link counts
are those of one raw image and of the prepared train_x.npy.

    python benchmarks/data_in_dvc.py --work /tmp/dvc-data                 # ~10 min on 2 cores
    git worktree add /tmp/before <commit>
    python benchmarks/data_in_dvc.py --work /tmp/dvc-data --before /tmp/before
    python benchmarks/data_in_dvc.py --work /tmp/dvc-data --import-only --sizes 10000,40000
    python benchmarks/data_in_dvc.py --work /tmp/dvc-data --archive

--import-only runs configure and download alone and reports the import's CPU seconds, in all
and per 1000 images (no prepare, no DVC).

--archive adds a row per tree with the same dataset given as an archive (`dataset.path:
images-<size>.tar`, uncompressed, packed once into --work next to the folder: one top-level
`images/` folder, members in sorted order, as `tar cf --sort=name` of the folder would): DVC then
has one file to hash through results/data/source/path instead of every image. Its disk is
counted against the archive instead of the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from scheduler import cpu_of, scratch_copy  # one way to copy a tree and time a command

REPO = Path(__file__).resolve().parents[1]
CLASSES = 100  # fewer below 5000 images, so that a stratified split has one of each in val/test
SIDE = 8
JOB_SECONDS = 1800  # a runaway command's bound: the largest takes a minute or two
DVC_FILES = (".dvc/config", ".dvcignore", ".gitignore", ".dvc/plots")  # besides scheduler.TREE
RAW_IMAGE = "results/data/raw/train/c000/0000000.png"
PREPARED_ARRAY = "results/data/prepared/train_x.npy"
STAGES = ("configure", "download", "prepare")  # what is run and committed


def dataset(work: Path, size: int) -> Path:
    """`size` tiny PNGs in CLASSES class folders, made once in `work`."""
    root = work / f"images-{size}"
    if (root / "done").exists():
        return root / "images"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(size)
    classes = max(2, min(CLASSES, size // 50))
    for i in range(size):
        folder = root / "images" / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:07d}.png")
    (root / "done").touch()
    return root / "images"


def packed(images: Path) -> Path:
    """`images` as an uncompressed tar next to its dataset folder in --work, made once."""
    tar = images.parent.with_suffix(".tar")  # work/images-<size>.tar
    if not tar.exists():
        tmp = tar.with_suffix(".tar.tmp")
        # GNU, as `tar cf` writes: PAX (Python's default) adds a header per file for its
        # sub-second mtime, twice the size for tiny images.
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
            tf.add(images, arcname="images")  # recursive, each folder's entries sorted
        tmp.replace(tar)
    return tar


def disk_kb(*paths: Path) -> int:
    """Blocks used under `paths` together, each inode once (du counts a hard link once)."""
    out = subprocess.run(["du", "-skc", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return int(out.splitlines()[-1].split()[0])


def project(tree: Path, scratch: Path, images: Path) -> tuple[Path, dict]:
    """A scratch git + DVC project of `tree`'s code whose dataset is `images` (the folder or
    an archive of it)."""
    work, env = scratch_copy(tree, scratch)
    for rel in DVC_FILES:
        src, dst = tree / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.exists():
            shutil.copy2(src, dst)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["dataset"] = {"source": "folder", "path": str(images), "test_path": "",
                         "val_fraction": 0.2, "test_fraction": 0.2, "image_size": SIDE}  # fmt: skip
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**env, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site")}
    return work, env


def measure(tree: Path, scratch: Path, images: Path, size: int, import_only: bool) -> dict:
    work, env = project(tree, scratch, images)
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    dvc = str(Path(sys.executable).parent / "dvc")
    row = {}
    for name in STAGES[:2] if import_only else STAGES:
        seconds = cpu_of(stages[name]["cmd"].split(), work, env, JOB_SECONDS)
        if name == "download":
            row["import CPU-s"] = seconds
    if import_only:
        row["import CPU-s per 1000"] = row["import CPU-s"] / size * 1000
        shutil.rmtree(work)
        return row
    row["dvc commit CPU-s"] = cpu_of([dvc, "commit", "--force", *STAGES], work, env, JOB_SECONDS)
    cpu_of([dvc, "status"], work, env, JOB_SECONDS)
    row["dvc status CPU-s"] = cpu_of([dvc, "status"], work, env, JOB_SECONDS)
    row["disk MB"] = (disk_kb(images, work / "results", work / ".dvc" / "cache")
                      - disk_kb(images)) / 1000  # fmt: skip
    row["cache MB"] = disk_kb(work / ".dvc" / "cache") / 1000
    row["raw image links"] = (work / RAW_IMAGE).stat().st_nlink
    row["prepared array links"] = (work / PREPARED_ARRAY).stat().st_nlink
    shutil.rmtree(work)  # the next size's disk
    return row


def growth(rows: dict[int, dict], key: str) -> str:
    """The change per 1000 images from the smallest size to the largest."""
    small, large = min(rows), max(rows)
    if small == large:
        return "-"
    per_k = (rows[large][key] - rows[small][key]) / (large - small) * 1000
    return f"{per_k:+.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="where the datasets are kept")
    p.add_argument("--sizes", default="10000,40000,160000", help="images per dataset, by commas")
    p.add_argument("--before", type=Path, help="an older checkout (git worktree) to compare")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--import-only", action="store_true", help="time the folder import alone")
    p.add_argument("--archive", action="store_true", help="add rows: the dataset as a .tar")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    trees = {"this checkout": REPO}
    if args.before:
        trees = {f"before ({args.before})": args.before.resolve(), **trees}
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {name: (tree, False) for name, tree in trees.items()}  # name: (tree, archived)
    if args.archive:
        runs |= {f"{name}, archive": (tree, True) for name, tree in trees.items()}
    results: dict[str, dict[int, dict]] = {name: {} for name in runs}
    started = time.perf_counter()
    for size in sizes:
        images = dataset(args.work, size)
        for i, (name, (tree, archived)) in enumerate(runs.items()):
            source = packed(images) if archived else images
            with tempfile.TemporaryDirectory(dir=args.work) as scratch:
                results[name][size] = measure(
                    tree, Path(scratch) / str(i), source, size, args.import_only
                )
    print(f"{os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s wall")
    keys = list(next(iter(results[next(iter(runs))].values())))
    for name, rows in results.items():
        print(f"\n{name}")
        print(f"{'images':>8}  " + "  ".join(f"{k:>20}" for k in keys))
        for size, row in rows.items():
            print(f"{size:>8}  " + "  ".join(f"{row[k]:>20.2f}" for k in keys))
        print(f"{'per 1000':>8}  " + "  ".join(f"{growth(rows, k):>20}" for k in keys))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
