"""Snakemake's own CPU time (the scheduler process, not its jobs): the full ladder's dry run and
the demo's real run, for this checkout and, with --before, for an older one.

The CPU time is read from /proc/<pid>/stat (user + system of the Snakemake process alone),
sampled every 20 ms until it exits; the last sample misses at most that much. Each tree runs in
a scratch copy of itself, with its own package first on PYTHONPATH.

    python benchmarks/scheduler.py                              # this checkout
    git worktree add /tmp/before <commit>
    python benchmarks/scheduler.py --before /tmp/before         # and that commit, in the same run
    python benchmarks/scheduler.py --demo-config tiny.yaml      # a smaller real run
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE = ("Snakefile", "workflow", "profiles", "params.yaml", "config", "dvc.yaml")
TICK = os.sysconf("SC_CLK_TCK")


def own_cpu(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(CPU seconds of the process itself, wall seconds) of `cmd`."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    cpu = 0.0
    while proc.poll() is None:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (not children's)
        except (FileNotFoundError, IndexError):
            break
        time.sleep(0.02)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{err[-3000:]}")
    return cpu, time.perf_counter() - started


def cpu_of(cmd: list[str], cwd: Path, env: dict, timeout: float | None = None) -> float:
    """CPU seconds of `cmd` and every process it starts (RUSAGE_CHILDREN), so that other work
    on the machine does not count; it must succeed within `timeout` seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{(done.stdout + done.stderr)[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scratch_copy(tree: Path, scratch: Path) -> tuple[Path, dict]:
    """A copy of `tree`'s workflow in `scratch`, and an environment whose `ladder`, Snakemake
    and DVC run that copy's code on the CPU."""
    work = scratch / tree.name
    work.mkdir(parents=True)
    for name in TREE:
        src = tree / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, work / name)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(work / "workflow"), "LADDER_DEVICE": "cpu",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    return work, env


def measure(tree: Path, scratch: Path, demo_config: Path) -> dict[str, tuple[float, float]]:
    work, env = scratch_copy(tree, scratch)
    bin_dir = Path(sys.executable).parent
    snakemake = str(bin_dir / "snakemake")
    rows = {"full ladder, dry run": own_cpu([snakemake, "-n", "--cores", "1", "report"], work, env)}
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    demo = [snakemake, "--cores", "2", "--configfile", str(demo_config.resolve()),
            "--replace-workflow-config", "report"]  # fmt: skip
    rows["demo, real run"] = own_cpu(demo, work, env)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="an older checkout (git worktree) to compare")
    p.add_argument("--demo-config", type=Path, default=REPO / "config" / "demo.yaml",
                   help="the real run's config (a smaller one for a quick look)")  # fmt: skip
    args = p.parse_args(argv)
    trees = {"this checkout": REPO}
    if args.before:
        trees = {f"before ({args.before})": args.before.resolve(), **trees}
    with tempfile.TemporaryDirectory() as scratch:
        results = {name: measure(tree, Path(scratch) / str(i), args.demo_config)
                   for i, (name, tree) in enumerate(trees.items())}  # fmt: skip
    print(f"{'':28s} {'Snakemake CPU-s':>16s} {'wall s':>8s}")
    for name, rows in results.items():
        print(name)
        for what, (cpu, wall) in rows.items():
            print(f"  {what:26s} {cpu:16.2f} {wall:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
