"""Faults found by a fault-injection pass against the integrity promise (README, "What is
checked, and where"): each test injects the fault for real in a workspace built by Snakemake,
then runs what the README says to run, and asserts what the README promises.

A tiny project is built once by Snakemake alone (no `ladder dvc-commit`, so its data folders
are hard-linked with the data store results/cache/data/, as in any Snakemake-only workspace);
each test works on a copy of it (Project.copy), which keeps those hard links (a plain
shutil.copytree would not, and would hide the first fault below).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time

import pytest
from conftest import Deadline, Project, finish, flip_a_byte

pytestmark = pytest.mark.slow

EXPERIMENTS = {
    "root": {
        "model": {"name": "mynet", "blocks": 1, "width": 4},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
        "batch_size": 16,
        "epochs": 1,
        "log_every": 50,
    },
}
PARAMS = {"dataset": {"source": "digits", "image_size": 8}, "experiments": EXPERIMENTS}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("fault_pass") / "built", PARAMS)
    project.snakemake("report", expected=30)
    return project


@pytest.fixture
def project(built, tmp_path) -> Project:
    return Project.copy(built, tmp_path / "p")


def edit(project: Project, change) -> None:
    params = project.params
    change(params)
    project.write_params(params)


def planned(project: Project) -> str:
    return project.snakemake("report", "-n", expected=20).stdout


# ----------------------------------------------------------------------------------------------
# The data store holds the same files: the recovery a message names must still recover


def test_a_prepared_array_damaged_in_place_is_regenerated_by_the_command_its_message_names(
    project,
):
    """README: `<file>: content differs from <folder>.manifest.json ...; regenerate it with ...`
    -> "run the command it names, as written, then the same command again".

    In a Snakemake-only workspace results/data/prepared/train_x.npy is a hard link to its copy
    in results/cache/data/prepare/<key>/prepared/ (ladder.store.keep), so a damage in place
    damages both: the command named reruns `prepare`, whose store must refuse its damaged copy
    (every digest checked before it links a folder back), or the next run would refuse the same
    file again, forever."""
    path = project.path("results/data/prepared/train_x.npy")
    flip_a_byte(path)
    edit(project, lambda p: p["experiments"]["root"].update(seed=3))  # training reads it
    failed = project.snakemake("report", check=False, expected=30)
    assert failed.returncode != 0
    log = project.path("logs/train/root.log").read_text()
    assert "results/data/prepared/train_x.npy: content differs" in log
    command = re.search(r"regenerate it with `(snakemake [^`]+)`", log).group(1)
    assert command == "snakemake results/data/prepared.manifest.json --forcerun prepare --cores 1"
    project.run(*command.split(), expected=20)
    again = project.snakemake("report", check=False, expected=30)
    last = project.path("logs/train/root.log").read_text().rsplit("==== ladder", 1)[-1]
    assert again.returncode == 0, last[-1500:]
    assert "Nothing to be done" in planned(project)


# ----------------------------------------------------------------------------------------------
# A failed data job after a dataset edit: nothing left to do, say both the plan and the status


def _kill_the_prepare_job(project: Project) -> int:
    """Run `snakemake report`; SIGKILL the `prepare` job once it has started (the job dies,
    Snakemake reports it and stops: README's "A job failed"). Snakemake's return code."""
    log = project.path("logs/prepare.log")
    before = set(re.findall(r"\(pid (\d+) on ", log.read_text())) if log.exists() else set()
    run = subprocess.Popen(
        ["snakemake", "--cores", "1", "report"], cwd=project.root, env=project.env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = Deadline("the prepare job", expected=20)
    while True:  # a job's log is written anew each run: wait for a session of another process
        text = log.read_text() if log.exists() else ""
        started = [p for p in re.findall(r"\(pid (\d+) on ", text) if p not in before]
        if started:
            break
        assert run.poll() is None, "the run ended before prepare started"
        deadline.check()
        time.sleep(0.02)
    pid = int(started[-1])
    os.kill(pid, signal.SIGKILL)
    return finish(run, "Snakemake after its job died", expected=20)


def test_a_prepare_that_failed_after_a_dataset_edit_runs_again(project):
    """README: "A job failed, or Snakemake was stopped -> run the same command again: the
    profile reruns what a failed or killed run left unfinished".

    After an edit of dataset.split_seed, Snakemake removes results/data/prepared (and its
    manifest) before it runs `prepare`; when that job fails, Snakemake alone would have "Nothing
    to be done" (it reruns a job for a missing output only when a job after it runs anyway), and
    the report would keep showing split_seed 0's numbers as current. A missing output forces its
    job (ladder.snakefile), and `ladder status` does not call a run trained on missing data
    `done`."""
    edit(project, lambda p: p["dataset"].update(split_seed=7))
    assert _kill_the_prepare_job(project) != 0
    assert not project.path("results/data/prepared.manifest.json").exists()
    plan = planned(project)
    assert re.search(r"^(local)?rule prepare:", plan, re.M), plan[-1500:]
    status = project.run("ladder", "status", expected=10).stdout
    assert not re.search(r"^root\s+done\b", status, re.M), status


# ----------------------------------------------------------------------------------------------
# --touch and a result damaged in place


def test_touch_refuses_a_checkpoint_damaged_in_place(project):
    """README: "`--touch` refuses (before it touches anything) when it would pass off as current
    a result ... that is damaged".

    A checkpoint damaged in place (same size, timestamp kept), then a comment added to train.py
    and the README's `snakemake report --touch`: a plan's cheap checks (names and sizes) cannot
    see it, so --touch, which vouches for every result, checks every digest first, as `ladder
    dvc-commit` does before anything goes into dvc.lock."""
    checkpoint = project.path("results/experiments/root/checkpoints/epoch_001.pt")
    # its own file first: the finished run's resume folder keeps a link to the same bytes
    data = checkpoint.read_bytes()
    st = checkpoint.stat()
    checkpoint.unlink()
    checkpoint.write_bytes(data)
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns))
    flip_a_byte(checkpoint)
    module = project.path("workflow/ladder/train.py")
    module.write_text(module.read_text() + "\n# a comment: results unchanged\n")
    touched = project.snakemake("report", "--touch", check=False, expected=20)
    assert touched.returncode != 0, "--touch passed off a damaged checkpoint as current"
    assert "epoch_001.pt" in touched.stderr
    module.write_text(module.read_text().replace("\n# a comment: results unchanged\n", ""))
    assert "Nothing to be done" in planned(project)  # the damage is past every plan's checks
    committed = project.run("ladder", "dvc-commit", check=False, expected=20)
    assert committed.returncode != 0
    assert "epoch_001.pt: content differs" in committed.stderr
    assert "Traceback" not in committed.stderr
    # Both name the command that rebuilds it, which runs as printed; then --touch has nothing
    # left to refuse.
    command = re.search(r"epoch_001.pt: content differs[^`]*`(snakemake [^`]+)`", touched.stderr)
    assert command, touched.stderr
    assert f"`{command[1]}`" in committed.stderr
    project.run(*shlex.split(command[1]), expected=20)
    project.snakemake("report", "--touch", expected=20)


def test_a_training_whose_outputs_are_gone_runs_again(project):
    """A training job that failed after Snakemake had removed its outputs (the damaged-array
    scenario above, before its recovery) leaves the evaluation and the report of the run before
    it: the training runs again (a file output forces its job as a folder's manifest does)."""
    project.path("results/experiments/root/config.json").unlink()
    plan = planned(project)
    assert re.search(r"^(local)?rule train:", plan, re.M), plan[-1500:]
