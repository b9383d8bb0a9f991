"""benchmarks/report.py runs (small data, a three-rung ladder, this tree timed twice): it builds
inputs the report accepts, with predictions, and prints what BENCHMARKS.md records."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from conftest import REPO
from report_fixtures import PARAMS


def run_benchmark(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/report.py on the fixture's ladder, this tree as both trees, at small shapes."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    workflow = str(REPO / "workflow")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "report.py"),
            *("--params", str(params), "--before", workflow),
            *("--shape", "4", "200", "100", "400", "16"),
            *args,
        ],
        env={**os.environ, "PYTHONPATH": workflow, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_report_benchmark_runs_on_small_data(tmp_path):
    lines = run_benchmark(tmp_path, "--repeat", "1").stdout.splitlines()
    assert (
        "inputs: 3 experiments, 9 checkpoints, 200 val / 100 test images, 4 classes" in (lines[1])
    )
    assert lines[2].lstrip().startswith("before: build_report")
    assert lines[3].lstrip().startswith("after: build_report")
    assert lines[4].lstrip().startswith("added:")


def test_report_benchmark_scales_the_ladder_and_prints_the_growth(tmp_path):
    """--experiments: ladders of 3 and 5 experiments (the fixture's three, then a copy cut
    short), the before tree only up to 3, and each tree's growth exponent."""
    out = run_benchmark(tmp_path, "--before-max", "3", "--experiments", "3", "5").stdout
    assert "3 experiments, 9 checkpoints" in out
    assert "5 experiments, 15 checkpoints" in out
    assert "before: not run (--before-max 3)" in out
    assert out.count("torch imported: False") == 3
    assert "after: growth exponent (log-log slope, 3..5 experiments): CPU" in out
