"""The benchmark scripts run (tiny sizes, CPU): they measure, they do not assert speed."""

from __future__ import annotations

import importlib.util
import math

import pytest
from conftest import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_runs_end_to_end_on_the_cpu(tmp_path):
    bench = load("train_throughput")
    argv = ["--quick", "--device", "cpu", "--models", "resnet18_small", "--work", str(tmp_path)]
    results = bench.main(argv)
    paths = [r["path"] for r in results["rows"]]
    assert paths == ["seed as written (fp32, PIL, 2 workers)", "ours eager"]  # no compile on CPU
    for row in results["rows"]:
        assert row["images_per_second"] > 0
        assert math.isclose(row["epoch_seconds"], 80_000 / row["images_per_second"])
    assert set(results["concurrent"]) == {1, 2}
    assert all(v > 0 for v in results["concurrent"].values())
    assert results["tta_seconds"] > 0
