"""Which accelerator a job uses, and GPU leases for jobs that share a machine's GPUs.

Snakemake's `gpu` resource only counts: `--resources gpu=8` lets eight jobs run at once but never
tells a job which GPU is its own. A job therefore takes a lease when it starts: one of
`jobs_per_gpu` slots of one GPU, held as an flock on a file in a folder all jobs on the machine
share, and it runs with CUDA_VISIBLE_DEVICES set to that GPU. The kernel drops an flock when its
process ends, however it ends, so a killed job never keeps its slot.

The folder is shared by every user's jobs, or two users' jobs would share a GPU unknowingly: it is
created world-writable with the sticky bit (mode 1777, like /tmp), its slot files open to all
(mode 0666), and a slot is opened read-only (flock needs no write access), so that a slot file
another user created still locks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Shared by every job on the machine, whichever workflow and user it belongs to.
DEFAULT_LEASE_DIR = Path(
    os.environ.get("LADDER_LEASE_DIR", Path(tempfile.gettempdir()) / "ladder-gpu-leases")
)


# CPU threads of a training or evaluation job. On the CPU the weights depend on it (torch sums in
# parallel, in another order with another count), so it is one setting that both engines read,
# not each engine's share of the cores: the same params give the same bytes under Snakemake and
# DVC, whatever --cores says. It changes nothing an experiment means, so it is not in params.yaml.
THREADS_ENV = "LADDER_THREADS"
DEFAULT_THREADS = 1  # small models on small images use more threads poorly; jobs run side by side


def threads() -> int:
    """LADDER_THREADS, or the default."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return DEFAULT_THREADS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{THREADS_ENV}={text!r}: not a whole number of threads >= 1")
    return int(text)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs);
    found without importing torch, which is slow to load and must not touch CUDA before a
    lease has set CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = [v.strip() for v in visible.split(",") if v.strip()]
        return [] if names in ([], ["-1"]) or not _driver_present() else names
    if not _driver_present():
        return []
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout
        count = sum(line.startswith("GPU ") for line in out.splitlines())
    else:
        count = len(list(Path("/proc/driver/nvidia/gpus").glob("*")))
    return [str(i) for i in range(count)]


def _driver_present() -> bool:
    return Path("/dev/nvidia0").exists() or any(Path("/proc/driver/nvidia/gpus").glob("*"))


def cuda_present() -> bool:
    """Whether this host shows an NVIDIA GPU to its jobs."""
    return bool(visible_gpus())


def resolve(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; anything else is checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA was asked for but torch sees no GPU")
    torch.device(device)  # raises on a malformed name
    return device


@contextlib.contextmanager
def lease(
    gpus: list[str],
    jobs_per_gpu: int,
    lease_dir: Path = DEFAULT_LEASE_DIR,
    poll_seconds: float = 2.0,
) -> Iterator[str | None]:
    """Hold one of `jobs_per_gpu` slots of one of `gpus` while the block runs; yield its GPU
    (None when there are no GPUs). Takes the GPU with the most free slots, so jobs spread out;
    waits when every slot is taken (by jobs of another workflow on the same machine)."""
    if not gpus:
        yield None
        return
    if jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu = {jobs_per_gpu}: must be at least 1")
    _shared_dir(lease_dir)
    waited = False
    while True:
        held = _try_lease(gpus, jobs_per_gpu, lease_dir)
        if held is not None:
            break
        if not waited:
            log.info("every GPU slot is taken (%d per GPU); waiting for one", jobs_per_gpu)
            waited = True
        time.sleep(poll_seconds)
    gpu, handle = held
    try:
        log.info("leased GPU %s (%s)", gpu, handle.name)
        yield gpu
    finally:
        handle.close()  # releases the flock


def _try_lease(gpus: list[str], jobs_per_gpu: int, lease_dir: Path):
    """Lock a free slot on the least busy GPU, or return None if every slot is taken."""
    free: dict[str, list[Path]] = {}
    for gpu in gpus:
        slots = [lease_dir / f"gpu-{_safe(gpu)}.slot-{j}.lock" for j in range(jobs_per_gpu)]
        free[gpu] = [s for s in slots if not _is_locked(s)]
    for gpu in sorted(gpus, key=lambda g: -len(free[g])):
        for slot in free[gpu]:
            handle = open(slot, "rb", opener=_slot_opener)  # noqa: SIM115 (held past return)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # taken since we looked
                handle.close()
                continue
            return gpu, handle
    return None


# How long a lease folder or slot file that this user cannot open may stay so before it is an
# error: another user's job may be between creating it and opening it to all (chmod after create).
SETUP_GRACE_SECONDS = 1.0


def _shared_dir(lease_dir: Path) -> None:
    """Create the lease folder for every user (mode 1777), or check this user can use it."""
    lease_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        lease_dir.mkdir()
    except FileExistsError:  # made before, maybe by another user
        pass
    else:
        lease_dir.chmod(0o1777)  # mkdir's mode is cut by the umask
        return
    if not lease_dir.is_dir():
        raise NotADirectoryError(f"GPU lease folder {lease_dir}: exists and is not a folder")
    give_up = time.monotonic() + SETUP_GRACE_SECONDS
    while not os.access(lease_dir, os.W_OK | os.X_OK):
        if time.monotonic() > give_up:
            raise PermissionError(
                f"GPU lease folder {lease_dir} ({_describe(lease_dir)}) is not writable by this "
                f"user ({_user(os.geteuid())}); every user's jobs must lease GPUs in one folder. "
                f"Its owner can run `chmod 1777 {lease_dir}`, or set LADDER_LEASE_DIR, alike "
                "for all users' jobs, to a folder of mode 1777."
            )
        time.sleep(0.05)


def _open_slot(slot: Path) -> int:
    """A read-only descriptor of `slot` to flock, the file created (mode 0666) if missing.
    Read-only, as flock needs no write access: a slot file another user created locks even
    where this user may not write to it."""
    # O_NOFOLLOW: in a folder anyone can write to, a slot may be a planted symbolic link.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    give_up = time.monotonic() + SETUP_GRACE_SECONDS
    while True:
        try:
            return os.open(slot, flags)
        except FileNotFoundError:
            pass
        except PermissionError:
            if time.monotonic() > give_up:
                raise PermissionError(
                    f"GPU lease slot {slot} ({_describe(slot)}) is not readable by this user "
                    f"({_user(os.geteuid())}). Its owner can run `chmod 666 {slot}`."
                ) from None
            time.sleep(0.05)
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(
                    e.errno, f"GPU lease slot {slot} is a symbolic link, not a file: remove it"
                ) from None
            raise
        # Not O_CREAT alone: opening another user's file with it in a sticky folder fails where
        # fs.protected_regular is set. O_EXCL creates or fails, and never follows a link.
        try:
            fd = os.open(slot, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # another job made it since
            continue
        os.fchmod(fd, 0o666)  # the umask cut the mode: let every user's jobs open it
        return fd


def _slot_opener(path: str, _flags: int) -> int:
    return _open_slot(Path(path))


def _is_locked(slot: Path) -> bool:
    """Whether some process holds an flock on `slot` (checked without keeping one)."""
    fd = _open_slot(slot)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the lock this check took
    return False


def _describe(path: Path) -> str:
    st = path.stat()
    return f"owner {_user(st.st_uid)}, mode {st.st_mode & 0o7777:o}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


@contextlib.contextmanager
def job_device(
    device: str, jobs_per_gpu: int, lease_dir: Path = DEFAULT_LEASE_DIR
) -> Iterator[str]:
    """The device a training or evaluation job runs on. `auto`/`cuda` on a GPU host lease a GPU
    slot and narrow CUDA_VISIBLE_DEVICES to it (before torch initialises CUDA); an explicit
    `cuda:N` or `cpu` is used as given, without a lease."""
    if device not in ("auto", "cuda"):
        yield device
        return
    with lease(visible_gpus(), jobs_per_gpu, lease_dir) as gpu:
        if gpu is None:
            yield device
            return
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            yield "cuda"
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before
