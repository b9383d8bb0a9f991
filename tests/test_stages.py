"""One DAG, one source: dvc.yaml is what the stage table generates, Snakemake's jobs are what the
table says (commands, inputs, outputs), and each stage depends on all the code it runs.

These checks read the engines' own views (DVC's parsed index, Snakemake's dry run), so a rule or
stage edited by hand in one engine fails here in seconds, long before a slow end-to-end run would
notice, and whether or not the edited command happens to crash.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO, Project
from ladder import snakefile, stages

EXPERIMENTS = {
    "small": {
        "model": {"name": "mynet", "blocks": 1, "width": 4},
        "augment": {"hflip": 0.0},
        "epochs": 2,
        "checkpoint_every": 1,
    },
    "small_shift": {"base": "small", "augment": {"translate": {"p": 0.5}}},
}
PARAMS = {
    "dataset": {"source": "digits", "image_size": 8},
    "experiments": EXPERIMENTS,
    "run": ["small_shift"],  # the report shows the selected experiments only
}


# ----------------------------------------------------------------------------------------------
# What the table says each job is


def expected_job(stage: stages.Stage, exp: str | None, selected) -> dict:
    """Command, inputs and outputs of one job, from the table alone."""
    at = (lambda p: p.replace("{exp}", exp)) if exp else (lambda p: p)
    inputs = [at(p) for p in stage.deps.values()]
    inputs += [p.replace("{exp}", e) for e in selected for p in stage.each_experiment]
    return {
        "cmd": stage.command(exp),
        "inputs": sorted([*inputs, *stage.code]),
        "outputs": sorted(at(p) for p in stage.out_paths),
    }


# ----------------------------------------------------------------------------------------------
# DVC


def test_dvc_yaml_is_generated_from_the_stage_table():
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == stages.dvc_yaml(), (
        "dvc.yaml differs from the stage table: run `ladder dvc-yaml > dvc.yaml` "
        "(and edit workflow/ladder/stages.py, never dvc.yaml)"
    )


def test_the_dvc_plots_page_is_generated_from_snakemake_s_vega():
    committed = (REPO / stages.PLOTS_PAGE).read_text()
    assert committed == stages.dvc_plots_page(), (
        f"{stages.PLOTS_PAGE} differs from what the pinned Snakemake's Vega gives: run "
        f"`ladder dvc-plots-page > {stages.PLOTS_PAGE}`"
    )


def dvc_disagreements(project: Project) -> list[str]:
    """Where DVC's own reading of the project's dvc.yaml differs from the table."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    found = {}
    with Repo(str(project.root)) as repo:
        for stage in repo.index.stages:
            found[stage.name] = {
                "cmd": stage.cmd,
                "inputs": sorted(
                    d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)
                ),
                "outputs": sorted(o.def_path for o in stage.outs),
            }
    problems = []
    for stage in stages.STAGES.values():
        for exp in EXPERIMENTS if stage.foreach else [None]:
            name = f"{stage.name}@{exp}" if exp else stage.name
            want = expected_job(stage, exp, [])
            at = (lambda p, exp=exp: p.replace("{exp}", exp)) if exp else (lambda p: p)
            want["outputs"] = sorted(at(p) for out in stage.outs.values() for p in out.dvc_paths)
            want["inputs"] = sorted(
                [
                    *want["inputs"],
                    *{p.split("/{exp}")[0] for p in stage.each_experiment},
                    *stage.dvc_deps,  # what DVC reads that Snakemake checks another way
                ]
            )
            got = found.pop(name, None)
            if got != want:
                problems.append(f"DVC stage {name}: {got} != table {want}")
    problems += [f"DVC stage {name} is not in the table" for name in found]
    return problems


def init_dvc(project: Project) -> None:
    project.run("git", "init", "-q")
    project.run("dvc", "init", "-q")


def test_a_damaged_file_s_remedy_names_its_workspace_output_from_a_bucket_s_local_copy_too():
    """A job through a bucket reads Snakemake's local copies (stages.storage_command): the command
    that rebuilds a damaged one names the workspace's output, as in the workspace."""
    copies = ".snakemake/storage/s3/my-bucket/ladder"
    for path in ("results/experiments/a/eval/epoch_001.json", "results/data/prepared/test_x.npy"):
        here = stages.regenerate(path)
        assert "--forcerun" in here
        assert stages.regenerate(f"{copies}/{path}") == here
    assert stages.regenerate("elsewhere/results/cache/report/index.html") == (
        "rerun the stage that writes it"
    )


def test_dvc_reads_every_stage_as_the_table_declares_it(tmp_path):
    project = Project(tmp_path / "p", PARAMS)
    init_dvc(project)
    assert dvc_disagreements(project) == []


def test_an_edited_dvc_yaml_is_caught(tmp_path):
    project = Project(tmp_path / "p", PARAMS)
    init_dvc(project)
    dvc_yaml = project.path("dvc.yaml")
    text = dvc_yaml.read_text()
    # The mistake of the issue: train reads evaluation settings, and still runs.
    cmd = "--settings results/configs/experiments/${key}/train.json"
    assert cmd in text
    dvc_yaml.write_text(text.replace(cmd, cmd.replace("train.json", "evaluate.json")))
    assert any(p.startswith("DVC stage train@small:") for p in dvc_disagreements(project))
    dvc_yaml.write_text(text.replace("    - results/data/stats.json\n", "", 1))
    assert any(p.startswith("DVC stage train@") for p in dvc_disagreements(project))


# ----------------------------------------------------------------------------------------------
# Snakemake


def planned(path: str) -> str:
    """A dry run reads settings files that would change from its overlay (ladder.snakefile):
    the path a run would read instead."""
    overlay = re.escape(snakefile.OVERLAY.as_posix())
    return re.sub(rf"^{overlay}/[^/]+/configs/", f"{stages.CONFIGS}/", path)


def snakemake_jobs(project: Project) -> list[dict]:
    """Every job of `snakemake -n -p --forceall report`: rule, wildcards, files and command."""
    out = project.snakemake("report", "-n", "-p", "--forceall").stdout
    jobs, job = [], None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            job = {"rule": m.group(1), "inputs": [], "outputs": [], "exp": None}
            jobs.append(job)
        elif job is None:
            continue
        elif m := re.match(r"^    (input|output): (.*)$", line):
            job[f"{m.group(1)}s"] = sorted(planned(v.strip()) for v in m.group(2).split(", "))
        elif m := re.match(r"^    wildcards: exp=(\S+)$", line):
            job["exp"] = m.group(1)
        elif line.startswith("Shell command: "):
            job["cmd"] = line.removeprefix("Shell command: ")
    return [j for j in jobs if j["rule"] != "all"]


def snakemake_disagreements(project: Project) -> list[str]:
    """Where Snakemake's rules and jobs differ from the table."""
    selected = project.params.get("run") or list(project.params["experiments"])
    rules = project.snakemake("--list-rules").stdout.split()
    problems = [f"Snakemake rule {r} is not in the table" for r in rules
                if r not in stages.STAGES and r != "all"]  # fmt: skip
    seen = set()
    for job in snakemake_jobs(project):
        stage = stages.STAGES.get(job["rule"])
        if stage is None:
            continue
        seen.add(stage.name)
        want = expected_job(stage, job["exp"], selected)
        got = {k: job.get(k) for k in want}
        if stage.threads_arg:  # Snakemake passes its thread count on; DVC leaves the default
            got["cmd"], n = re.subn(rf" {stage.threads_arg} [1-9]\d*$", "", got["cmd"] or "")
            got["cmd"] += "" if n else " (no thread count)"
        if got != want:
            problems.append(f"Snakemake rule {job['rule']} ({job['exp']}): {got} != table {want}")
    # configure runs when Snakemake loads the workflow (workflow/rules/common.smk)
    missing = set(stages.STAGES) - seen - {"configure"}
    problems += [f"stage {name} has no Snakemake job" for name in sorted(missing)]
    return problems


def test_snakemake_runs_every_stage_as_the_table_declares_it(tmp_path):
    project = Project(tmp_path / "p", PARAMS)
    assert snakemake_disagreements(project) == []


MUTATIONS = {
    "a command": (
        "train.smk",
        'stage_shell("train")',
        'stage_shell("train").replace("train.json", "evaluate.json")',
    ),
    "an input": (
        "evaluate.smk",
        'unpack(stage_inputs("evaluate")),',
        'unpack(stage_inputs("evaluate")),\n        extra="results/data/stats.json",',
    ),
    "an output": (
        "data.smk",
        '**stage_outputs("stats"),',
        '**stage_outputs("stats"),\n        extra="results/data/stats.txt",',
    ),
    "a rule of its own": (
        "report.smk",
        "# One page",
        'rule extra:\n    output:\n        "x.txt",\n    shell:\n        "touch {output}"\n\n\n#',
    ),
}


@pytest.mark.parametrize("what", MUTATIONS)
def test_a_rule_edited_by_hand_is_caught(tmp_path, what):
    rule_file, old, new = MUTATIONS[what]
    project = Project(tmp_path / "p", PARAMS)
    path = project.path(f"workflow/rules/{rule_file}")
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    assert snakemake_disagreements(project), f"{what} edited in {rule_file} went unnoticed"


# ----------------------------------------------------------------------------------------------
# Code dependencies

# What a stage imports from the package but does not list as code: plumbing whose edits cannot
# change a result, so editing it reruns nothing. Each with the reason.
PLUMBING = {
    "ladder/io.py": "atomic writes",
    "ladder/manifest.py": "folder manifests (their digests follow the content)",
    "ladder/digest.py": "content digests (they follow the content)",
    "ladder/provenance.py": "the check that a job's inputs did not change under it",
    "ladder/store.py": "data folders linked back when made again from the same inputs",
    # Which builder a model has and the files it runs reach training and evaluation through
    # each experiment's code.json (ladder.config.model_code; tests/test_registries.py).
    "ladder/model_registry.py": "a model's entry, recorded per experiment in code.json",
    # Likewise a source's entry and files, in download.json and prepare.json.
    "ladder/data/registry.py": "a source's entry, recorded in download.json and prepare.json",
    "ladder/devices.py": "which GPU a job uses",
    "ladder/workspace.py": "locks",
    "ladder/progress.py": "progress log lines",
    "ladder/stages.py": "the stage table (commands reach the engines directly)",
    "ladder/__init__.py": "the package version, recorded separately",
    "ladder/data/__init__.py": "empty",
    # The settings files carry what config.py resolves; train uses it for the fingerprint
    # (a hash) and the checkpoint schedule (from settings, and tested).
    "ladder/config.py": "resolution reaches the stages through the settings files",
}
ENTRY = {
    "configure": "ladder/config.py",
    "download": "ladder/data/download.py",
    "prepare": "ladder/data/prepare.py",
    "stats": "ladder/data/stats.py",
    "train": "ladder/train.py",
    "evaluate": "ladder/evaluate.py",
    "report": "ladder/report/__init__.py",
}
PACKAGE = REPO / "workflow"


def _imports(rel: str) -> set[str]:
    """Package modules `rel` imports (any `ladder...` import, at any depth of the file)."""
    tree = ast.parse((PACKAGE / rel).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ladder"):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("ladder")}
    found = set()
    for name in names:
        path = Path(*name.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if (PACKAGE / candidate).exists():
                found.add(candidate.as_posix())
    return found


def closure(rel: str, plumbing=()) -> set[str]:
    """`rel` and the package modules it imports, directly or through others; what a plumbing
    module imports is its own business (config.py, say, reads the registries to resolve
    params.yaml, which reaches train through the settings files)."""
    seen, todo = set(), [rel]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            if module == rel or module not in plumbing:
                todo += sorted(_imports(module))
    return seen


@pytest.mark.parametrize("name", list(ENTRY))
def test_every_module_a_stage_runs_is_a_code_dependency(name):
    listed = {c.removeprefix("workflow/") for c in stages.STAGES[name].code}
    needed = closure(ENTRY[name], PLUMBING) - set(PLUMBING)
    assert needed <= listed, (
        f"stage {name} runs {sorted(needed - listed)} but does not list it as code in "
        "workflow/ladder/stages.py: editing it would not rerun the stage"
    )
    assert all((REPO / c).exists() for c in stages.STAGES[name].code)


def test_the_code_check_can_fail():
    assert "ladder/optim.py" in closure("ladder/train.py", PLUMBING) - set(PLUMBING)


def test_every_stage_has_an_entry_module():
    assert set(ENTRY) == set(stages.STAGES)


# ----------------------------------------------------------------------------------------------
# The rules' software


def test_the_conda_env_is_generated_from_the_pins():
    committed = (REPO / stages.ENV).read_text()
    assert committed == stages.conda_env(), (
        f"{stages.ENV} differs from pyproject.toml's pins: run `ladder conda-env > {stages.ENV}`"
    )
    assert "torch==2.14.1" in committed  # the pins themselves, not ranges


def test_snakemake_lint_finds_nothing(tmp_path):
    project = Project(tmp_path / "p", PARAMS)
    done = project.run("snakemake", "--lint", check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
