"""Two engines, one workspace: what each plans and runs after every kind of edit, handing results
over in both directions, and never both at once.

One project (a Tiny ImageNet-layout archive served on 127.0.0.1, three small experiments) is
built by Snakemake, handed to DVC with `ladder dvc-commit`, then edited again and again:
- the change matrix: for every class of params key and a code module of every stage, the jobs
  Snakemake plans to run first (its dry run's reasons) are the stages `dvc status` finds changed,
  and both are the expected set; reverting the edit leaves both with nothing to do;
- full runs: an edit's whole consequence, planned by Snakemake, run by DVC; a dataset edit
  cascading to everything downstream, and its revert rerunning nothing after the data stages;
- switching engines and running them together.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest
from conftest import REPO, Project, dvc_ran, make_tinyimagenet_zip, md5, serving
from ladder import stages, workspace

pytestmark = pytest.mark.slow

EXPERIMENTS = {
    "root": {
        "description": "the first rung",
        "model": {"name": "mynet", "blocks": 1, "width": 4},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
        "batch_size": 8,
        "epochs": 2,
        "checkpoint_every": 1,
        "log_every": 2,
    },
    "child": {"base": "root", "augment": {"translate": {"p": 0.5}}, "tta": {"passes": 2}},
    "other": {"model": {"name": "mynet", "blocks": 1, "width": 6}, "augment": {"hflip": 0.0},
              "batch_size": 8, "epochs": 1},
}  # fmt: skip
EXPS = list(EXPERIMENTS)


def train_eval(*names: str) -> set[str]:
    return {f"{s}@{n}" for n in names for s in ("train", "evaluate")}


# ----------------------------------------------------------------------------------------------
# Each engine's view


LAST_PLAN: list[str] = [""]  # the last dry run's output, for failure messages


def snakemake_plan(project: Project) -> tuple[set[str], set[str]]:
    """(every job `snakemake -n report` would run, the jobs it would run for a reason of their
    own rather than because a job before them runs), as DVC stage names."""
    done = project.snakemake("report", "-n")
    out = done.stdout
    LAST_PLAN[0] = done.stderr[-1500:] + out[-3000:]
    planned, direct = set(), set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m:
            continue
        exp = re.search(r"^    wildcards: exp=(\S+)$", block, re.M)
        name = f"{m.group(1)}@{exp.group(1)}" if exp else m.group(1)
        reason = re.search(r"^    reason: (.*)$", block, re.M).group(1)
        planned.add(name)
        if any(r.split(":")[0] != "Input files updated by another job" for r in reason.split("; ")):
            direct.add(name)
    return planned, direct


def dvc_changed(project: Project) -> set[str]:
    """Stages `dvc status` finds changed (deps, outputs, or not yet in dvc.lock), once the
    command of DVC's `configure` has written the settings params.yaml resolves to (DVC cannot
    know which stages an edit reaches before that); configure itself is left out: it reruns on
    any params edit and writes only what changed (the other stages' view says what that was)."""
    project.run(*stages.STAGES["configure"].command().split())  # what DVC's configure runs
    status = json.loads(project.run("dvc", "status", "--json").stdout or "{}")
    return set(status) - {"configure"}


def dvc_repro(project: Project, *targets: str) -> set[str]:
    """Run `dvc repro`; return the stages it really ran (not the ones it found unchanged)."""
    return dvc_ran(project.run("dvc", "repro", *targets).stdout) - {"configure"}


def nothing_to_do(project: Project) -> None:
    assert snakemake_plan(project)[0] == set(), "Snakemake plans jobs"
    assert dvc_changed(project) == set(), "DVC finds changed stages"


def edit(project: Project, change: Callable[[dict], None]) -> dict:
    """Apply `change` to params.yaml; return the params before, for the revert."""
    before = project.params
    params = json.loads(json.dumps(before))
    change(params)
    project.write_params(params)
    return before


# ----------------------------------------------------------------------------------------------
# The project


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Two Tiny ImageNet-layout archives of different pixels, served on 127.0.0.1."""
    www = tmp_path_factory.mktemp("www")
    with serving(www) as server:
        zips = {}
        for name, seed in (("a", 0), ("b", 1)):
            path = make_tinyimagenet_zip(www / f"{name}.zip", size=8, seed=seed)
            zips[name] = {"url": server.url(path.name), "md5": md5(path)}
        yield zips


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The folder source's inputs: <class>/<image> trees, a training pool and a test set."""
    from ladder.data.digits import write_digits

    root = tmp_path_factory.mktemp("folders")
    write_digits(root / "digits")
    return {"path": str(root / "digits"), "test_path": str(root / "digits")}


@pytest.fixture(scope="module")
def project(tmp_path_factory, archives) -> Project:
    """Built by Snakemake, in a git repository with DVC initialised."""
    params = {
        "dataset": {"source": "tinyimagenet", **archives["a"], "image_size": 8},
        "tta": {"passes": 1},
        "experiments": EXPERIMENTS,
    }
    project = Project(tmp_path_factory.mktemp("engines") / "p", params)
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", project.path(".dvc/config"))  # the shipped cache links
    # Nothing pins the threads: both engines give a job LADDER_THREADS (ladder.devices), so the
    # same params give the same weights whichever engine trains them.
    project.snakemake("report")
    return project


def commit_to_git(project: Project) -> None:
    project.run("git", "add", "-A")
    project.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "state")


# ----------------------------------------------------------------------------------------------
# Snakemake -> DVC


def test_after_snakemake_ladder_dvc_commit_makes_dvc_up_to_date(project):
    plain = project.run("dvc", "commit", check=False)  # what the command exists for
    assert plain.returncode != 0
    assert "--force" in plain.stderr
    project.run("ladder", "dvc-commit")
    assert "up to date" in project.run("dvc", "status").stdout
    assert dvc_repro(project) == set()
    commit_to_git(project)


def suggested(message: str) -> list[str]:
    """The command a message suggests (the last one in backquotes), split as a shell splits it."""
    return shlex.split(re.findall(r"`([^`]+)`", message)[-1])


def test_dvc_commit_refuses_results_that_are_not_up_to_date_and_says_what_to_run(project):
    before = edit(project, lambda p: p["experiments"]["other"].update(seed=5))
    refused = project.run("ladder", "dvc-commit", check=False)
    assert refused.returncode == 1
    assert "params.yaml changed since Snakemake last ran" in refused.stderr
    first = suggested(refused.stderr)
    dvc_changed(project)  # DVC's configure ran: the settings are current, the results are not
    refused = project.run("ladder", "dvc-commit", check=False)
    assert refused.returncode == 1
    assert "Snakemake still has work to do" in refused.stderr
    assert re.search(r"^  train +1$", refused.stderr, re.M)  # its plan
    assert "Traceback" not in refused.stderr
    # Each message's command runs as printed, and then the handover goes through.
    project.run(*suggested(refused.stderr.split("Its plan:")[0]))
    project.run("ladder", "dvc-commit")
    assert "up to date" in project.run("dvc", "status").stdout
    project.write_params(before)
    assert suggested(project.run("ladder", "dvc-commit", check=False).stderr) == first
    project.run(*first)
    project.run("ladder", "dvc-commit")
    nothing_to_do(project)
    commit_to_git(project)


def test_dvc_reproduces_snakemake_s_bytes(project):
    # Every byte of the prepared data and of the weights (their manifests inside say what made
    # them, by digest, timings included: not compared).
    files = [
        stages.PREPARED,
        stages.manifest(stages.PREPARED),
        "results/experiments/root/checkpoints",
        stages.manifest("results/experiments/root/checkpoints"),
    ]

    def digests() -> dict[str, str]:
        out = {}
        for name in files:
            for p in sorted(project.path(name).rglob("*")) or [project.path(name)]:
                if p.is_file() and p.name not in (".snakemake_timestamp", "MANIFEST.json"):
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    by_snakemake = digests()
    shutil.rmtree(project.path("results/resume/root"))  # trained anew, not the finished run again
    project.run("dvc", "repro", "--force", "--single-item", "prepare", "train@root")
    assert digests() == by_snakemake
    # The same data and weights: nothing downstream reruns but the report, which shows the new
    # run's timings (history.csv).
    assert snakemake_plan(project)[0] == dvc_changed(project) == {"report"}
    assert dvc_repro(project) == {"report"}
    nothing_to_do(project)


# ----------------------------------------------------------------------------------------------
# The change matrix: every class of params key, and a code module of every stage


def dataset(**keys):
    return lambda p: p["dataset"].update(keys)


def exp(name, **keys):
    return lambda p: p["experiments"][name].update(keys)


DATA = {"download"}
PREPARE = {"prepare"}
TRAIN = {f"train@{e}" for e in EXPS}
EVALUATE = {f"evaluate@{e}" for e in EXPS}
REPORT = {"report"}
MATRIX: dict[str, tuple[Callable[[dict], None], set[str]]] = {
    # dataset.*: each key reruns the first stage that reads it; what follows depends on whether
    # that stage's output changes (the full runs below)
    "dataset.url+md5": (lambda p: None, DATA),  # filled in by the test: another archive
    "dataset.val_fraction": (dataset(val_fraction=0.3), PREPARE),
    "dataset.split_seed": (dataset(split_seed=4), PREPARE),
    "dataset.image_size": (dataset(image_size=12), PREPARE),
    # keys that do not apply to the source in use rerun nothing
    "dataset.path (not this source)": (dataset(path="/elsewhere"), set()),
    "dataset.test_path (not this source)": (dataset(test_path="/elsewhere"), set()),
    "dataset.test_fraction (not this source)": (dataset(test_fraction=0.3), set()),
    # tta: the top level reaches every experiment that does not set the key itself (child sets
    # its passes); the report reads every experiment's settings files, for its "changes" column
    "tta.passes": (lambda p: p["tta"].update(passes=3), EVALUATE - {"evaluate@child"} | REPORT),
    "tta.seed": (lambda p: p["tta"].update(seed=9), EVALUATE | REPORT),
    "tta.augment": (lambda p: p["tta"].update(augment="flip"), EVALUATE | REPORT),
    # an experiment's keys, by the stage that reads them
    "train key, inherited": (exp("root", optimizer={"lr": 0.02}), TRAIN - {"train@other"} | REPORT),
    "train key, own": (exp("child", seed=3), {"train@child", "report"}),
    "train key set to its default": (exp("root", seed=0), set()),
    "evaluate key": (exp("child", tta={"passes": 3}), {"evaluate@child", "report"}),
    "report keys": (exp("other", description="new words", reference={"test": 50}), {"report"}),
    "run: a part of the ladder": (lambda p: p.update(run=["child"]), {"report"}),
    "a new experiment": (
        lambda p: p["experiments"].update(added={"base": "other", "seed": 1}),
        {"train@added", "evaluate@added", "report"},
    ),
}  # fmt: skip
CODE_EDITS = {  # a module of every stage: editing it reruns exactly that stage
    "workflow/ladder/data/download.py": {"download"},
    "workflow/ladder/data/sources.py": {"download", "prepare"},  # the sources' shared types
    # a source's own files: the data stages of the dataset that uses it (this one's download
    # and layout), through download.json and prepare.json; another source's: nothing
    "workflow/ladder/data/tinyimagenet.py": {"download", "prepare"},
    "workflow/ladder/data/digits.py": set(),
    "workflow/ladder/data/registry.py": {"report"},
    "workflow/ladder/data/stats.py": {"stats"},
    "workflow/ladder/optim.py": TRAIN,
    "workflow/ladder/evaluate.py": EVALUATE,
    # a model's files: the experiments that use it (all three use mynet), through their
    # code.json; another model's: nothing; the registry: the report, which names settings
    "workflow/ladder/models/mynet.py": TRAIN | EVALUATE,
    "workflow/ladder/models/resnet.py": set(),
    # an op's files: the experiments that turn it on (child translates), through code.json,
    # and the report, whose augmentations figure runs every op; another op's: the report only
    "workflow/ladder/augments/translate.py": train_eval("child") | {"report"},
    "workflow/ladder/augments/blur.py": {"report"},
    "workflow/ladder/model_registry.py": {"report"},
    "workflow/ladder/report/figures.py": {"report"},
    "workflow/schemas/params.schema.yaml": {"report"},
}


def downstream(names: set[str], experiments) -> set[str]:
    """`names` and every stage after them, by the stage table's edges (a stage reads a file
    another writes) for these experiments."""
    jobs = {}  # name -> (reads, writes)
    for stage in stages.STAGES.values():
        for e in experiments if stage.foreach else [None]:
            at = (lambda p, e=e: p.replace("{exp}", e)) if e else (lambda p: p)
            reads = {at(p) for p in stage.deps.values()}
            reads |= {p.replace("{exp}", x) for x in experiments for p in stage.each_experiment}
            jobs[f"{stage.name}@{e}" if e else stage.name] = (
                reads,
                {at(p) for p in stage.out_paths},
            )
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += [n for n, (reads, _) in jobs.items() if reads & jobs[name][1]]
    return found


def check_plans(project: Project, expected: set[str]) -> None:
    """DVC finds exactly `expected` changed; Snakemake plans those and everything after them,
    running for a reason of their own (not only because a job before them runs) at most those."""
    planned, direct = snakemake_plan(project)
    assert dvc_changed(project) == expected
    assert direct <= expected, LAST_PLAN[0]
    assert planned == downstream(expected, project.params["experiments"]), LAST_PLAN[0]


@pytest.mark.parametrize("key", MATRIX)
def test_a_params_edit_reruns_the_same_stages_in_both_engines(project, archives, key):
    change, expected = MATRIX[key]
    if key == "dataset.url+md5":
        change = dataset(**archives["b"])
    before = edit(project, change)
    try:
        check_plans(project, expected)
    finally:  # reverted; the next edit's exact sets show anything it left behind
        project.write_params(before)


@pytest.mark.parametrize("module", CODE_EDITS)
def test_a_code_edit_reruns_its_stage_in_both_engines(project, module):
    path = project.path(module)
    text = path.read_text()
    path.write_text(text + "\n# an edit\n")
    try:
        check_plans(project, CODE_EDITS[module])
    finally:
        path.write_text(text)


def test_once_every_edit_is_reverted_neither_engine_has_anything_to_do(project):
    nothing_to_do(project)


# ----------------------------------------------------------------------------------------------
# Whole runs


def test_an_edit_runs_its_whole_consequence_in_both_engines(project):
    edit(project, exp("root", optimizer={"lr": 0.02}))
    planned, _ = snakemake_plan(project)
    expected = train_eval("root", "child") | {"report"}
    assert planned == expected
    assert dvc_repro(project) == expected
    nothing_to_do(project)  # Snakemake takes DVC's results as they are


def test_a_dataset_edit_cascades_and_its_revert_reruns_nothing_after_the_data(project):
    before = edit(project, dataset(split_seed=4))
    planned, _ = snakemake_plan(project)
    everything = {"prepare", "stats", "report", *train_eval(*EXPS)}
    assert planned == everything
    assert dvc_repro(project, "stats") == {"prepare", "stats"}
    assert dvc_changed(project) == everything - {"prepare", "stats"}
    # Back to the old seed: the data come back byte for byte, and so nothing else runs.
    project.write_params(before)
    assert dvc_repro(project, "stats") == {"prepare", "stats"}
    nothing_to_do(project)


# ----------------------------------------------------------------------------------------------
# Two engines at once


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen) -> None:
    """Poll until `condition`; fail if `proc` ends first. No fixed deadline: the engines' own
    runs bound it (seconds here)."""
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: never happened; the run ended:\n{proc.stdout.read()}")
        time.sleep(0.05)


def background(project: Project, *cmd: str) -> subprocess.Popen:
    return subprocess.Popen(
        list(cmd), cwd=project.root, env=project.env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_dvc_started_while_snakemake_runs_stops_and_loses_nothing(project):
    edit(project, exp("other", seed=2))
    with background(project, "snakemake", "--cores", "1", "report") as snakemake:
        # Held from before Snakemake writes anything to its end (three jobs here: seconds).
        lock = project.path(workspace.DVC_LOCK)
        wait_until(lambda: workspace.is_locked(lock) and workspace._held_by_snakemake(lock),
                   "Snakemake holding DVC's lock", snakemake)  # fmt: skip
        refused = project.run("dvc", "repro", check=False)
        holder = json.loads(project.path(workspace.DVC_LOCK).read_text())
        assert snakemake.wait() == 0, snakemake.stdout.read()
    assert refused.returncode != 0
    # DVC's repository lock is Snakemake's while it runs, and the lock file says so.
    assert "Unable to acquire lock" in refused.stdout + refused.stderr
    assert holder["engine"] == "snakemake"
    assert "Running stage" not in refused.stdout  # refused before any stage started
    assert snakemake_plan(project)[0] == set()  # Snakemake's results are whole
    project.run("ladder", "dvc-commit")
    nothing_to_do(project)
    commit_to_git(project)


def test_snakemake_started_while_dvc_runs_stops_and_switching_back_is_free(project):
    with background(project, "dvc", "exp", "run", "-S", "tta.passes=2") as dvc:
        wait_until(lambda: workspace._dvc_processes(project.root), "DVC running", dvc)
        refused = project.snakemake("report", "-n", check=False)
        assert dvc.wait() == 0, dvc.stdout.read()
    assert refused.returncode != 0
    assert "DVC is running in this workspace" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    assert "passes: 2" in project.path("params.yaml").read_text()
    nothing_to_do(project)  # after `dvc exp run`, Snakemake has nothing to do
