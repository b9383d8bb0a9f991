"""Planning as the ladder grows: CPU seconds of `snakemake -n` and `dvc status` on params files
of 26, 100, 300 and 1000 experiments (benchmarks/resolution.py's ladder: each rung a one-key diff
of the one before it), for this checkout and, with --before, for an older one in the same run;
with the growth exponent (log-log slope between the two largest sizes).

Each tree and size gets a scratch copy of the workflow (benchmarks/scheduler.py's), a git
repository with DVC initialised, and `dvc repro configure` run in it: the settings files exist
and dvc.lock records `configure`, so both engines see every stage of every experiment, none of
them run yet. The dry run plans the report (every experiment's train and evaluate jobs); `dvc
status` checks `configure` against its lock and lists every other stage as never run. CPU
seconds of the command and every process it starts (RUSAGE_CHILDREN), the fastest of --repeats:
the machine may be shared, so wall time is not the measure.

    python benchmarks/planning.py                           # ~5 min on 2 cores
    git worktree add /tmp/before <commit>
    python benchmarks/planning.py --before /tmp/before      # both, same run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from resolution import SIZES, ladder  # one generator of ladders of each size
from scheduler import cpu_of, scratch_copy  # one way to copy a tree and time a command

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "snakemake -n": ["snakemake", "-n", "--cores", "1", "report"],
    "dvc status": ["dvc", "status"],
}


def workspace(tree: Path, scratch: Path, n: int) -> tuple[Path, dict]:
    """A copy of `tree`'s workflow planning a ladder of `n` experiments, configured by DVC."""
    work, env = scratch_copy(tree, scratch)
    env |= {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site")}
    (work / "params.yaml").write_text(yaml.safe_dump(ladder(n), sort_keys=False))
    cpu_of(["git", "init", "-q"], work, env)
    cpu_of(["dvc", "init", "-q"], work, env)
    if (tree / ".dvc" / "config").is_file():  # the shipped cache settings
        shutil.copy2(tree / ".dvc" / "config", work / ".dvc" / "config")
    cpu_of(["dvc", "repro", "-q", "configure"], work, env)
    return work, env


def measure(tree: Path, scratch: Path, sizes: list[int], repeats: int) -> dict[str, dict]:
    """Command -> size -> CPU seconds (the fastest of `repeats`)."""
    rows: dict[str, dict] = {what: {} for what in COMMANDS}
    for n in sizes:
        work, env = workspace(tree, scratch / str(n), n)
        for what, cmd in COMMANDS.items():
            rows[what][n] = min(cpu_of(cmd, work, env) for _ in range(repeats))
        shutil.rmtree(scratch / str(n))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--before", type=Path, help="another checkout: its rows too")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    trees = ({"before": args.before.resolve()} if args.before else {}) | {"this checkout": REPO}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ladder-planning-") as tmp:
        rows = {
            label: measure(tree, Path(tmp) / str(i), args.sizes, args.repeats)
            for i, (label, tree) in enumerate(trees.items())
        }
    small, large = sorted(args.sizes)[-2:] if len(args.sizes) > 1 else (None, None)
    print(f"{'experiments (a base: chain as deep)':36s}" + "".join(f"{n:>9d}" for n in args.sizes)
          + f"{'exponent':>10s}")  # fmt: skip
    for what in COMMANDS:
        for label, found in rows.items():
            cells = "".join(f"{found[what][n]:9.2f}" for n in args.sizes)
            slope = "—"
            if small:
                ratio = found[what][large] / found[what][small]
                slope = f"{math.log(ratio) / math.log(large / small):.2f}"
            print(f"{f'{what} CPU-s, {label}':36s}{cells}{slope:>10s}")
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
