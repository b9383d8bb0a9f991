"""The fixed cost of a job: CPU seconds of `ladder` commands that have almost nothing to do, next
to the floor every one of them pays (`import torch`), for this checkout and, with --before, for
an older one in the same run.

Each tree builds its own tiny workspace (the digits, one small experiment, with Snakemake), then
runs every row once a round, for --repeats rounds (the median counts): the floor (with and
without the interpreter's shutdown, which `ladder` skips once its outputs are written), an
evaluation whose checkpoints are all evaluated (its cache), a training whose run is finished
(reused), `ladder stats` on the tiny prepared data, `ladder status`. CPU time is the command's
process and its children (getrusage), wall time around it.

    python benchmarks/startup.py                                # ~2 min on 2 cores
    git worktree add /tmp/before <commit>
    python benchmarks/startup.py --before /tmp/before           # both, same run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from scheduler import scratch_copy  # one way to copy a tree to measure

REPO = Path(__file__).resolve().parents[1]
JOB_SECONDS = 600  # a runaway command's bound: each takes seconds
EXPERIMENT = "x"
PARAMS = {
    "dataset": {"source": "digits", "val_fraction": 0.2, "test_fraction": 0.2, "image_size": 8},
    "tta": {"passes": 1},
    "experiments": {
        EXPERIMENT: {
            "model": {"name": "mynet", "blocks": 1, "width": 8},
            "augment": {"hflip": 0.0},
            "batch_size": 64,
            "epochs": 1,
        }
    },
}


def cpu_of(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(CPU seconds of `cmd` and its children, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=JOB_SECONDS, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def workspace(tree: Path, root: Path) -> tuple[Path, dict]:
    """A tiny finished project of `tree`'s code, and the environment its commands run in."""
    work, env = scratch_copy(tree, root)
    (work / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    cpu_of([str(Path(sys.executable).parent / "snakemake"), "report", "--cores", "2"], work, env)
    return work, env


def commands(work: Path) -> dict[str, list[str]]:
    """What each row runs: the stage commands as the engines run them (dvc.yaml)."""
    stage_cmds = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]

    def stage(name: str) -> list[str]:
        body = stage_cmds[name].get("do", stage_cmds[name])
        return body["cmd"].replace("${key}", EXPERIMENT).split()

    return {
        "import torch (the floor)": [sys.executable, "-c", "import torch"],
        "import torch, no interpreter shutdown": [
            sys.executable,
            "-c",
            "import os, torch; os._exit(0)",
        ],
        "ladder evaluate, all cached": stage("evaluate"),
        "ladder train, run finished": stage("train"),
        "ladder stats": stage("stats"),
        "ladder status": ["ladder", "status"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="another checkout: its rows too")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    trees = {"this checkout": REPO} | ({"before": args.before.resolve()} if args.before else {})
    runs: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        built = {label: workspace(tree, Path(tmp) / label.replace(" ", "_"))
                 for label, tree in trees.items()}  # fmt: skip
        # Round by round, every row once a round: drift of the machine (page cache, clocks,
        # other load) spreads over all rows instead of favouring the first tree.
        for _ in range(args.repeats):
            for label, (work, env) in built.items():
                for what, cmd in commands(work).items():
                    runs.setdefault(f"{what} ({label})", []).append(cpu_of(cmd, work, env))
    rows = {
        name: {"cpu_s": statistics.median(c for c, _ in r),
               "wall_s": statistics.median(w for _, w in r)}
        for name, r in runs.items()
    }  # fmt: skip
    print(f"median of {args.repeats} rounds")
    print(f"{'':56s} {'CPU-s':>6s} {'wall-s':>7s}")
    for name, r in rows.items():
        print(f"{name:56s} {r['cpu_s']:6.2f} {r['wall_s']:7.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
