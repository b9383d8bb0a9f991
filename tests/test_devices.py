"""GPU leases: jobs sharing a machine's GPUs each get their own slot, tested with fake GPUs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, Deadline, finish
from ladder import devices

JOB = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from ladder import devices
    gpus, per_gpu, hold = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[5])
    lease_dir, record = Path(sys.argv[3]), Path(sys.argv[4])
    if sys.argv[6:] == ["nowait"]:  # a free slot now, or exit 3
        held = devices._try_lease(gpus, per_gpu, lease_dir)
        if held is None:
            sys.exit(3)
        record.write_text(json.dumps({"gpu": held[0], "start": time.time()}))
        sys.exit(0)
    with devices.lease(gpus, per_gpu, lease_dir, poll_seconds=0.02) as gpu:
        start = time.time()
        record.write_text(json.dumps({"gpu": gpu, "start": start}))
        time.sleep(hold)
        record.write_text(json.dumps({"gpu": gpu, "start": start, "end": time.time()}))
    """
)


def job(
    gpus: str, per_gpu: int, lease_dir: Path, record: Path, hold: float, *flags: str
) -> subprocess.Popen:
    args = [gpus, str(per_gpu), str(lease_dir), str(record), str(hold), *flags]
    return subprocess.Popen([sys.executable, "-c", JOB, *args])


def test_jobs_never_exceed_their_slots_per_gpu(tmp_path):
    records = [tmp_path / f"job{i}.json" for i in range(10)]
    procs = [job("0,1", 2, tmp_path / "leases", r, hold=0.4) for r in records]
    for p in procs:
        assert finish(p, "ten jobs through two GPUs' slots", expected=5) == 0
    spans = [json.loads(r.read_text()) for r in records]
    assert {s["gpu"] for s in spans} == {"0", "1"}
    for gpu in ("0", "1"):
        mine = [s for s in spans if s["gpu"] == gpu]
        # at every start, count the jobs of this GPU running at that moment
        busiest = max(sum(o["start"] <= s["start"] < o["end"] for o in mine) for s in mine)
        assert busiest <= 2, f"GPU {gpu} had {busiest} jobs at once"
    assert max(s["end"] for s in spans) - min(s["start"] for s in spans) >= 0.4 * 10 / 4 * 0.9


def test_a_killed_jobs_slot_is_free_at_once(tmp_path):
    holder = job("0", 1, tmp_path / "leases", tmp_path / "holder.json", hold=60)
    deadline = Deadline("a job taking its slot", expected=3)
    while not (tmp_path / "holder.json").exists():
        deadline.check()
        time.sleep(0.02)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # "nowait": the follower exits 3 unless a slot is free the moment it asks
    follower = job("0", 1, tmp_path / "leases", tmp_path / "follower.json", 0, "nowait")
    assert finish(follower, "a job taking a free slot", expected=3) == 0
    assert json.loads((tmp_path / "follower.json").read_text())["gpu"] == "0"


def test_waiting_job_gets_the_slot_when_it_frees(tmp_path):
    first = job("7", 1, tmp_path / "leases", tmp_path / "a.json", hold=0.5)
    deadline = Deadline("a job taking its slot", expected=3)
    while not (tmp_path / "a.json").exists():
        deadline.check()
        time.sleep(0.02)
    second = job("7", 1, tmp_path / "leases", tmp_path / "b.json", hold=0)
    assert finish(first, "the first job", expected=3) == 0
    assert finish(second, "the job waiting for its slot", expected=3) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert b["start"] >= a["end"]


def test_the_leased_gpu_is_the_only_one_cuda_sees(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["3", "5"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with devices.job_device("auto", 1, tmp_path) as device:
        assert device == "cuda"
        assert os.environ["CUDA_VISIBLE_DEVICES"] in {"3", "5"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    with devices.job_device("cuda:1", 1, tmp_path) as device:  # an explicit choice: no lease
        assert device == "cuda:1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_without_cuda_nothing_is_leased(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_driver_present", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # names, but no driver: no GPUs
    assert devices.visible_gpus() == []
    with devices.job_device("auto", 2, tmp_path / "leases") as device:
        assert device == "auto"
    assert not (tmp_path / "leases").exists()


def test_the_lease_folder_and_its_slots_are_open_to_every_user(tmp_path):
    before = os.umask(0o077)  # the strictest usual umask: mkdir and open would make 0700/0600
    try:
        with devices.lease(["0"], 2, tmp_path / "leases"):
            pass
    finally:
        os.umask(before)
    assert (tmp_path / "leases").stat().st_mode & 0o7777 == 0o1777
    slots = sorted((tmp_path / "leases").iterdir())
    assert [p.name for p in slots] == ["gpu-0.slot-0.lock", "gpu-0.slot-1.lock"]
    assert {p.stat().st_mode & 0o7777 for p in slots} == {0o666}


def test_a_planted_symbolic_link_is_not_followed(tmp_path):
    # In a folder anyone can write to, another user could point a slot at a file of ours.
    (tmp_path / "leases").mkdir()
    target = tmp_path / "precious"
    target.write_text("mine")
    (tmp_path / "leases" / "gpu-0.slot-0.lock").symlink_to(target)
    with (
        pytest.raises(OSError, match="symbolic link, not a file: remove it"),
        devices.lease(["0"], 1, tmp_path / "leases"),
    ):
        pass
    assert target.read_text() == "mine"


# ----------------------------------------------------------------------------------------------
# Two Unix users' jobs on one machine share its leases (as root: the test makes two users)

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
USER_TOOLS = ("useradd", "userdel", "groupdel", "setpriv")
# The JOB script, telling in its output when it waits for a slot
LOGGED_JOB = "import logging\nlogging.basicConfig(level=logging.INFO)\n" + JOB


def require_root_and_user_tools() -> None:
    missing = [name for name in USER_TOOLS if shutil.which(name, path=SBIN) is None]
    if missing:
        problem = (
            f"{', '.join(missing)} not found (Debian: apt-get install passwd util-linux): the "
            "two-user lease tests need them"
        )
    elif os.geteuid() != 0:
        problem = "the two-user lease tests must run as root (they create two test users)"
    else:
        return
    unavailable(problem)


def unavailable(problem: str) -> None:
    """Skip, but fail in CI, where these tests must run."""
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


def bounded_run(cmd: list[str], what: str, expected: float = 3, **kwargs):
    bound = Deadline(what, expected)
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=bound.seconds, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(bound.message()) from None


@dataclasses.dataclass
class User:
    name: str
    uid: int
    gid: int

    def command(self, *cmd: str) -> list[str]:
        setpriv = shutil.which("setpriv", path=SBIN)
        ids = [f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        return [setpriv, *ids, "--", *cmd]


@dataclasses.dataclass
class Machine:
    """Two users, A and B, and a Python with the ladder package that both can run; `root` is a
    folder under /tmp of mode 1777 (pytest's tmp_path is root's alone)."""

    a: User
    b: User
    python: str
    env: dict[str, str]
    root: Path

    def job(
        self,
        user: User,
        gpus: str,
        per_gpu: int,
        lease_dir: Path,
        record: Path,
        hold: float,
        *flags: str,
        umask: int = 0o022,
    ) -> subprocess.Popen:
        """JOB, run as `user`; its output goes to `record` with the suffix .log."""
        args = [gpus, str(per_gpu), str(lease_dir), str(record), str(hold), *flags]
        with record.with_suffix(".log").open("w") as out:
            return subprocess.Popen(
                user.command(self.python, "-c", LOGGED_JOB, *args),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=self.env,
                umask=umask,
            )


def add_user(name: str) -> User:
    useradd = shutil.which("useradd", path=SBIN)
    proc = bounded_run(
        [useradd, "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        f"useradd {name}",
    )
    assert proc.returncode == 0, f"useradd {name}: {proc.stderr}"
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def remove_user(name: str) -> None:
    bounded_run([shutil.which("userdel", path=SBIN), name], f"userdel {name}")
    # userdel keeps the user's group where login.defs says USERGROUPS_ENAB no
    bounded_run([shutil.which("groupdel", path=SBIN), name], f"groupdel {name}")


def runnable_python(user: User, env: dict[str, str], cwd: Path) -> str | None:
    """This Python version, at a path `user` can run (a virtualenv's may point into /root)."""
    candidates = [
        sys.executable,
        str(Path(sys.executable).resolve()),
        shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path=SBIN),
        "/usr/bin/python3",
    ]
    same_version = f"import sys; sys.exit(sys.version_info[:2] != {sys.version_info[:2]})"
    for python in dict.fromkeys(c for c in candidates if c):
        proc = bounded_run(user.command(python, "-c", same_version), python, env=env, cwd=cwd)
        if proc.returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    require_root_and_user_tools()
    root = Path(tempfile.mkdtemp(prefix="ladder-leases-", dir="/tmp"))
    root.chmod(0o1777)
    users: list[User] = []
    try:
        for x in "ab":  # a unique name: never a user this machine had before
            users.append(add_user(f"ladder-t{secrets.token_hex(3)}{x}"))
        a, b = users
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        python = runnable_python(b, env, root)
        if python is None:
            unavailable(
                f"no Python {sys.version_info[0]}.{sys.version_info[1]} other users can run"
            )
        env["PYTHONPATH"] = str(REPO / "workflow")
        # this checkout's package, not one a virtualenv's site-packages would find instead
        probe = "import sys, ladder.devices as d; sys.exit(not d.__file__.startswith(sys.argv[1]))"

        def imports_ours() -> subprocess.CompletedProcess:
            cmd = b.command(python, "-c", probe, env["PYTHONPATH"])
            return bounded_run(cmd, "import ladder", env=env, cwd=root)

        if imports_ours().returncode:
            # the checkout is not readable by other users: they run a copy of the package
            shutil.copytree(
                REPO / "workflow" / "ladder",
                root / "pkg" / "ladder",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            for folder in (root / "pkg", *(p for p in (root / "pkg").rglob("*") if p.is_dir())):
                folder.chmod(0o755)
            for file in (p for p in (root / "pkg").rglob("*") if p.is_file()):
                file.chmod(0o644)
            env["PYTHONPATH"] = str(root / "pkg")
            proc = imports_ours()
            assert proc.returncode == 0, f"user B cannot import the copied package: {proc.stderr}"
        yield Machine(a, b, python, env, root)
    finally:
        for user in users:
            remove_user(user.name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def shared(machine) -> Iterator[Path]:
    """A folder of this test that both users can write to."""
    folder = Path(tempfile.mkdtemp(dir=machine.root))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def killed_at_the_end(procs: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Every job still running is killed when the test ends (userdel refuses a user's
    removal while the user has processes)."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def output(record: Path) -> str:
    log = record.with_suffix(".log")
    return log.read_text() if log.exists() else ""


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen, record: Path):
    deadline = Deadline(what, expected=3)
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the job ended ({proc.returncode}):\n{output(record)}")
        deadline.check()
        time.sleep(0.02)


def test_two_users_jobs_share_the_slots(machine, shared):
    leases = shared / "leases"
    with killed_at_the_end([]) as procs:
        # user A's two jobs take both slots of GPU 0
        for i in range(2):
            record = shared / f"a{i}.json"
            procs.append(machine.job(machine.a, "0", 2, leases, record, hold=600))
            wait_until(record.exists, "user A's job taking a slot", procs[-1], record)
        # B's job sees them taken: "nowait" exits 3 (not 1, a PermissionError)
        asked = shared / "b-nowait.json"
        nowait = machine.job(machine.b, "0", 2, leases, asked, 0, "nowait")
        procs.append(nowait)
        assert finish(nowait, "user B's job asking for a slot", expected=3) == 3, output(asked)
        # and waits for one
        record = shared / "b.json"
        waiting = machine.job(machine.b, "0", 2, leases, record, hold=0)
        procs.append(waiting)
        wait_until(
            lambda: "waiting for one" in output(record), "user B's job waiting", waiting, record
        )
        assert not record.exists()
        # A's job ends (killed: however it ends), and B's job gets its slot
        killed = time.time()
        procs[0].kill()
        assert finish(waiting, "user B's job taking the freed slot", expected=3) == 0, output(
            record
        )
        got = json.loads(record.read_text())
        assert got["gpu"] == "0"
        assert got["start"] >= killed


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_a_lease_folder_another_user_made_serves_every_user(machine, shared, umask):
    leases = shared / "leases"
    with killed_at_the_end([]) as procs:
        procs.append(machine.job(machine.a, "0,1", 1, leases, shared / "a.json", 0, umask=umask))
        assert finish(procs[-1], "user A's job", expected=3) == 0, output(shared / "a.json")
        procs.append(machine.job(machine.b, "0,1", 1, leases, shared / "b.json", 0, umask=umask))
        assert finish(procs[-1], "user B's job", expected=3) == 0, output(shared / "b.json")
        assert json.loads((shared / "b.json").read_text())["gpu"] in {"0", "1"}
    # what lets every later user in too: the folder and both slots are A's, open to all
    assert leases.stat().st_uid == machine.a.uid
    assert leases.stat().st_mode & 0o7777 == 0o1777
    slots = list(leases.iterdir())
    assert len(slots) == 2
    assert {(p.stat().st_uid, p.stat().st_mode & 0o7777) for p in slots} == {(machine.a.uid, 0o666)}


def test_a_slot_file_this_user_may_not_write_to_still_locks(machine, shared):
    leases = shared / "leases"
    with killed_at_the_end([]) as procs:
        holder = shared / "a.json"
        procs.append(machine.job(machine.a, "0", 1, leases, holder, hold=600))
        wait_until(holder.exists, "user A's job taking the slot", procs[-1], holder)
        # as a job of another user, or an older version of this code, leaves a slot file
        (leases / "gpu-0.slot-0.lock").chmod(0o644)
        asked = shared / "b1.json"
        procs.append(machine.job(machine.b, "0", 1, leases, asked, 0, "nowait"))
        assert finish(procs[-1], "user B's job asking for the slot", expected=3) == 3, output(asked)
        procs[0].kill()  # the kernel drops A's flock when A's job ends
        procs[0].wait()
        asked = shared / "b2.json"
        procs.append(machine.job(machine.b, "0", 1, leases, asked, 0, "nowait"))
        assert finish(procs[-1], "user B's job taking the free slot", expected=3) == 0, output(
            asked
        )


def test_a_lease_folder_this_user_cannot_use_says_what_to_do(machine, shared):
    leases = shared / "leases"
    leases.mkdir()
    os.chown(leases, machine.a.uid, machine.a.gid)
    leases.chmod(0o755)  # as mkdir makes it, under A's umask
    record = shared / "b.json"
    with killed_at_the_end([machine.job(machine.b, "0", 1, leases, record, 0)]) as procs:
        assert finish(procs[0], "user B's job", expected=3) == 1
    said = output(record)
    assert f"PermissionError: GPU lease folder {leases} (owner {machine.a.name}, mode 755)" in said
    assert f"chmod 1777 {leases}" in said
    assert "LADDER_LEASE_DIR" in said
    assert not record.exists()
