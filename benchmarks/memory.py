"""Memory of the training data path on a Tiny ImageNet-sized split (80,000 + 20,000 images of
64x64x3 uint8, 1.2 GB), on the CPU: the arrays read whole into the process (as training did
before the loader memory-mapped them) against `DeviceSplit.load` (memory-mapped), each followed
by one epoch of shuffled batch gathers; then a real one-epoch `ladder train` of a tiny model.

Each variant runs in its own process, sampled every 50 ms: peak anonymous memory (RssAnon:
memory of the process's own) and peak resident set (VmHWM: with the mapped file's pages, which
the page cache shares between processes and can drop). Prints one row per variant.

    python benchmarks/memory.py                 # ~2 min on 2 cores, 1.2 GB in a temp folder
    python benchmarks/memory.py --train 8000    # smaller, for a quick look
    git worktree add /tmp/before-mmap 4dfa2b5   # the loader before it memory-mapped the arrays
    python benchmarks/memory.py --before /tmp/before-mmap   # its `ladder train` too, same run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

GATHER = """
import sys, time, numpy as np, torch
from pathlib import Path
data, variant = Path(sys.argv[1]), sys.argv[2]
if variant == "whole":  # the loader before: np.load reads the file into the process
    splits = {s: torch.from_numpy(np.load(data / f"{s}_x.npy")) for s in ("train", "val")}
    x = splits["train"]
else:
    from ladder.loader import DeviceSplit
    x = DeviceSplit.load(data, "train", "cpu").x
    DeviceSplit.load(data, "val", "cpu")
order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
for start in range(0, len(x), 256):
    x[order[start : start + 256]].float()
"""


def peaks(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd`; its peak RssAnon and VmHWM (MB) and wall seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    anon = hwm = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except FileNotFoundError:
            break
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "RssAnon" in fields:
            anon = max(anon, int(fields["RssAnon"].split()[0]))
            hwm = max(hwm, int(fields["VmHWM"].split()[0]))
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err[-3000:]}")
    return {"anon_mb": anon / 1024, "hwm_mb": hwm / 1024, "seconds": time.perf_counter() - started}


def _failed_dir(tree: Path, out: Path) -> list[str]:
    """`--failed-dir` where the tree's trainer has it (older ones keep no diverged runs)."""
    cli = (tree / "workflow" / "ladder" / "cli.py").read_text()
    return ["--failed-dir", str(out / "failed")] if '"--failed-dir"' in cli else []


def prepared(root: Path, train: int, val: int, size: int) -> Path:
    """A prepared folder (with its manifest) and stats.json, of random images."""
    from ladder import io, manifest
    from ladder.data import stats

    rng = np.random.default_rng(0)
    data = root / "prepared"
    with manifest.folder(data) as tmp:
        for split, n in (("train", train), ("val", val)):
            x = np.lib.format.open_memmap(
                tmp / f"{split}_x.npy", "w+", np.uint8, (n, size, size, 3)
            )
            for start in range(0, n, 4096):  # in chunks: the benchmark must not need the memory
                stop = min(n, start + 4096)
                x[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), np.uint8)
            x.flush()
            del x
            np.save(tmp / f"{split}_y.npy", rng.integers(0, 200, n))
        io.write_json(tmp / "classes.json", [{"index": i, "id": str(i), "name": str(i)}
                                             for i in range(200)])  # fmt: skip
    stats.write(data, root / "stats.json")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=80_000)
    p.add_argument("--val", type=int, default=20_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--before", type=Path, help="another checkout: its `ladder train` row too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = prepared(root, args.train, args.val, args.size)
        gb = sum(f.stat().st_size for f in data.glob("*_x.npy")) / 1e9
        print(f"{args.train:,} train + {args.val:,} val images of {args.size}px: {gb:.2f} GB")
        rows = {}
        for variant in ("whole", "mapped"):
            rows[f"load + 1 epoch of gathers, {variant}"] = peaks(
                [sys.executable, "-c", textwrap.dedent(GATHER), str(data), variant]
            )
        settings = {
            "model": {"name": "mynet", "blocks": 1, "width": 4, "dropout": 0.0},
            "augment": {"hflip": 0.0},
            "epochs": 1,
            "batch_size": 512,
        }
        from ladder import config, io

        exp = config.Params.from_dict({"experiments": {"x": settings}}).experiments["x"]
        io.write_record(root / "train.json", exp.train)
        train = [sys.executable, "-m", "ladder", "train", "--experiment", "x",
                 "--settings", str(root / "train.json"), "--data", str(data),
                 "--stats", str(root / "stats.json"),
                 "--device", "cpu", "--no-progress"]  # fmt: skip
        trees = {"this checkout": REPO} | ({"before": args.before} if args.before else {})
        for name, tree in trees.items():
            out = root / name.replace(" ", "_")
            rows[f"ladder train, 1 epoch of a tiny model ({name})"] = peaks(
                [
                    *train,
                    "--out",
                    str(out / "run"),
                    "--resume-dir",
                    str(out / "resume"),
                    *_failed_dir(tree, out),
                ],
                env={**os.environ, "PYTHONPATH": str(tree / "workflow")},
            )
    print(f"{'':52s} {'peak anon MB':>12s} {'peak RSS MB':>12s} {'seconds':>8s}")
    for name, r in rows.items():
        print(f"{name:52s} {r['anon_mb']:12.0f} {r['hwm_mb']:12.0f} {r['seconds']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
