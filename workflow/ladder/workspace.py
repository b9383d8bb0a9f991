"""Who works in this workspace: one engine at a time, one writer of the settings, and one writer
per experiment.

Snakemake and DVC share results/. Run together, each would decide from a half-written view of
the other's work and rewrite (or, without `persist`, delete) outputs the other is reading. So:
- a running `dvc repro`/`dvc exp run` holds DVC's own repository lock (.dvc/tmp/lock, an flock):
  Snakemake refuses to load while it is held;
- the Snakemake process that runs jobs holds an exclusive flock on .snakemake/ladder-engine.lock
  from the moment it loads the workflow, before it writes anything (ladder.snakefile): a second
  run is refused before it has changed anything, and a stage command that DVC starts (DVC sets
  DVC_STAGE) refuses to run. Dry runs and other views hold nothing and write nothing here.
- while it runs jobs it also holds DVC's repository lock, so `dvc repro`, `dvc exp run`,
  `dvc exp apply`, `dvc checkout` (any DVC command that takes the lock) stop with DVC's "Unable to
  acquire lock" instead of rewriting params.yaml or results under it; .dvc/tmp/lock then names
  the Snakemake process.
- a training run holds an exclusive flock on results/resume/<exp>.lock while it runs: a second
  run of the same experiment (another engine, another invocation, a SLURM job) stops with a
  message naming the process, instead of racing it for the resume state.

flocks are released by the kernel when their process ends, however it ends: a killed run never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

DVC_LOCK = Path(".dvc/tmp/lock")
SNAKEMAKE_LOCK = Path(".snakemake/ladder-engine.lock")

_held: list = []  # open lock files this process keeps for its lifetime


class WorkspaceBusy(RuntimeError):
    """Another engine or process is working on what this one was asked to do."""


def _holder(path: Path) -> str:
    """Who holds the lock at `path`, from what its holder wrote into it."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    with contextlib.suppress(ValueError):
        info = json.loads(text)
        if isinstance(info, dict):  # ours; DVC's lock holds its bare pid
            return f"process {info['pid']} on {info['host']}, started {info['since']}"
    pid = re.search(r"\d+", text)
    return f"process {pid.group()}" if pid else "another process"


def is_locked(path: Path) -> bool:
    """Whether some process holds an flock on `path` (checked without keeping one)."""
    if not path.exists():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _stamp() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )


def _dvc_processes(root: Path) -> list[int]:
    """Live `dvc` processes working in `root` (Linux: /proc). DVC holds its repository lock
    only during parts of a run (`dvc exp run` lets go of it between steps), so its processes
    are looked for too."""
    root = root.resolve()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = (proc / "cwd").resolve()
        except OSError:  # gone, or not ours to read
            continue
        names = [Path(a.decode(errors="replace")).name for a in argv[:2]]
        if "dvc" in names and cwd == root and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def _held_by_snakemake(lock: Path) -> bool:
    """Whether DVC's lock at `lock` is held by a Snakemake run (hold_dvc), not by DVC."""
    with contextlib.suppress(OSError, ValueError):
        stamp = json.loads(lock.read_text())
        return isinstance(stamp, dict) and stamp.get("engine") == "snakemake"
    return False


def refuse_if_dvc_running(root: str | Path = ".") -> None:
    """Snakemake, on load: stop if a DVC command is at work in this workspace (a Snakemake run
    holding DVC's lock for itself is not DVC: hold_workspace decides about it)."""
    root = Path(root)
    lock = root / DVC_LOCK
    holder = None
    if is_locked(lock) and not _held_by_snakemake(lock):
        holder = f"{_holder(lock)} holds {lock}"
    elif pids := _dvc_processes(root):
        holder = f"process {pids[0]} is `dvc`"
    if holder:
        raise WorkspaceBusy(
            f"DVC is running in this workspace ({holder}): let it finish, then run Snakemake; "
            "two engines at once would overwrite each other's results"
        )


def _try_lock(path: Path):
    """An open file of `path` holding an exclusive flock, or None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _keep(f, stamp: str) -> None:
    """Write this process's stamp into a lock it holds, and hold it for the process's life."""
    f.seek(0)
    f.truncate()
    f.write(stamp)
    f.flush()
    _held.append(f)


def hold_workspace(root: str | Path = ".") -> None:
    """The Snakemake run that will execute jobs: hold the workspace for this process's life, or
    stop (having changed nothing) when another run holds it."""
    path = Path(root) / SNAKEMAKE_LOCK
    if any(Path(f.name).resolve() == path.resolve() for f in _held):
        return
    f = _try_lock(path)
    if f is None:
        raise WorkspaceBusy(
            f"Snakemake is already running in this workspace ({_holder(path)} holds {path}): "
            "wait for it to finish, or stop it; `snakemake -n` shows what a run would do "
            "meanwhile. Nothing was changed"
        )
    _keep(f, _stamp())


def free(root: str | Path = ".") -> bool:
    """Whether no Snakemake run holds the workspace (this process's own hold counts as free)."""
    path = Path(root) / SNAKEMAKE_LOCK
    return any(Path(f.name).resolve() == path.resolve() for f in _held) or not is_locked(path)


def hold_dvc(root: str | Path = ".") -> None:
    """While this Snakemake run works, hold DVC's repository lock too, so that no DVC command
    rewrites params.yaml or results/ under it (see the module doc)."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return
    f = _try_lock(root / DVC_LOCK)
    if f is None:
        refuse_if_dvc_running(root)  # names the DVC process
        raise WorkspaceBusy(f"DVC is running in this workspace ({root / DVC_LOCK} is held)")
    _keep(f, json.dumps({**json.loads(_stamp()), "engine": "snakemake"}))


def refuse_if_snakemake_running(root: str | Path = ".") -> None:
    """A stage command that DVC started: stop if Snakemake is executing in this workspace."""
    lock = Path(root) / SNAKEMAKE_LOCK
    if is_locked(lock):
        raise WorkspaceBusy(
            f"Snakemake is running in this workspace ({_holder(lock)} holds {lock}): let it "
            "finish, then run `dvc repro` again; nothing was changed"
        )


def check_engine() -> None:
    """Called by every stage command: under DVC, make sure Snakemake is not at work."""
    if os.environ.get("DVC_STAGE"):
        refuse_if_snakemake_running(os.environ.get("DVC_ROOT", "."))


@contextlib.contextmanager
def experiment_lock(resume_root: str | Path, name: str) -> Iterator[Path]:
    """Hold results/resume/<name>.lock while training `name`; refuse if someone else holds it."""
    path = Path(resume_root) / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(
                f"experiment {name} is being trained by {_holder(path)} (lock {path}): wait "
                "for it to finish, or stop it; this run changed nothing"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(_stamp())
        f.flush()
        try:
            yield path
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
