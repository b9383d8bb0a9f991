"""The Snakemake workflow as users run it: the seed's ladder planned, the demo run end to end."""

from __future__ import annotations

import csv
import json
import re
import sys

import pytest
import yaml
from conftest import REPO, Project
from ladder import config, manifest

sys.path.insert(0, str(REPO / "docs"))
import screenshot  # docs/screenshot.py: the README's picture


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
    assert counts["train"] == len(params.experiments) == 31
    # One evaluation process per experiment, however many checkpoints it has.
    assert counts["evaluate"] == len(params.experiments)
    assert set(counts) == {"download", "prepare", "stats", "train", "evaluate", "report", "total"}


def test_a_part_of_the_ladder(tmp_path):
    project = Project(tmp_path / "p", yaml.safe_load((REPO / "params.yaml").read_text()))
    out = project.snakemake("report", "-n", "--config", "run=[effnet_final]").stdout
    counts = job_counts(out)
    assert counts["train"] == counts["evaluate"] == 1


@pytest.mark.slow
def test_the_demo_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch):
    """The demo as `make demo` runs it (about a minute on 2 idle cores): every rung learns, the
    logs show progress during epochs without a terminal, TensorBoard can read every run, and
    the README's picture can be taken from its report."""
    project = Project(
        tmp_path / "demo", yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    )
    monkeypatch.setenv("LADDER_PROGRESS_SECONDS", "1")
    project.snakemake("report", expected=60)
    params = config.load(project.path("params.yaml"))

    with project.path("results/report/ladder.csv").open() as f:
        ladder = {r["experiment"]: r for r in csv.DictReader(f)}
    for name, exp in params.experiments.items():
        run = project.path(f"results/experiments/{name}")
        evals = sorted(f for f in manifest.read(run / "eval")["files"] if f.endswith(".json"))
        assert evals == [f"epoch_{e:03d}.json" for e in exp.checkpoint_epochs]
        last = json.loads((run / "eval" / evals[-1]).read_text())
        assert last["val"]["acc"] >= 0.5, name  # every rung learns: chance is 0.1
        assert (last["tta"] is not None) == (exp.evaluate["passes"] > 0)
    # The story the demo tells (config/demo.yaml): flips hurt, shifts help.
    assert float(ladder["cnn_flip"]["delta_test_vs_parent"]) < 0
    assert float(ladder["cnn_shift"]["delta_test_vs_parent"]) > 0
    # cnn ran with two seeds: one row, their mean and spread; every Δ carries its test.
    assert "cnn_s1" not in ladder
    assert ladder["cnn"]["replicates"] == "2"
    assert ladder["cnn"]["replicate_names"] == "cnn_s1"
    assert float(ladder["cnn"]["test_acc_sd"]) >= 0
    for name in ("cnn_flip", "cnn_shift", "resnet_small"):
        assert 0 <= float(ladder[name]["p_vs_parent"]) <= 1
        assert ladder[name]["within_noise"] in ("True", "False")
    assert "within noise" in project.path("results/report/index.html").read_text()

    # Progress while an epoch runs, in the job's log (no terminal under Snakemake).
    log = project.path("logs/train/resnet_small.log").read_text()
    assert re.search(r"resnet_small epoch 1/3 step \d+/\d+ \(\d+%\), \d+ img/s; epoch ETA", log)
    # TensorBoard reads every run's event files.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, exp in params.experiments.items():
        events = EventAccumulator(str(project.path(f"results/experiments/{name}/tensorboard")))
        events.Reload()
        accuracies = [point.value for point in events.Scalars("epoch/val_acc")]
        assert len(accuracies) == exp.train["epochs"], name
        assert all(1 < a <= 100 for a in accuracies), (name, accuracies)  # percent, as the logs'
    log = project.path("logs/evaluate/cnn.log").read_text()
    assert re.search(r"cnn epoch 1: val \d+\.\d\d% test \d+\.\d\d%", log), log[-500:]

    assert "Nothing to be done" in project.snakemake("-n", "report").stdout
    # --report and --summary plan no jobs: they need no --cores (no rule's threads read it).
    project.run("snakemake", "--report", "report.html")
    assert project.path("report.html").stat().st_size > 10_000
    summary = project.run("snakemake", "--summary").stdout
    assert "results/report/index.html" in summary
    assert "no update" in summary
    if not screenshot.missing():  # the README's picture, from this report
        png = tmp_path / "report.png"
        screenshot.screenshot(project.path("results/report/index.html"), png)
        assert png.stat().st_size > 20_000
