"""The workflow on SLURM: Snakemake's SLURM executor plugin submits the tiny DAG's jobs, with
profiles/slurm, to a real one-node cluster that the test starts on this machine."""

from __future__ import annotations

import copy
import getpass
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from conftest import Deadline, Project, finish, tiny_params
from ladder import stages

CONF_TEMPLATE = Path(__file__).resolve().parent / "slurm" / "slurm.conf"
SETUP = "run `make system-deps` as root (it installs Debian's slurm-wlm and munge)"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sinfo", "squeue", "scancel", "sbatch", "srun")

# SLURM jobs of the tiny DAG with one epoch per experiment (settings are written on load).
EXPECTED_JOBS = {"download": 1, "prepare": 1, "stats": 1, "train": 2, "evaluate": 2, "report": 1}

# profiles/slurm, with what this cluster lacks overridden. The target comes first: each of these
# options takes every word after it.
SLURM_ARGS = shlex.split(
    """
    --profile profiles/slurm --jobs 4
    # No GPU here, and maybe less memory than the profile asks for.
    --set-resources train:gpu=0 evaluate:gpu=0
    --default-resources mem_mb=1000 runtime=10
    # No accounting database: sacct knows no job; squeue knows it until MinJobAge (300 s) after.
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2
    # SLURM's logs of successful jobs are deleted by default; the test reads them.
    --slurm-keep-successful-logs
    """,
    comments=True,
)


def program(name: str) -> str | None:
    # The daemons are in sbin, which may be missing from PATH.
    return shutil.which(name, path=os.pathsep.join([os.environ["PATH"], "/usr/sbin", "/sbin"]))


def require_root_and_slurm() -> None:
    missing = [name for name in PROGRAMS if program(name) is None]
    if missing:
        problem = f"SLURM programs not found ({', '.join(missing)}): {SETUP}"
    elif os.geteuid() != 0:
        problem = "the SLURM test cluster's daemons must run as root"
    else:
        return
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def wait_for(condition: Callable[[], bool], what: str, expected: float = 6) -> None:
    deadline = Deadline(what, expected)
    while not condition():
        deadline.check()
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited, unreaped


def run(*cmd: str) -> subprocess.CompletedProcess:
    bound = Deadline(" ".join(cmd), expected=6)
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=bound.seconds, check=False
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(bound.message()) from None


class Cluster:
    """munged, slurmctld and slurmd, run as root, with every file they write under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.bin = root / "bin"
        self.pids: list[int] = []  # of the daemons started, in order

    def start(self) -> None:
        self._configure()
        munge = self.root / "munge"
        # --force: munged wants its socket's folder open to every user; pytest's is private.
        self._daemon(
            munge / "munged.pid",
            "munged",
            "--force",
            f"--key-file={munge / 'munge.key'}",
            f"--socket={munge / 'socket'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'seed'}",
        )
        self._daemon(self.root / "slurmctld.pid", "slurmctld", "-f", str(self.conf))
        self._daemon(self.root / "slurmd.pid", "slurmd", "-f", str(self.conf))
        wait_for(lambda: self.node_state() == "idle", f"an idle node (logs: {self.root})")

    def stop(self) -> None:
        """Cancels what still runs (after a failure), then stops the daemons, last started first."""
        try:
            if len(self.pids) > 1:
                run("scancel", f"--user={getpass.getuser()}")
                wait_for(lambda: not run("squeue", "--noheader").stdout.strip(), "no jobs")
        finally:
            for pid in reversed(self.pids):
                os.kill(pid, signal.SIGTERM)
            for pid in self.pids:
                wait_for(lambda pid=pid: not alive(pid), f"daemon {pid} to exit")

    def node_state(self) -> str:
        return run("sinfo", "--noheader", "--Node", "--format=%t").stdout.strip()

    def exit_codes(self) -> dict[str, int]:
        """Exit code of every batch job slurmctld saw finish, by SLURM job id."""
        log = (self.root / "slurmctld.log").read_text()
        return {j: int(code) for j, code in re.findall(r"JobId=(\d+) WEXITSTATUS (\d+)", log)}

    def _configure(self) -> None:
        # "NodeName=<host> CPUs=... RealMemory=...": this machine, as slurmd sees it.
        node = run(program("slurmd"), "-C").stdout.splitlines()[0]
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(
            CONF_TEMPLATE.read_text().format(
                dir=self.root,
                host=node.split()[0].removeprefix("NodeName="),
                node=node,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
            )
        )
        (self.root / "plugstack.conf").touch()
        for folder in ("state", "spool", "munge", "bin"):
            (self.root / folder).mkdir()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # Each job runs its rule under srun with every SLURM_* variable removed, SLURM_CONF too
        # (slurm-jobstep plugin 0.6.1): a real cluster's srun finds slurm.conf in /etc/slurm or
        # asks slurmctld (configless); this one's is here.
        srun = self.bin / "srun"
        srun.write_text(
            f'#!/bin/sh\nSLURM_CONF={shlex.quote(str(self.conf))} exec {program("srun")} "$@"\n'
        )
        srun.chmod(0o755)

    def _daemon(self, pid_file: Path, name: str, *args: str) -> None:
        """Starts a daemon that forks into the background and writes its pid to `pid_file`."""
        proc = run(program(name), *args)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} did not start: {proc.stderr} (logs: {self.root})")
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", str(pid_file))
        self.pids.append(int(pid_file.read_text()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_root_and_slurm()
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    with pytest.MonkeyPatch.context() as env:
        # For the SLURM commands of the test, of Snakemake and of the jobs (sbatch exports the
        # submitting environment).
        env.setenv("SLURM_CONF", str(cluster.conf))
        env.setenv("PATH", f"{cluster.bin}{os.pathsep}{os.environ['PATH']}")
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def slurm_logs(project: Project) -> dict[Path, str]:
    """The executor's log of each SLURM job, .snakemake/slurm_logs/rule_<rule>/.../<job id>.log,
    with the job's rule."""
    root = project.path(".snakemake/slurm_logs")
    return {
        log: log.relative_to(root).parts[0].removeprefix("rule_") for log in root.rglob("*.log")
    }


def planned_gpus(dry_run: str) -> dict[str, set[int]]:
    """The GPUs each remote job of a dry run would ask for, by rule."""
    gpus = defaultdict(set)
    job = r"^rule (\w+):\n(?:    (?!resources:).*\n)*    resources: (.*)$"
    for rule, resources in re.findall(job, dry_run, flags=re.M):
        count = re.search(r"\bgpu=(\d+)", resources)
        gpus[rule].add(int(count[1]) if count else 0)
    return dict(gpus)


def test_the_slurm_profile_asks_for_gpus_for_training_and_evaluation_only(project):
    proc = project.snakemake("report", "-n", "--profile", "profiles/slurm")
    assert planned_gpus(proc.stdout + proc.stderr) == {
        "download": {0},
        "prepare": {0},
        "stats": {0},
        "train": {1},
        "evaluate": {1},
        "report": {0},
    }


@pytest.mark.slow
def test_the_dag_runs_as_slurm_jobs(cluster, tmp_path):
    params = copy.deepcopy(tiny_params())
    params["experiments"]["small"]["epochs"] = 1  # small_shift inherits it
    project = Project(tmp_path / "p", params)
    project.snakemake("report", *SLURM_ARGS)

    assert project.path("results/report/index.html").is_file()
    logs = slurm_logs(project)
    assert Counter(logs.values()) == EXPECTED_JOBS
    for log, rule in logs.items():
        assert f"rule {rule}:" in log.read_text(), log
    # slurmctld ran every one of those jobs, and each succeeded.
    exit_codes = cluster.exit_codes()
    assert {log.stem: exit_codes.get(log.stem) for log in logs} == {log.stem: 0 for log in logs}


# ----------------------------------------------------------------------------------------------
# Stopped by SLURM: a time limit, scancel, a requeue


def slurm_args(*resources: str) -> list[str]:
    """SLURM_ARGS with more `--set-resources` entries (a second --set-resources would replace
    the first's)."""
    args = list(SLURM_ARGS)
    at = args.index("--set-resources") + 1
    return [*args[:at], *resources, *args[at:]]


def last(pattern: str, text: str) -> re.Match:
    found = list(re.finditer(pattern, text))
    assert found, f"no {pattern!r} in:\n{text[-4000:]}"
    return found[-1]


def running_job(what: str) -> str:
    """The id of the one SLURM job running now."""
    ids: list[str] = []

    def one_running() -> bool:
        ids[:] = run("squeue", "--noheader", "--states=R", "--format=%i").stdout.split()
        return len(ids) == 1

    wait_for(one_running, what, expected=10)
    return ids[0]


@pytest.mark.slow
def test_a_training_job_stopped_by_slurm_resumes_mid_epoch(cluster, tmp_path):
    params = tiny_params()
    # One experiment that trains far longer than the test runs.
    params["experiments"] = {
        "small": {**params["experiments"]["small"], "epochs": 500, "batch_size": 4}
    }
    project = Project(tmp_path / "p", params)
    project.snakemake(stages.STATS)  # the data stages here; training goes to SLURM
    target = "results/experiments/small/config.json"
    log = project.path("logs/train/small.log")  # the job's own log, as the rule writes it
    stopped = r"small: stopped by SIGTERM at epoch (\d+), step (\d+) of (\d+); resumes there"

    # 1. SLURM's time limit, near: the profile's --signal has SLURM send SIGTERM two minutes
    # early (its own resolution adds up to one), so training stops and saves its place before
    # SLURM's time limit would (TERM, then KILL after KillWait) end the job. (The test's
    # --set-resources replaces the profile's: its slurm_extra is passed on from the profile.)
    profile = yaml.safe_load(project.path("profiles/slurm/config.yaml").read_text())
    early_signal = f"train:slurm_extra={profile['set-resources']['train']['slurm_extra']}"
    output = (tmp_path / "first.log").open("w")
    first_run = subprocess.Popen(
        ["snakemake", "--cores", "2", target, *slurm_args(early_signal)],
        cwd=project.root, env=project.env(), stdout=output, stderr=subprocess.STDOUT,
    )  # fmt: skip
    job, started = running_job("the training job"), time.monotonic()
    wait_for(lambda: log.exists() and " epoch 1/" in log.read_text(), "training to run", 20)
    # Once training runs, the job's limit becomes 90-150 s from now (SLURM's limits are whole
    # minutes): the signal is due at once, and slurmctld sends it at its next time-limit check
    # (every 30 s), rather than a minute or more into a job submitted with a short limit. (The
    # job started at most a poll, 0.2 s, before `started`.)
    minutes = math.ceil((time.monotonic() - started + 1 + 90) / 60)
    assert run("scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}").returncode == 0
    assert finish(first_run, "Snakemake, its job stopped by SLURM", expected=60) != 0
    output.close()
    text = log.read_text()
    assert "received SIGTERM: stopping at the next safe point" in text
    first = last(stopped, text)
    at = (int(first[1]), int(first[2]))
    slurm_text = "".join(p.read_text() for p in slurm_logs(project))
    assert "DUE TO TIME LIMIT" not in slurm_text, slurm_text

    # 2. The rerun resumes where that stop left it.
    output = (tmp_path / "rerun.log").open("w")
    rerun = subprocess.Popen(
        ["snakemake", "--cores", "2", target, *slurm_args(early_signal)],
        cwd=project.root, env=project.env(), stdout=output, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def resumed_by(not_pid: int | None = None) -> tuple[int, tuple[int, int]] | None:
        """(pid, (epoch, step) it resumed at) of the last `ladder train` session in the log, once
        it has resumed; None before, or when that session's pid is `not_pid`."""
        sessions = []
        for line in (log.read_text() if log.exists() else "").splitlines():
            if found := re.search(r"==== ladder .* \(pid (\d+) on ", line):
                sessions.append((int(found[1]), None))
            elif found := re.search(r"small: resuming at epoch (\d+), step (\d+) from", line):
                sessions[-1] = (sessions[-1][0], (int(found[1]), int(found[2])))
            elif found := re.search(r"small: resuming after epoch (\d+) from", line):
                sessions[-1] = (sessions[-1][0], (int(found[1]) + 1, 0))
        if not sessions or sessions[-1][1] is None or sessions[-1][0] == not_pid:
            return None
        return sessions[-1]

    wait_for(lambda: resumed_by() is not None, "the rerun to resume", 20)
    pid, where = resumed_by()
    assert where == at
    job = running_job("the rerun's SLURM job")

    # 3. Requeued (as after a preemption or a lost node), the job is stopped (SIGTERM), runs
    # again and resumes where it stopped. (SLURM holds a requeued job back for a while before
    # it is eligible again; the test makes it eligible at once.)
    assert run("scontrol", "requeue", job).returncode == 0
    wait_for(lambda: "PENDING" in run("squeue", "-h", "-j", job, "-o", "%T").stdout,
             "the requeued job to be pending", 5)  # fmt: skip
    run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for(lambda: resumed_by(not_pid=pid) is not None, "the requeued job to resume", 20)
    # The resumed session's log repeats the earlier ones, the requeued one's stop last.
    requeued = last(stopped, log.read_text())
    assert resumed_by(not_pid=pid)[1] == (int(requeued[1]), int(requeued[2])) > at

    # 4. scancel --signal=TERM reaches `ladder train` (scancel signals the job steps, not the
    # batch shell's Snakemake), which stops as at the time limit.
    run("scancel", "--signal=TERM", running_job("the requeued job"))
    assert finish(rerun, "Snakemake after scancel --signal=TERM", expected=30) != 0
    output.close()
    second = last(stopped, log.read_text())
    assert (int(second[1]), int(second[2])) > at, "the rerun did not go on from the first stop"
