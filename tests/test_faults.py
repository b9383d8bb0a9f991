"""The fault matrix: each fault injected for real into a running workflow, then the recovery the
README's "When something goes wrong" section gives, run as written. Each test asserts that no
output is left looking finished, that nothing current is lost, and that the recovery ends with
everything up to date.

A tiny project is built once by Snakemake; each test works on a copy of it (timestamps and
Snakemake's records kept, so the copy is up to date as it is).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, Deadline, Project, finish, flip_a_byte
from ladder import manifest, stages

pytestmark = pytest.mark.slow

EXPERIMENTS = {
    "root": {
        "model": {"name": "mynet", "blocks": 1, "width": 4},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
        "batch_size": 8,  # ~140 steps an epoch: long enough to be killed in one
        "epochs": 2,
        "checkpoint_every": 1,
        "log_every": 50,
    },
    # its own seed: edits of root's seed retrain root alone
    "child": {
        "base": "root",
        "seed": 0,
        "augment": {"translate": {"p": 0.5}},
        "tta": {"passes": 2},
    },
}
PARAMS = {"dataset": {"source": "digits", "image_size": 8}, "experiments": EXPERIMENTS}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("faults") / "built", PARAMS)
    project.snakemake("report", expected=40)
    return project


@pytest.fixture
def project(built, tmp_path) -> Project:
    return Project.copy(built, tmp_path / "p")


def edit(project: Project, change: Callable[[dict], None]) -> None:
    params = project.params
    change(params)
    project.write_params(params)


def up_to_date(project: Project) -> bool:
    return "Nothing to be done" in project.snakemake("report", "-n").stdout


def start(project: Project, *args: str) -> subprocess.Popen:
    """`snakemake report` in the background, in a process group of its own (as a terminal runs
    it: a signal to the group reaches Snakemake and its jobs)."""
    return subprocess.Popen(
        ["snakemake", "--cores", "2", "report", *args],
        cwd=project.root,
        env=project.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], what: str) -> None:
    deadline = Deadline(what, expected=20)
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        deadline.check()
        time.sleep(0.02)


def first_epoch_done(project: Project, exp: str) -> bool:
    """Whether a training run of `exp` has saved (and logged) its first epoch."""
    logs = project.path(f"results/resume/{exp}").glob("*/train.log")
    return any(
        f"{exp} epoch 1/" in log.read_text()
        for log in logs
        if not (log.parent / stages.FINISHED).exists()  # a finished run's, kept for reruns
    )


def looks_finished(project: Project, exp: str) -> list[str]:
    """The experiment's training outputs that are in place."""
    run = project.path(f"results/experiments/{exp}")
    names = ("config.json", "history.csv", "steps.csv", "checkpoints", "checkpoints.manifest.json")
    return [name for name in names if (run / name).exists()]


# ----------------------------------------------------------------------------------------------
# Kills


def retrain_root_until_its_first_epoch(project: Project, seed: int) -> subprocess.Popen:
    """`snakemake report` after an edit that retrains root, once root's first epoch is saved."""
    edit(project, lambda p: p["experiments"]["root"].update(seed=seed))
    run = start(project)
    wait_for(run, lambda: first_epoch_done(project, "root"), "root's first epoch")
    return run


def kill_engine(run: subprocess.Popen) -> None:
    """SIGKILL to Snakemake and its jobs, as `kill -9` of the terminal's process group."""
    os.killpg(run.pid, signal.SIGKILL)
    finish(run, "a killed run", expected=5)


def test_the_whole_engine_killed_mid_epoch(project):
    kill_engine(retrain_root_until_its_first_epoch(project, seed=1))
    assert looks_finished(project, "root") == []  # nothing half-done looks finished
    # Snakemake's lock outlives it: the README's recovery, as written
    locked = project.snakemake("report", check=False)
    assert locked.returncode != 0
    assert "LockException" in locked.stdout + locked.stderr
    project.run("snakemake", "--unlock")
    # Outputs are written whole at the end of a job, so none of the killed jobs' is half there
    # and the plain command goes on (`--rerun-incomplete` is for when Snakemake asks for it).
    project.snakemake("report", expected=40)
    log = project.path("logs/train/root.log").read_text()
    assert "resuming after epoch 1" in log
    assert "earlier sessions of this run" in log  # kept with its state, repeated here
    assert log.count("root epoch 1/2 lr") == 1  # trained by the killed session only
    assert log.index("root epoch 1/2 lr") < log.index("root epoch 2/2 lr")
    assert up_to_date(project)


def test_the_trainer_killed_then_started_over(project):
    run = retrain_root_until_its_first_epoch(project, seed=2)
    pid = json.loads(project.path("results/resume/root.lock").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the job dies; Snakemake reports it and stops
    assert finish(run, "Snakemake after its job died", expected=20) != 0
    assert looks_finished(project, "root") == []
    # To start an experiment over instead of resuming it: remove its resume state.
    shutil.rmtree(project.path("results/resume/root"))
    project.snakemake("report", expected=40)
    assert "resuming after epoch" not in project.path("logs/train/root.log").read_text()
    assert up_to_date(project)


def test_a_killed_run_whose_resume_state_was_then_damaged_starts_over(project):
    kill_engine(retrain_root_until_its_first_epoch(project, seed=3))
    (state,) = project.path("results/resume/root").glob("*/state.pt")
    state.write_bytes(state.read_bytes()[:64])  # truncated, as a full disk or a copy leaves it
    project.run("snakemake", "--unlock")
    project.snakemake("report", expected=40)
    log = project.path("logs/train/root.log").read_text()
    assert f"discarding resume state {state.parent.relative_to(project.root)}" in log
    assert "Traceback" not in log
    assert up_to_date(project)


def test_ctrl_c_during_evaluation(project):
    edit(project, lambda p: p["experiments"]["child"]["tta"].update(passes=3))
    run = start(project)
    log = project.path("logs/evaluate/child.log")
    wait_for(run, lambda: log.exists() and "child epoch 1" in log.read_text(), "an evaluation")
    os.killpg(run.pid, signal.SIGINT)
    finish(run, "Snakemake after Ctrl-C", expected=20)
    assert not (project.path("results/experiments/child/eval.manifest.json").exists()
                and not project.path("results/experiments/child/eval").is_dir())  # fmt: skip
    project.snakemake("report", expected=30)  # Snakemake stopped cleanly: just run it again
    assert "evaluated before" in log.read_text()  # the finished checkpoint was kept
    assert up_to_date(project)


def test_the_report_killed_while_it_writes(project):
    edit(project, lambda p: p["experiments"]["child"].update(description="another line"))
    run = start(project)
    log = project.path("logs/report.log")
    wait_for(run, lambda: log.exists() and "==== ladder" in log.read_text(), "the report")
    time.sleep(1)  # into its figures
    kill_engine(run)
    report = project.path("results/report")
    outputs = {Path(p).name for p in stages.STAGES["report"].out_paths}
    assert not report.exists() or {p.name for p in report.iterdir()} == outputs
    project.run("snakemake", "--unlock")
    project.snakemake("report", expected=30)
    assert "another line" in (report / "index.html").read_text()
    assert not list(project.path("results").glob(".report.*.tmp"))
    assert up_to_date(project)


# ----------------------------------------------------------------------------------------------
# Bad configurations, in both engines


def _set(path: str, value) -> Callable[[str], str]:
    """A params.yaml edit: `path` (dotted) set to `value`."""

    def change(text: str) -> str:
        params = yaml.safe_load(text)
        *parents, key = path.split(".")
        node = params
        for name in parents:
            node = node[name]
        node[key] = value
        return yaml.safe_dump(params, sort_keys=False)

    return change


def _both(change: Callable[[str], str], says: str) -> tuple:
    return change, says, says


# name -> (the edit of params.yaml's text, what Snakemake says, what `dvc repro` says)
BAD_CONFIGS = {
    "yaml syntax": (
        lambda text: text + "  broken: [unclosed\n",
        r"params\.yaml: line \d+, column \d+: not valid YAML",
        r"unable to read: 'params\.yaml', YAML file structure is corrupted(.|\n)*line \d+, column",
    ),
    "no experiments": _both(
        _set("experiments", {}),
        r"params\.yaml: experiments: none defined; add at least one",
    ),
    "batch larger than the train split": _both(
        _set("experiments.root.batch_size", 5000),
        r"params\.yaml: experiments\.root\.batch_size: 5000 is more than the train split's "
        r"\d+ images \(results/data/prepared/train_y\.npy\); lower it",
    ),
    "misspelt key": _both(
        _set("experiments.root.optimiser", {"lr": 0.1}),
        r"params\.yaml: experiments\.root\.optimiser: unknown key \(did you mean 'optimizer'\?\)",
    ),
    "value out of range": _both(
        _set("experiments.child.augment.translate.p", 1.5),
        r"params\.yaml: experiments\.child\.augment\.translate\.p: 1\.5",
    ),
}


@pytest.fixture(scope="module")
def versioned(built, tmp_path_factory) -> Project:
    """`built` under git and DVC, handed to DVC with the README's command."""
    project = Project.copy(built, tmp_path_factory.mktemp("faults-dvc") / "p")
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", project.path(".dvc/config"))
    project.run("ladder", "dvc-commit")
    return project


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_is_named_in_both_engines_and_loses_nothing(versioned, tmp_path, case):
    project = Project.copy(versioned, tmp_path / "p")
    params = project.path("params.yaml")
    good = params.read_text()
    before = _digests(project)
    change, snakemake_says, dvc_says = BAD_CONFIGS[case]
    params.write_text(change(good))
    for engine, says in (("snakemake", snakemake_says), ("dvc", dvc_says)):
        cmd = ["snakemake", "--cores", "2", "report"] if engine == "snakemake" else ["dvc", "repro"]
        refused = project.run(*cmd, check=False, expected=20)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, (engine, said[-3000:])
        assert re.search(says, said), (engine, said[-3000:])
        assert "Traceback" not in said, (engine, said[-3000:])
    assert _digests(project) == before  # no result removed, none rewritten
    params.write_text(good)
    assert up_to_date(project)
    assert "up to date" in project.run("dvc", "status").stdout


def _digests(project: Project) -> dict[str, str]:
    """Every file under results/ (settings files included) -> its content's digest."""
    files = sorted(p for p in project.path("results").rglob("*") if p.is_file())
    return {str(p.relative_to(project.root)): manifest.file_digest(p) for p in files}


# ----------------------------------------------------------------------------------------------
# Damaged files


def test_a_truncated_checkpoint_is_found_before_it_is_read_and_retrained(project):
    checkpoint = project.path("results/experiments/root/checkpoints/epoch_001.pt")
    weights = checkpoint.read_bytes()
    # In a workspace the finished run's resume folder holds the same file (a link); the copy
    # made for this test holds two: cut both short.
    (kept,) = project.path("results/resume/root").glob(f"*/checkpoints/{checkpoint.name}")
    for path in (checkpoint, kept):
        path.chmod(0o644)
        path.write_bytes(weights[:100])
    run = project.snakemake("report", expected=40)
    assert "epoch_001.pt: changed since" in run.stderr  # as Snakemake plans, before any job
    log = project.path("logs/train/root.log").read_text()
    assert "not using the finished run" in log
    assert checkpoint.read_bytes() == weights  # the same weights again (on the CPU)
    assert up_to_date(project)


def test_a_checkpoint_damaged_in_place_is_refused_where_it_is_read(project):
    # Same size, same timestamp: no engine sees it, evaluation does (its manifest's digest),
    # before torch.load sees the file. Code-carrying pickles and random bytes:
    # tests/test_evaluate.py.
    checkpoint = project.path("results/experiments/root/checkpoints/epoch_001.pt")
    checkpoint.chmod(0o644)
    flip_a_byte(checkpoint)
    edit(project, lambda p: p.update(tta={"seed": 1}))  # evaluation reruns, reading it
    failed = project.snakemake("report", check=False, expected=30)
    assert failed.returncode != 0
    log = project.path("logs/evaluate/root.log").read_text()
    assert f"{checkpoint.relative_to(project.root)}: content differs" in log
    assert "Traceback" not in log
    # The recovery the message names, as written: the training that writes it, alone.
    command = re.search(r"regenerate it with `(snakemake [^`]+)`", log).group(1)
    assert command == (
        "snakemake results/experiments/root/checkpoints.manifest.json --forcerun train --cores 1"
    )
    project.run(*command.split(), expected=40)
    manifest.verify(checkpoint.parent, [checkpoint.name])
    project.snakemake("report", expected=40)
    assert up_to_date(project)


def test_a_full_disk_names_the_file_and_leaves_no_half_written_output(project, tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small filesystem needs root (mount -t tmpfs); CI runs as root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        cmd = [
            "ladder", "train", "--experiment", "root",
            "--settings", "results/configs/experiments/root/train.json",
            "--data", "results/data/prepared", "--stats", "results/data/stats.json",
            "--out", str(small / "root"), "--resume-dir", str(tmp_path / "resume"),
            "--failed-dir", str(tmp_path / "failed"), "--no-progress",
        ]  # fmt: skip
        # leave 8 kB free: training's outputs do not fit
        (small / "filler").write_bytes(b"\0" * (shutil.disk_usage(small).free - 8192))
        full = project.run(*cmd, check=False, expected=20)
        assert full.returncode == 1
        assert f"{small / 'root'}" in full.stderr
        assert "no space left on the device while writing it" in full.stderr
        assert "Traceback" not in full.stderr
        assert (
            not [p for p in small.rglob("*") if p.name != "filler"]
            or not (small / "root" / "config.json").exists()
        )
        assert not list(small.rglob("*.tmp"))
        # Free some space and run it again: it resumes from the finished epochs.
        (small / "filler").unlink()
        again = project.run(*cmd, expected=20)
        assert "resuming after epoch 2" in again.stderr
        manifest.read(small / "root" / "checkpoints")
    finally:
        subprocess.run(["umount", str(small)], check=True)


# ----------------------------------------------------------------------------------------------
# A run that diverges, and code edits whose results are kept


def test_a_diverged_run_fails_cleanly_and_keeps_its_last_good_checkpoint(project):
    edit(
        project,
        lambda p: p["experiments"]["root"].update(
            schedule={"name": "multistep", "milestones": [1], "gamma": 1.0e12}
        ),
    )
    failed = project.snakemake("report", check=False, expected=40)
    assert failed.returncode != 0
    log = project.path("logs/train/root.log").read_text()
    assert "the loss became NaN/inf at epoch 2" in log
    assert "Traceback" not in log
    kept = project.path("results/failed/root/checkpoints/epoch_001.pt")
    assert torch.load(kept, weights_only=True)
    assert looks_finished(project, "root") == []


def test_a_code_edit_whose_results_are_kept(project):
    module = project.path("workflow/ladder/evaluate.py")
    module.write_text(module.read_text() + "\n# a comment: results unchanged\n")
    assert not up_to_date(project)
    project.snakemake("report", "--touch")  # the README's command: keep the results
    assert up_to_date(project)
