"""Config resolution as the ladder grows: CPU seconds to load and resolve a params file of 26,
100, 300 and 1000 experiments, each a one-key diff of the one before it (a `base:` chain as deep
as the ladder, the worst case), for this checkout and, with --before, for an older one in the
same run; with the growth exponent (log-log slope between the two largest sizes).

Each tree runs in its own process, with its own package first on PYTHONPATH; each size is
resolved --repeats times and the fastest counts.

    python benchmarks/resolution.py                         # ~1 min on 2 cores
    git worktree add /tmp/before <commit>
    python benchmarks/resolution.py --before /tmp/before    # both, same run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SIZES = (26, 100, 300, 1000)
JOB_SECONDS = 1800  # a runaway's bound: the largest size took ~6 CPU-s before it was linear

MEASURE = """
import json, sys, time
from pathlib import Path
from ladder import config
results = {}
for path in sys.argv[2:]:
    best = None
    for _ in range(int(sys.argv[1])):
        started = time.process_time()
        params = config.load(path)
        spent = time.process_time() - started
        best = spent if best is None else min(best, spent)
    results[Path(path).stem] = {"cpu_s": best, "experiments": len(params.experiments)}
print(json.dumps(results))
"""


def ladder(n: int) -> dict:
    """`n` experiments, each the one before it with another learning rate or seed."""
    experiments = {
        "rung0000": {
            "model": {"name": "mynet", "blocks": 2, "width": 16},
            "augment": {"hflip": 0.5},
            "optimizer": {"lr": 0.05},
            "batch_size": 64,
            "epochs": 10,
        }
    }
    for i in range(1, n):
        diff = {"optimizer": {"lr": 0.05 + i * 1e-4}} if i % 2 else {"seed": i}
        experiments[f"rung{i:04d}"] = {"base": f"rung{i - 1:04d}", **diff}
    return {"dataset": {"source": "digits"}, "experiments": experiments}


def measure(tree: Path, files: list[Path], repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "workflow")}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(repeats), *map(str, files)],
        env=env, capture_output=True, text=True, timeout=JOB_SECONDS, check=False,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"resolution failed for {tree}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", type=Path, help="another checkout: its rows too")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    trees = {"this checkout": REPO} | ({"before": args.before.resolve()} if args.before else {})
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for n in args.sizes:
            files.append(Path(tmp) / f"{n}.yaml")
            files[-1].write_text(yaml.safe_dump(ladder(n), sort_keys=False))
        rows = {label: measure(tree, files, args.repeats) for label, tree in trees.items()}
    small, large = (str(n) for n in sorted(args.sizes)[-2:])
    print(f"{'experiments (a base: chain as deep)':36s}" + "".join(f"{n:>9d}" for n in args.sizes)
          + f"{'exponent':>10s}")  # fmt: skip
    for label, found in rows.items():
        cells = "".join(f"{found[str(n)]['cpu_s']:9.3f}" for n in args.sizes)
        slope = math.log(found[large]["cpu_s"] / found[small]["cpu_s"]) / math.log(
            int(large) / int(small)
        )
        print(f"{'CPU-s, ' + label:36s}{cells}{slope:10.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
