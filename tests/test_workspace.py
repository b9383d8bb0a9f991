"""One workspace, whatever else runs in it: real Snakemake and DVC commands started beside a
running Snakemake, files damaged and removed between runs, and a folder dataset edited, each
followed by what the engines plan and run.

A tiny project (two experiments on the digits, two epochs long enough to interleave with) is
built by Snakemake, committed to git and handed to DVC once; each test works on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, Deadline, Project, dvc_ran, finish
from ladder import io, stages, workspace

pytestmark = pytest.mark.slow

EXPERIMENTS = {
    "root": {
        "model": {"name": "mynet", "blocks": 1, "width": 4},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
        "batch_size": 8,  # ~140 steps an epoch: a second or two, long enough to act in
        "epochs": 2,
        "checkpoint_every": 1,
        "log_every": 50,
    },
    "child": {
        "base": "root",
        "seed": 0,
        "augment": {"translate": {"p": 0.5}},
        "tta": {"passes": 2},
    },
}
PARAMS = {"dataset": {"source": "digits", "image_size": 8}, "experiments": EXPERIMENTS}


def commit(project: Project, message: str = "state") -> None:
    project.run("git", "add", "-A")
    project.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("workspace") / "built", PARAMS)
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", project.path(".dvc/config"))
    project.snakemake("report", expected=60)
    project.run("ladder", "dvc-commit", expected=30)
    commit(project)
    return project


@pytest.fixture
def project(built, tmp_path) -> Project:
    return Project.copy(built, tmp_path / "p")


def edit(project: Project, change: Callable[[dict], None]) -> None:
    params = project.params
    change(params)
    project.write_params(params)


def snapshot(root: Path, *folders: str) -> dict[str, tuple]:
    """Every file under `folders`: size, modification time and content digest."""
    found = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return found


def planned(project: Project, *args: str) -> set[str]:
    """The jobs `snakemake report -n` plans, as rule@experiment."""
    out = project.snakemake("report", "-n", *args).stdout
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        if m := re.match(r"(?:local)?rule (\w+):\n", block):
            exp = re.search(r"^    wildcards: exp=(\S+)$", block, re.M)
            jobs.add(f"{m.group(1)}@{exp.group(1)}" if exp else m.group(1))
    return jobs


def background(project: Project, *cmd: str) -> subprocess.Popen:
    return subprocess.Popen(
        list(cmd), cwd=project.root, env=project.env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], what: str) -> None:
    deadline = Deadline(what, expected=30)
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()}")
        deadline.check()
        time.sleep(0.05)


def training(project: Project, exp: str) -> bool:
    """Whether `exp` is being trained now (its training lock is held)."""
    return workspace.is_locked(project.path(f"{stages.RESUME}/{exp}.lock"))


# ----------------------------------------------------------------------------------------------
# One writer of the settings


VIEWS = {
    "dry run": ["snakemake", "report", "-n"],
    "summary": ["snakemake", "report", "--summary"],
    "status": ["ladder", "status"],
}


def content(files: dict[str, tuple]) -> dict[str, tuple]:
    return {path: (size, digest) for path, (size, _, digest) in files.items()}


def test_views_write_nothing_and_a_dry_run_plans_what_a_run_then_does(project):
    edit(project, lambda p: p["experiments"]["child"]["tta"].update(passes=3))
    before = snapshot(project.root, "results", "logs")
    for what, cmd in VIEWS.items():
        assert project.run(*cmd, check=False).returncode == 0, what
        after = snapshot(project.root, "results", "logs")
        # Not a byte written, no file made or removed; a view may give results DVC vouches for
        # the timestamps a run would give them (ladder.engines), nothing else.
        assert content(after) == content(before), what
        configs = {k: v for k, v in after.items() if k.startswith(stages.CONFIGS)}
        assert configs == {k: v for k, v in before.items() if k.startswith(stages.CONFIGS)}
    assert planned(project) == {"evaluate@child", "report"}
    status = json.loads(project.run("ladder", "status", "--json").stdout)
    assert {r["experiment"]: r["evaluation"] for r in status} == {
        "root": "evaluated",
        "child": "outdated",
    }
    done = project.snakemake("report")  # one run: its output explains a failure below
    out = done.stdout + done.stderr
    assert planned(project) == set()
    assert "outdated" not in project.run("ladder", "status").stdout, out


def test_a_second_run_is_refused_before_it_changes_anything(project):
    edit(project, lambda p: p["experiments"]["root"].update(seed=5))  # retrains root and child
    with background(project, "snakemake", "--cores", "1", "report") as run:
        wait_for(run, lambda: training(project, "root"), "root's training")
        edit(project, lambda p: p["experiments"]["child"]["tta"].update(passes=3))
        configs = snapshot(project.root, stages.CONFIGS)
        second = project.snakemake("report", check=False)
        dry = project.snakemake("report", "-n", check=False)
        assert snapshot(project.root, stages.CONFIGS) == configs
        assert finish(run, "the first run", expected=60) == 0, run.stdout.read()
    assert second.returncode == 1
    assert "Snakemake is already running in this workspace" in second.stderr
    assert "Nothing was changed" in second.stderr
    assert "Traceback" not in second.stderr
    assert dry.returncode == 0, dry.stderr
    # The first run finished with the settings it started with; the TTA edit is still to do,
    # and nothing says otherwise.
    status = {
        r["experiment"]: r for r in json.loads(project.run("ladder", "status", "--json").stdout)
    }
    assert status["child"]["evaluation"] == "outdated"
    assert planned(project) == {"evaluate@child", "report"}


def test_a_settings_file_rewritten_under_a_running_job_fails_it(project):
    edit(project, lambda p: p["experiments"]["root"].update(seed=6))
    path = project.path(f"{stages.CONFIGS}/experiments/root/train.json")
    with background(project, "snakemake", "--cores", "1", "report") as run:
        wait_for(run, lambda: training(project, "root"), "root's training")
        settings = io.read_record(path)
        io.write_record(path, {**settings, "seed": 7})  # another writer, e.g. a hand edit
        assert finish(run, "the run", expected=60) != 0
    log = project.path("logs/train/root.log").read_text()
    assert f"{stages.CONFIGS}/experiments/root/train.json changed while this job ran" in log
    assert not project.path("results/experiments/root/config.json").exists()  # none committed
    # The next run writes the settings params.yaml resolves to, and trains with them.
    project.snakemake("report", expected=60)
    assert io.read_record(path)["seed"] == 6
    assert (
        io.read_record(project.path("results/experiments/root/config.json"))["settings"]["seed"]
        == 6
    )
    assert planned(project) == set()


DVC_COMMANDS = {
    "dvc repro": ["dvc", "repro"],
    "dvc exp run": ["dvc", "exp", "run"],
    "dvc checkout": ["dvc", "checkout", "--force"],
    # DVC takes its lock before it looks for the experiment: the lock alone refuses it.
    "dvc exp apply": ["dvc", "exp", "apply", "an-experiment"],
}


def test_dvc_commands_that_write_the_workspace_wait_for_snakemake(project):
    # A run of several seconds: root and child retrain for 10 epochs.
    edit(project, lambda p: p["experiments"]["root"].update(seed=8, epochs=10))
    with background(project, "snakemake", "--cores", "1", "report") as run:
        wait_for(run, lambda: training(project, "root"), "root's training")
        params = project.path("params.yaml").read_text()
        started = {what: background(project, *cmd) for what, cmd in DVC_COMMANDS.items()}
        refused = {}
        for what, proc in started.items():
            output = proc.communicate()[0]  # waits, and closes the pipe
            refused[what] = (proc.returncode, output)
        assert run.poll() is None, "Snakemake ended before DVC's commands did: nothing tested"
        assert project.path("params.yaml").read_text() == params  # the edit is still there
        assert finish(run, "the run", expected=60) == 0, run.stdout.read()
    for what, (code, output) in refused.items():
        assert code != 0, what
        assert "Unable to acquire lock" in output, what
    lock = json.loads(project.path(workspace.DVC_LOCK).read_text())
    assert lock["engine"] == "snakemake"  # who held it
    assert planned(project) == set()
    project.run("ladder", "dvc-commit")  # and DVC takes over afterwards
    assert "up to date" in project.run("dvc", "status").stdout


# ----------------------------------------------------------------------------------------------
# Damaged outputs, found before anything reads them


def test_a_missing_file_in_a_finished_folder_reruns_its_job_in_both_engines(project):
    project.path("results/experiments/child/eval/epoch_001.npz").unlink()
    dvc = Project.copy(project, project.root.with_name("dvc"))
    assert planned(project) == {"evaluate@child", "report"}
    out = project.snakemake("report").stderr
    assert "eval/epoch_001.npz: listed in" in out
    assert planned(project) == set()
    # DVC sees the folder changed and reruns its stage; the manifest comes out the same, so the
    # report does not rerun.
    changed = json.loads(dvc.run("dvc", "status", "--json").stdout)
    assert set(changed) == {"evaluate@child", "report"}  # report: it reads results/experiments
    ran = re.findall(r"Running stage '([^']+)'", dvc.run("dvc", "repro").stdout)
    assert ran == ["evaluate@child"]  # the same evaluation again: the report is current


def test_a_truncated_prepared_array_regenerates_it_and_reuses_the_training(project):
    weights = project.path("results/experiments/root/checkpoints/epoch_002.pt").read_bytes()
    path = project.path("results/data/prepared/val_x.npy")
    path.write_bytes(path.read_bytes()[:-10])
    out = project.snakemake("report", expected=60)
    text = out.stdout + out.stderr
    assert "val_x.npy: changed since" in text
    log = project.path("logs/train/root.log").read_text()
    assert "trained before with the same settings, data and code" in log
    assert project.path("results/experiments/root/checkpoints/epoch_002.pt").read_bytes() == weights
    assert planned(project) == set()


def test_a_failing_report_leaves_the_previous_report(project):
    page = project.path("results/report/index.html").read_bytes()
    evaluation = project.path("results/experiments/child/eval/epoch_002.json")
    st = evaluation.stat()
    text = evaluation.read_text()
    i = text.index('"acc": 0.') + len('"acc": 0.')  # another accuracy, same size, same mtime
    evaluation.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :])
    os.utime(evaluation, ns=(st.st_atime_ns, st.st_mtime_ns))
    failed = project.snakemake("report", "--forcerun", "report", check=False)
    assert failed.returncode != 0
    log = project.path("logs/report.log").read_text()
    assert "eval/epoch_002.json: content differs" in log
    assert project.path("results/report/index.html").read_bytes() == page
    # The command the message names regenerates the evaluation (from its cache), and the report.
    command = re.search(r"regenerate it with `(snakemake [^`]+)`", log).group(1).split()
    project.run(*command, expected=30)
    project.snakemake("report")
    assert planned(project) == set()


# ----------------------------------------------------------------------------------------------
# Datasets side by side


def test_a_failed_switch_to_another_dataset_loses_nothing_and_switching_back_is_free(
    project, tmp_path
):
    prepared = snapshot(project.root, stages.PREPARED)
    missing = tmp_path / "not-there"
    edit(project, lambda p: p["dataset"].update(source="folder", path=str(missing)))
    failed = project.snakemake("report", check=False)
    assert failed.returncode != 0
    assert (
        f"dataset.path = {missing}: no such file or folder"
        in project.path("logs/download.log").read_text()
    )
    # Snakemake removed the digits' raw folder before the failed download; nothing refuses to
    # run for the digits' split sizes (they are not this dataset's).
    assert not project.path(stages.RAW).exists()
    assert project.run("ladder", "check").returncode == 0
    edit(project, lambda p: p["dataset"].update(source="digits", path=""))
    project.snakemake("report", expected=30)
    assert (
        "linked back from results/cache/data/download/"
        in project.path("logs/download.log").read_text()
    )
    # Snakemake reruns what comes after a job it ran, and each finds its result made before:
    # no image decoded again, no step trained again.
    assert (
        "linked back from results/cache/data/prepare/"
        in project.path("logs/prepare.log").read_text()
    )
    for exp in EXPERIMENTS:
        log = project.path(f"logs/train/{exp}.log").read_text()
        assert "trained before with the same settings, data and code" in log, exp
    assert content(snapshot(project.root, stages.PREPARED)) == content(prepared)
    assert planned(project) == set()


# ----------------------------------------------------------------------------------------------
# A folder dataset's content


def test_a_folder_dataset_edit_reruns_the_import_in_both_engines(tmp_path):
    from ladder.data.digits import write_digits

    images = tmp_path / "images"
    write_digits(images)
    params = {
        "dataset": {"source": "folder", "path": str(images), "image_size": 8},
        "experiments": {"x": {"model": {"name": "mynet", "blocks": 1, "width": 4}}},
    }
    project = Project(tmp_path / "p", params)
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    project.run("dvc", "repro", "prepare", expected=30)
    target = stages.manifest(stages.PREPARED)
    assert "Nothing to be done" in project.snakemake(target, "-n").stdout
    shutil.move(images / "7", tmp_path / "7")  # a class removed from the dataset
    # DVC sees it through configure's link to the folder; configure's new listings rerun the
    # import (ladder.data.source_links).
    assert "results/data/source/path" in project.run("dvc", "status").stdout
    plan = project.snakemake(target, "-n")
    assert re.search(r"^rule download:", plan.stdout, re.M), plan.stdout
    assert "dataset.path" in plan.stderr
    shutil.move(tmp_path / "7", images / "7")  # back, files and times as they were
    assert "Nothing to be done" in project.snakemake(target, "-n").stdout
    assert "up to date" in project.run("dvc", "status", "prepare").stdout

    # DVC runs the import again for the edit; a removed link is made again, and nothing else.
    shutil.move(images / "7", tmp_path / "7")
    assert dvc_ran(project.run("dvc", "repro", "prepare", expected=30).stdout) == {
        "configure", "download", "prepare",
    }  # fmt: skip
    project.path("results/data/source/path").unlink()
    assert dvc_ran(project.run("dvc", "repro", "prepare", expected=30).stdout) == {"configure"}
    assert "up to date" in project.run("dvc", "status", "prepare").stdout


# ----------------------------------------------------------------------------------------------
# Names


def test_an_experiment_name_that_cannot_be_a_file_name_is_refused_by_both_engines(tmp_path):
    # Another experiment's training lock; the other kinds of bad name: tests/test_config.py.
    name = "root.lock"
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["experiments"][name] = {"base": "root", "seed": 3}
    project = Project(tmp_path / "p", params)
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    for cmd in (["ladder", "check"], ["snakemake", "--cores", "1", "-n"], ["dvc", "repro"]):
        done = project.run(*cmd, check=False)
        output = done.stdout + done.stderr
        assert done.returncode != 0, cmd
        assert f"experiments: {json.dumps(name)}" in output, (cmd, output[-2000:])
        assert "Traceback" not in output, cmd
    assert not project.path("results").exists()


# ----------------------------------------------------------------------------------------------
# The code a result was made with


def experiment_ref(project: Project, name: str, seconds: float) -> None:
    """Waits up to `seconds` for the Git ref DVC gives a finished experiment (refs/exps/<baseline
    commit>/<name>), a poll of milliseconds: `dvc queue status` costs a CPU-second, taken from the
    experiment it waits for. A failed experiment gets none: the caller asks DVC every `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        refs = project.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout
        if any(ref.endswith(f"/{name}") for ref in refs.split()):
            time.sleep(1)  # there already: DVC's status follows in a moment
            return
        time.sleep(0.2)


def test_a_queued_dvc_experiment_runs_the_code_it_was_queued_with(project):
    """A new rung queued as the README writes it (`++`: a key params.yaml does not have), the
    code edited before the queue starts: the experiment runs, and records, the queued code, and
    Snakemake takes over after `dvc exp apply` with nothing to do."""
    project.run(
        "dvc", "exp", "run", "--queue", "-n", "queued", "-S", "++experiments.added.base=root",
        "-S", "++experiments.added.seed=9", expected=30,
    )  # fmt: skip
    queued_code = stages.version("train")  # this checkout's, the project's copy of it
    code = project.path("workflow/ladder/optim.py")
    code.write_text(code.read_text() + "\n# edited after the experiment was queued\n")
    project.run("dvc", "queue", "start", "-j", "1")
    deadline = Deadline("the queued experiment", expected=60)
    while not re.search(r"\bqueued\b.*\b(Success|Failed)\b", status := project.run(
        "dvc", "queue", "status"
    ).stdout):  # fmt: skip
        deadline.check()
        experiment_ref(project, "queued", seconds=10)
    assert "Success" in status, project.run("dvc", "queue", "logs", "queued", check=False).stdout
    project.run("git", "checkout", "--", "workflow")  # the edit is not what we apply
    project.run("dvc", "exp", "apply", "queued", expected=30)
    run = io.read_record(project.path("results/experiments/added/config.json"))
    assert run["settings"]["seed"] == 9
    assert run["code_version"] == queued_code  # not the code edited after queueing
    lock = yaml.safe_load(project.path("dvc.lock").read_text())
    deps = {d["path"]: d["md5"] for d in lock["stages"]["train@added"]["deps"]}
    assert (
        deps["workflow/ladder/optim.py"]
        == hashlib.md5((REPO / "workflow/ladder/optim.py").read_bytes()).hexdigest()
    )
    assert planned(project) == set()  # Snakemake takes DVC's results as they are


def test_the_ladder_command_runs_the_workspace_s_own_code(tmp_path):
    """`ladder` started in a workspace runs that workspace's workflow/ladder, whatever the
    virtualenv's install points at: here, a copy whose version says so."""
    shutil.copytree(
        REPO / "workflow", tmp_path / "workflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    init = tmp_path / "workflow" / "ladder" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "copy-'))
    ladder = str(BIN / "ladder")
    here = subprocess.run([ladder, "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert here.stdout.startswith("ladder copy-"), here.stdout + here.stderr
    assert str(tmp_path / "workflow" / "ladder") in here.stdout
    elsewhere = subprocess.run([ladder, "--version"], cwd=tmp_path / "workflow", text=True,
                               capture_output=True)  # fmt: skip
    assert not elsewhere.stdout.startswith("ladder copy-")
