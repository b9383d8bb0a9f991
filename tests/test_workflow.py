"""The Snakemake workflow as users run it: the seed's ladder planned, the demo run end to end."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml
from conftest import REPO, Project
from ladder import config, manifest


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("\n\n")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_the_seed_ladder_plans_every_stage(tmp_path):
    project = Project(tmp_path / "p", yaml.safe_load((REPO / "params.yaml").read_text()))
    # The target first: Snakemake's --resources takes every word after it.
    out = project.snakemake("report", "-n", "--cores", "1", "--resources", "gpu=1").stdout
    params = config.load(REPO / "params.yaml")
    counts = job_counts(out)
    assert counts["download"] == counts["prepare"] == counts["stats"] == counts["report"] == 1
    assert counts["train"] == len(params.experiments) == 26
    # One evaluation process per experiment, however many checkpoints it has.
    assert counts["evaluate"] == len(params.experiments)
    assert set(counts) == {"download", "prepare", "stats", "train", "evaluate", "report", "total"}


def test_a_part_of_the_ladder(tmp_path):
    project = Project(tmp_path / "p", yaml.safe_load((REPO / "params.yaml").read_text()))
    out = project.snakemake("report", "-n", "--config", "run=[effnet_final]").stdout
    counts = job_counts(out)
    assert counts["train"] == counts["evaluate"] == 1


def test_lint_finds_nothing_but_the_deployment_choice(tmp_path):
    """`snakemake --lint` passes but for per-rule conda environments: the workflow deploys with
    the project's own virtualenv (make install), which pins every dependency."""
    project = Project(tmp_path / "p", yaml.safe_load((REPO / "params.yaml").read_text()))
    proc = project.snakemake("--lint", check=False)
    lints = set(re.findall(r"^    \* (.+?):$", proc.stdout + proc.stderr, flags=re.M))
    assert lints == {"Specify a conda environment or container for each rule."}


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_the_cpu(tmp_path):
    project = Project(
        tmp_path / "demo", yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    )
    project.snakemake("--cores", "2", "report")
    params = config.load(project.path("params.yaml"))

    with project.path("results/report/ladder.csv").open() as f:
        ladder = list(csv.DictReader(f))
    assert [r["experiment"] for r in ladder] == list(params.experiments)
    for name, exp in params.experiments.items():
        run = project.path(f"results/experiments/{name}")
        evals = sorted(manifest.read(run / "eval")["files"])
        assert evals == [f"epoch_{e:03d}.json" for e in exp.checkpoint_epochs]
        last = json.loads((run / "eval" / evals[-1]).read_text())
        assert last["val"]["acc"] > 0.3  # digits: chance is 0.1
        assert (last["tta"] is not None) == (exp.evaluate["passes"] > 0)
    html = project.path("results/report/index.html").read_text()
    assert html.count("<tr") >= len(params.experiments)

    assert "Nothing to be done" in project.snakemake("-n", "report").stdout
    project.snakemake("--report", "report.html")
    assert project.path("report.html").stat().st_size > 10_000
