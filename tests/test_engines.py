"""One DAG, two engines: Snakemake and DVC declare the same outputs and inputs, rerun the same
work after each kind of edit, and hand results to each other.

Rerun tests use two copies of a small project: one built and kept up to date by Snakemake, one
by `dvc repro`. After each edit, what `snakemake -n` plans in the first must be what `dvc repro`
runs in the second. The engines differ in one declared way: Snakemake runs one job per
settings file, per experiment and per checkpoint, DVC one `configure` stage and one evaluation
stage per experiment; jobs are compared after mapping them to DVC's stages.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, Project
from ladder.code import CODE

pytestmark = pytest.mark.slow

EXPERIMENTS = {
    "small": {
        "model": {"name": "mynet", "blocks": 1, "width": 4},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
        "batch_size": 64,
        "epochs": 1,
        "log_every": 5,
    },
    "small_shift": {"base": "small", "augment": {"translate": {"p": 0.5}}, "tta": {"passes": 2}},
    "other": {
        "model": {"name": "mynet", "blocks": 1, "width": 6},
        "augment": {"hflip": 0.0},
        "epochs": 1,
    },
}
PARAMS = {
    "dataset": {"source": "digits", "image_size": 8},
    "tta": {"passes": 1},
    "experiments": EXPERIMENTS,
}


# ----------------------------------------------------------------------------------------------
# Reading each engine's view


@dataclass
class Job:
    rule: str
    wildcards: dict = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def stage(self) -> str:
        """The DVC stage that does this job's work."""
        if self.rule in ("train", "evaluate"):
            return f"{self.rule}@{self.wildcards['exp']}"
        return self.rule


def snakemake_plan(project: Project, *args: str) -> list[Job]:
    """The jobs `snakemake -n` would run, with their files."""
    out = project.snakemake("-n", *args).stdout
    jobs, job = [], None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            job = Job(m.group(1))
            jobs.append(job)
        elif job is not None and (m := re.match(r"^    (input|output|wildcards): (.*)$", line)):
            key, value = m.groups()
            items = [v.strip() for v in value.split(", ")]
            if key == "wildcards":
                job.wildcards = dict(item.split("=", 1) for item in items)
            else:
                setattr(job, f"{key}s", items)
    return [j for j in jobs if j.rule != "all"]


def dvc_stages(project: Project) -> dict[str, tuple[set[str], set[str]]]:
    """DVC stage name -> (file dependencies, outputs), foreach expanded."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = {}
    with Repo(str(project.root)) as repo:
        for stage in repo.index.stages:
            deps = {d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)}
            stages[stage.name] = (deps, {o.def_path for o in stage.outs})
    return stages


def dvc_repro(project: Project) -> set[str]:
    """Run `dvc repro`; return the stages it really ran (not the ones it found unchanged)."""
    out = project.run("dvc", "repro", "--no-run-cache").stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def covering(path: str, candidates) -> str | None:
    """The candidate equal to `path` or the nearest folder above it."""
    best = None
    for c in candidates:
        if (path == c or path.startswith(c.rstrip("/") + "/")) and (
            best is None or len(c) > len(best)
        ):
            best = c
    return best


def work(stages) -> set[str]:
    """Stages that compute something: all but `configure`, which both engines rerun on any edit
    that changes a settings file (DVC: the one stage; Snakemake: the changed files' jobs)."""
    return {s for s in stages if s != "configure"}


# ----------------------------------------------------------------------------------------------
# Fixtures: the same project built by each engine


def init_dvc(project: Project) -> None:
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", project.path(".dvc/config"))


def tree_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (".gitignore", ".snakemake_timestamp")
    }


@pytest.fixture(scope="module")
def by_snakemake(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("engines") / "snakemake", PARAMS)
    init_dvc(project)
    project.snakemake("report")
    return project


@pytest.fixture(scope="module")
def by_dvc(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("engines") / "dvc", PARAMS)
    init_dvc(project)
    dvc_repro(project)
    return project


# ----------------------------------------------------------------------------------------------
# The declared DAGs


def test_code_dependencies_are_the_same_in_both_engines():
    import yaml

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, files in CODE.items():
        spec = dvc[stage].get("do", dvc[stage])
        declared = {d for d in spec["deps"] if d.startswith("workflow/")}
        assert declared == {f"workflow/ladder/{f}" for f in files}, stage


def test_both_engines_declare_the_same_outputs_and_inputs(tmp_path):
    project = Project(tmp_path / "p", PARAMS)
    init_dvc(project)
    jobs = snakemake_plan(project, "--forceall", "report")
    stages = dvc_stages(project)
    owner = {out: name for name, (_, outs) in stages.items() for out in outs}

    seen_inputs: dict[str, set[str]] = {name: set() for name in stages}
    seen_outputs: dict[str, set[str]] = {name: set() for name in stages}
    for job in jobs:
        for out in job.outputs:
            declared = covering(out, owner)
            assert declared, f"Snakemake rule {job.rule} writes {out}, which no DVC stage declares"
            stage = owner[declared]
            assert stage.split("@")[0] == job.rule, f"{out}: rule {job.rule} but DVC stage {stage}"
            seen_outputs[stage].add(declared)
            for inp in job.inputs:
                dep = covering(inp, stages[stage][0])
                assert dep, f"{job.rule} reads {inp}, which DVC stage {stage} does not depend on"
                seen_inputs[stage].add(dep)
    for name, (deps, outs) in stages.items():
        assert seen_outputs[name] == outs, f"DVC stage {name} has outputs no Snakemake rule makes"
        # configure resolves params.yaml: DVC tracks the resolver's code, Snakemake the resolved
        # content of each file (its params), so an edit to the resolver reruns it in both.
        expected = deps - (
            {"workflow/ladder/config.py", "workflow/schemas/params.schema.yaml"}
            if name == "configure"
            else set()
        )
        assert seen_inputs[name] == expected, (
            f"DVC stage {name}: dependencies differ from Snakemake's inputs"
        )


def test_a_rule_in_one_engine_only_is_caught(tmp_path):
    project = Project(tmp_path / "p", PARAMS)
    with project.path("workflow/rules/report.smk").open("a") as f:
        f.write('\n\nrule extra:\n    input:\n        "results/report/ladder.csv",\n    output:\n'
                '        "results/extra.txt",\n    shell:\n        "touch {output}"\n')  # fmt: skip
    init_dvc(project)
    jobs = snakemake_plan(project, "--forceall", "results/extra.txt")
    owner = {o: n for n, (_, outs) in dvc_stages(project).items() for o in outs}
    assert [j.outputs for j in jobs if covering(j.outputs[0], owner) is None] == [
        ["results/extra.txt"]
    ]


# ----------------------------------------------------------------------------------------------
# The same files, and handing results over


def test_dvc_writes_the_same_files_as_snakemake(by_snakemake, by_dvc):
    a, b = tree_digests(by_snakemake.path("results")), tree_digests(by_dvc.path("results"))
    assert sorted(a) == sorted(b)
    # Deterministic on the CPU: settings, data, weights. (Timings and logs differ.)
    for name in a:
        if name.startswith(("configs/", "data/")) or name.endswith(".pt"):
            assert a[name] == b[name], name


def test_snakemake_results_committed_to_dvc_are_up_to_date(by_snakemake):
    by_snakemake.run("dvc", "commit", "--force")
    assert "up to date" in by_snakemake.run("dvc", "status").stdout
    assert dvc_repro(by_snakemake) == set()


def test_push_delete_pull_restores_everything(by_snakemake, tmp_path):
    project = by_snakemake
    project.run("dvc", "commit", "--force")
    project.run("dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    project.run("dvc", "push")
    before = tree_digests(project.path("results"))
    shutil.rmtree(project.path("results"))
    shutil.rmtree(project.path(".dvc/cache"))
    project.run("dvc", "pull")
    after = tree_digests(project.path("results"))
    assert after == {k: v for k, v in before.items() if k in after}
    assert set(before) - set(after) == set()
    assert "up to date" in project.run("dvc", "status").stdout
    assert snakemake_plan(project, "report") == []


# ----------------------------------------------------------------------------------------------
# Edits rerun exactly what they affect, in both engines


def edit(projects, change) -> None:
    for project in projects:
        params = project.params
        change(params)
        project.write_params(params)


def compare(by_snakemake: Project, by_dvc: Project) -> tuple[set[str], list[Job]]:
    jobs = snakemake_plan(by_snakemake, "report")
    planned = {j.stage for j in jobs}
    ran = dvc_repro(by_dvc)
    assert work(planned) == work(ran)
    assert ("configure" in planned) == ("configure" in ran)
    by_snakemake.snakemake("report")  # bring the Snakemake copy up to date for the next edit
    assert snakemake_plan(by_snakemake, "report") == []
    return work(ran), jobs


def test_edit_lr_reruns_the_experiment_and_its_descendants(by_snakemake, by_dvc):
    edit([by_snakemake, by_dvc], lambda p: p["experiments"]["small"]["optimizer"].update(lr=0.02))
    ran, jobs = compare(by_snakemake, by_dvc)
    assert ran == {
        "train@small",
        "train@small_shift",
        "evaluate@small",
        "evaluate@small_shift",
        "report",
    }
    configured = {j.wildcards["name"] for j in jobs if j.rule == "configure"}
    assert configured == {"experiments/small/train", "experiments/small_shift/train"}


def test_edit_tta_passes_reruns_evaluations_and_report(by_snakemake, by_dvc):
    edit([by_snakemake, by_dvc], lambda p: p["tta"].update(passes=3))
    ran, _ = compare(by_snakemake, by_dvc)
    # small_shift sets its own passes: only the experiments that inherit the top-level value
    assert ran == {"evaluate@small", "evaluate@other", "report"}


def test_edit_split_seed_reruns_everything_from_prepare_on(by_snakemake, by_dvc):
    edit([by_snakemake, by_dvc], lambda p: p["dataset"].update(split_seed=7))
    ran, _ = compare(by_snakemake, by_dvc)
    exps = EXPERIMENTS.keys()
    assert ran == {
        "prepare",
        "stats",
        "report",
        *(f"{s}@{e}" for s in ("train", "evaluate") for e in exps),
    }


def test_adding_an_experiment_runs_only_its_jobs_and_the_report(by_snakemake, by_dvc):
    edit(
        [by_snakemake, by_dvc],
        lambda p: p["experiments"].update(added={"base": "other", "seed": 1}),
    )
    ran, _ = compare(by_snakemake, by_dvc)
    assert ran == {"train@added", "evaluate@added", "report"}


def test_a_code_edit_reruns_its_stages_and_can_be_adopted_without_rerunning(by_snakemake, by_dvc):
    for project in (by_snakemake, by_dvc):
        with project.path("workflow/ladder/evaluate.py").open("a") as f:
            f.write("\n# a comment: the code changed, its results did not\n")
    jobs = snakemake_plan(by_snakemake, "report")
    experiments = by_snakemake.params["experiments"]
    assert work({j.stage for j in jobs}) == {f"evaluate@{e}" for e in experiments} | {"report"}
    # Keep the results: Snakemake marks them up to date, DVC records the new code hash.
    by_snakemake.snakemake("--touch", "report")
    assert snakemake_plan(by_snakemake, "report") == []
    by_dvc.run("dvc", "commit", "--force")
    assert dvc_repro(by_dvc) == set()
