"""What a stopped training job costs, on the CPU: SIGTERM (SLURM's time limit, preemption,
`scancel`; training saves its place mid-epoch) against SIGKILL (the baseline: resume from the
last finished epoch), each sent at the same points of the second epoch.

For each signal and point: the seconds from the signal to the line that says its place is saved
and to the process's exit (the rest is the interpreter's shutdown), and the work lost,
in steps and seconds: the last step the job logged before it exited, less the step the rerun
resumes at (its `resuming ...` line; after SIGKILL that is the epoch's start). The rerun is ended
once it has said where it resumes. Random images and a small ResNet-style model; a progress line
after every step tells where the job is.

    python benchmarks/stopping.py                  # ~2 min on 2 cores
    python benchmarks/stopping.py --train 256 --size 8 --points 0.5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from memory import prepared

PROGRESS = re.compile(r" epoch 2/2 step (\d+)/(\d+)")
RESUMED = re.compile(r"resuming (?:at epoch 2, step (\d+)|after epoch 1)")
JOB_SECONDS = 600  # a runaway job's bound: each run here takes seconds


def train_cmd(root: Path, data: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "ladder", "train", "--experiment", "x",
            "--settings", str(root / "train.json"), "--data", str(data),
            "--stats", str(root / "stats.json"), "--out", str(root / out / "run"),
            "--resume-dir", str(root / out / "resume"), "--device", "cpu", "--threads", "1",
            "--progress-seconds", "0"]  # fmt: skip


def stop_at(cmd: list[str], signum: int, fraction: float) -> dict:
    """Train, send `signum` once the second epoch is `fraction` done; time the exit."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    steps = last = 0
    step_times = []
    for line in proc.stderr:
        if found := PROGRESS.search(line):
            last, steps = int(found[1]), int(found[2])
            step_times.append(time.perf_counter())
            if last >= fraction * steps:
                break
    else:
        raise SystemExit(f"training ended before {fraction:.0%} of epoch 2: {proc.wait()}")
    signalled = time.perf_counter()
    os.kill(proc.pid, signum)
    saved = None
    for line in proc.stderr:  # steps it finished before it stopped
        if found := PROGRESS.search(line):
            last = int(found[1])
        elif "stopped by" in line:  # its place is saved; what follows is the process's exit
            saved = time.perf_counter() - signalled
    proc.wait(timeout=JOB_SECONDS)
    exited = time.perf_counter()
    recent = step_times[-20:]
    step_seconds = (recent[-1] - recent[0]) / max(1, len(recent) - 1)
    return {"signal": signal.Signals(signum).name, "at": f"{last}/{steps}",
            "exit_status": proc.returncode, "saved_seconds": saved,
            "exit_seconds": exited - signalled,
            "last_step": last, "step_seconds": step_seconds}  # fmt: skip


def resumes_at(cmd: list[str]) -> int:
    """The step of epoch 2 the rerun starts from (0: the epoch's start)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if found := RESUMED.search(line):
                return int(found[1] or 0)
        raise SystemExit(f"the rerun never said where it resumes ({proc.wait()})")
    finally:
        proc.kill()
        proc.wait(timeout=JOB_SECONDS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=8192)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--points", type=float, nargs="+", default=[0.25, 0.5, 0.9],
                   help="where in epoch 2 to send the signal, as fractions of it")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    from ladder import config, io

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = prepared(root, args.train, max(16, args.train // 8), args.size)
        settings = {
            "model": {"name": "mynet", "blocks": 2, "width": 16, "dropout": 0.0},
            "augment": {"hflip": 0.5},
            "epochs": 2,
            "batch_size": args.batch,
        }
        exp = config.Params.from_dict({"experiments": {"x": settings}}).experiments["x"]
        io.write_record(root / "train.json", exp.train)
        for n, (signum, fraction) in enumerate(
            (s, f) for s in (signal.SIGTERM, signal.SIGKILL) for f in args.points
        ):
            cmd = train_cmd(root, data, f"run{n}")
            row = stop_at(cmd, signum, fraction)
            row["lost_steps"] = max(0, row["last_step"] - resumes_at(cmd))
            row["lost_seconds"] = row["lost_steps"] * row["step_seconds"]
            rows.append(row)
    print(f"{args.train:,} images of {args.size}px, batch {args.batch}: "
          f"{rows[0]['at'].split('/')[1]} steps an epoch")  # fmt: skip
    print(f"{'signal':8s} {'at step':>9s} {'exit status':>11s} {'saved s':>7s} {'exit s':>7s} "
          f"{'lost steps':>10s} {'lost s':>7s}")  # fmt: skip
    for r in rows:
        saved = "-" if r["saved_seconds"] is None else f"{r['saved_seconds']:.2f}"
        print(f"{r['signal']:8s} {r['at']:>9s} {r['exit_status']:>11d} {saved:>7s} "
              f"{r['exit_seconds']:7.2f} {r['lost_steps']:>10d} "
              f"{r['lost_seconds']:7.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
