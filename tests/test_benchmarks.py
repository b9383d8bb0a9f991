"""The benchmark scripts run (tiny sizes, CPU): they measure, they do not assert speed.

train_throughput.py has one chance on a GPU, so every path it takes there runs here first, with
the GPU run's loop lengths (warm-up, measured steps, concurrent jobs, TTA passes, DataLoader
workers); only the image sizes shrink."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch
import yaml
from conftest import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "train_throughput.py"
# What the subprocess run below takes on a 2-core machine (65-70 s measured, with other work
# running beside it); it is stopped at 5x that, a bound only a hung run reaches (a worker waiting
# forever), not a slow one.
EXPECTED_SECONDS = 70


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("train_throughput")


def run_script(args: list[str], cwd) -> subprocess.CompletedProcess:
    """The script in its own process group, so a hung run is stopped with its workers."""
    # One thread per process: two OpenMP threads on two busy cores crawl, and nothing is
    # measured here.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=5 * EXPECTED_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"train_throughput.py still running after {5 * EXPECTED_SECONDS} s (about "
            f"{EXPECTED_SECONDS} s expected): hung?\n{out[-6000:]}"
        )
    print(f"train_throughput.py took {time.monotonic() - start:.0f} s\n{out}")
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{out[-6000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


@pytest.mark.slow
def test_train_throughput_runs_every_path_with_the_real_loop_lengths(bench, tmp_path):
    out = tmp_path / "results" / "throughput.json"  # a folder that does not exist yet
    args = ["--quick", "--device", "cpu", "--models", "resnet18_small"]
    proc = run_script([*args, "--work", str(tmp_path / "work"), "--json", str(out)], tmp_path)
    results = json.loads(out.read_text())
    assert results["complete"]
    assert results["failures"] == []

    # The GPU run's loop lengths, not shortened.
    gpu = vars(bench.parse_args([]))
    for key in ("steps", "warmup", "jobs", "loader_workers", "tta_passes", "compile", "sections"):
        assert results["settings"][key] == gpu[key], key
    # Many times the split: the measured loop crosses epochs.
    assert gpu["warmup"] + gpu["steps"] >= 2 * bench.SPLIT_BATCHES

    rows = {(r["model"], r["batch"], r["path"]): r for r in results["rows"]}
    seed = f"seed as written (fp32, PIL, {gpu['loader_workers']} workers)"
    assert set(rows) == {("resnet18_small", 2, seed), ("resnet18_small", 2, "ours eager")}
    for row in rows.values():
        for key in ("images_per_second", "epoch_seconds", "speedup", "tflops"):
            assert row[key] > 0, (row["path"], key)
        assert math.isclose(row["epoch_seconds"], 80_000 / row["images_per_second"])
        assert row["peak_share"] is None  # no known peak for a CPU
    assert rows["resnet18_small", 2, "ours eager"]["first_step_seconds"] > 0
    assert rows["resnet18_small", 2, seed]["first_step_seconds"] is None

    jobs = [int(j) for j in gpu["jobs"].split(",")]
    assert [c["jobs"] for c in results["concurrent"]] == jobs
    for c in results["concurrent"]:
        assert c["images_per_second"] > 0
        assert c["speedup"] > 0
    assert results["tta_seconds"] > 0
    # Each augmentation's cost per image: every op of the registry, mixup and CutMix.
    costs = {a["augmentation"]: a for a in results["augment"]}
    assert list(costs) == list(bench.augmentations())
    assert {op.name for op in bench.OPS} | {"mixup (alpha 0.2)", "cutmix (alpha 1)"} <= set(costs)
    assert all(a["us_per_image"] > 0 for a in costs.values())
    assert costs["none"]["extra_us_per_image"] == 0

    # The printed table: a line per row, the concurrent jobs, TTA.
    assert proc.stdout.count("resnet18_small        2  ") >= 2 * len(rows)
    assert all(f"  {j} job(s): " in proc.stdout for j in jobs)
    assert f"TTA, efficientnet_v2_s, {gpu['tta_passes']} passes" in proc.stdout
    assert all(f"  {name:<28}" in proc.stdout for name in costs)


@pytest.fixture
def one_thread():
    """As OMP_NUM_THREADS=1 does for the subprocess run, in this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model", ["efficientnet_v2_s", "resnet18_small"])
@pytest.mark.usefixtures("one_thread")
def test_each_model_runs_in_both_training_paths(bench, model):
    """Every model of the GPU run (the subprocess run above takes one, for time), in short."""
    args = bench.parse_args(["--quick", "--device", "cpu", "--steps", "2", "--warmup", "1"])
    args.loader_workers = 0
    cpu = torch.device("cpu")
    assert bench.baseline(model, 2, args, cpu)["images_per_second"] > 0
    assert bench.ours(model, 2, args, cpu, "none")["images_per_second"] > 0
    assert bench.flops_per_image(model, args, cpu) > 0


def run_benchmark(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run benchmarks/<script> with args; it must succeed (its stderr tail otherwise)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_batches_cycle_over_epochs_in_a_fresh_order(bench):
    split = bench.DeviceSplit(
        torch.zeros(5, 2, 2, 3, dtype=torch.uint8).numpy(), list(range(5)), "cpu"
    )
    batches = bench.endless_batches(split, 2)
    epochs = [[next(batches)[1].tolist() for _ in range(2)] for _ in range(20)]  # 40 steps
    for epoch in epochs:  # 2 full batches of distinct images, the 5th image left out
        seen = epoch[0] + epoch[1]
        assert len(seen) == len(set(seen)) == 4
    assert len({str(e) for e in epochs}) > 1
    with pytest.raises(ValueError, match="no full batch"):
        next(bench.endless_batches(split, 6))


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA GeForce RTX 4090", None),
        ("x86_64", None),
    ],
)
def test_peak_flops_by_device_name(bench, name, tflops):
    assert bench.peak_flops(name) == (tflops and tflops * 1e12)
    assert bench.peak_flops(name, override_tflops=500) == 500e12


def test_a_failed_measurement_is_reported_and_the_others_still_run(
    bench, tmp_path, monkeypatch, capsys
):
    """The failure path, run here with stand-ins for the measurements (all of them quick)."""

    def broken(*_args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bench, "flops_per_image", lambda *_: 1e9)
    monkeypatch.setattr(bench, "baseline", lambda *_: {"images_per_second": 100.0})
    monkeypatch.setattr(bench, "ours", broken)
    monkeypatch.setattr(bench, "concurrent", lambda jobs, *_: 50.0 * jobs)
    monkeypatch.setattr(bench, "tta_seconds", broken)
    monkeypatch.setattr(bench, "augment_seconds", lambda *_: 2e-5)
    out = tmp_path / "r.json"
    results = bench.main(["--device", "cpu", "--models", "resnet18_small", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["complete"]
    assert len(results["failures"]) == 3  # ours at batch 32 and 256, TTA
    assert all("RuntimeError: out of memory" in f for f in results["failures"])
    eager = [r for r in results["rows"] if r["path"] == "ours eager"]
    assert [r["images_per_second"] for r in eager] == [None, None]
    assert all(r["speedup"] is None and r["epoch_seconds"] is None for r in eager)
    seed = [r for r in results["rows"] if r["path"].startswith("seed")]
    assert [(r["speedup"], r["tflops"]) for r in seed] == [(1.0, 0.1), (1.0, 0.1)]
    assert [c["speedup"] for c in results["concurrent"]] == [0.5, 1.0, 2.0]
    assert results["tta_seconds"] is None
    assert {a["us_per_image"] for a in results["augment"]} == {20.0}
    printed = capsys.readouterr().out
    assert "FAILED resnet18_small batch 32 eager: RuntimeError: out of memory" in printed
    assert "3 measurement(s) failed" in printed


def test_compiled_rows_come_last_largest_batch_first(bench, tmp_path, monkeypatch):
    """The compiled section's loop, which only CUDA reaches (Learner.build compiles there only),
    with a stand-in for the step."""
    calls = []

    def compiled_step(model, batch, _args, _device, mode):
        calls.append((model, batch, mode))
        return {"images_per_second": 10.0 * batch, "first_step_seconds": 30.0}

    monkeypatch.setattr(bench, "ours", compiled_step)
    out = tmp_path / "r.json"
    run = bench.Run(bench.parse_args(["--device", "cpu", "--json", str(out)]), torch.device("cpu"))
    run.device = torch.device("cuda")  # only the section's "is this CUDA?" reads it here
    run.flops = dict.fromkeys(bench.MODELS, 1e9)
    bench.measure_compiled(run)
    assert calls == [(m, b, "default") for b in (256, 32) for m in bench.MODELS]
    rows = json.loads(out.read_text())["rows"]
    assert [r["path"] for r in rows] == ["ours compiled (default)"] * 4
    assert [r["images_per_second"] for r in rows] == [2560, 2560, 320, 320]
    assert all(r["first_step_seconds"] == 30 and r["tflops"] > 0 for r in rows)


def test_memory_benchmark_runs_every_row_at_tiny_sizes(tmp_path):
    # --before names this checkout here: the path that runs another tree's trainer runs too.
    out = tmp_path / "memory.json"
    args = [
        "--train",
        "1024",
        "--val",
        "64",
        "--size",
        "8",
        "--json",
        str(out),
        "--before",
        str(REPO),
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory.py"), *args],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert list(rows) == [
        "load + 1 epoch of gathers, whole",
        "load + 1 epoch of gathers, mapped",
        "ladder train, 1 epoch of a tiny model (this checkout)",
        "ladder train, 1 epoch of a tiny model (before)",
    ]
    assert all(r["anon_mb"] > 0 and r["hwm_mb"] >= r["anon_mb"] for r in rows.values()), rows
    assert "peak anon MB" in result.stdout


def test_verification_benchmark_runs_every_row_at_tiny_sizes(tmp_path):
    out = tmp_path / "verification.json"
    args = ["--work", str(tmp_path / "work"), "--train", "64", "--val", "16", "--test", "16",
            "--size", "8", "--checkpoints", "2", "--checkpoint-mb", "0.5", "--files", "50",
            "--repeats", "1", "--json", str(out)]  # fmt: skip
    run_benchmark("verification.py", args)
    rows = json.loads(out.read_text())["rows"]
    stages_checked = {r["what"].split(":")[0] for r in rows if "prepared" in r["what"]}
    assert stages_checked == {"train", "evaluate", "stats"}
    assert {r["algorithm"] for r in rows if r["gb"]} == {"xxh3_128", "blake2b"}
    assert any(r["what"].startswith("planning: listing 50 files") for r in rows)


def test_prepare_benchmark_runs_as_written_at_tiny_sizes(tmp_path):
    args = ["--work", str(tmp_path), "--classes", "3", "--train-per-class", "6", "--val", "6",
            "--workers", "1"]  # fmt: skip
    result = run_benchmark("prepare.py", args)
    assert "images: {'train': 14, 'val': 4, 'test': 6}" in result.stdout
    assert re.search(r"^prepare +\d", result.stdout, re.M)


def test_stopping_benchmark_runs_every_row_at_tiny_sizes(tmp_path):
    out = tmp_path / "stopping.json"
    args = ["--train", "256", "--size", "8", "--batch", "16", "--points", "0.5",
            "--json", str(out)]  # fmt: skip
    result = run_benchmark("stopping.py", args)
    rows = {r["signal"]: r for r in json.loads(out.read_text())}
    assert rows["SIGTERM"]["exit_status"] == 128 + signal.SIGTERM
    assert rows["SIGTERM"]["lost_steps"] == 0  # it resumes at the step it stopped after
    assert 0 < rows["SIGTERM"]["saved_seconds"] < rows["SIGTERM"]["exit_seconds"]
    assert rows["SIGKILL"]["saved_seconds"] is None
    assert rows["SIGKILL"]["exit_status"] == -signal.SIGKILL
    assert rows["SIGKILL"]["lost_steps"] >= 8  # back to the start of epoch 2 (16 steps)
    assert "lost steps" in result.stdout


def test_resolution_benchmark_runs_every_row_at_tiny_sizes(tmp_path):
    out = tmp_path / "resolution.json"
    args = ["--sizes", "5", "20", "--repeats", "1", "--before", str(REPO), "--json", str(out)]
    result = run_benchmark("resolution.py", args)
    rows = json.loads(out.read_text())
    assert set(rows) == {"this checkout", "before"}
    assert {n: r["experiments"] for n, r in rows["before"].items()} == {"5": 5, "20": 20}
    assert "exponent" in result.stdout


def test_startup_benchmark_runs_every_row(tmp_path):
    out = tmp_path / "startup.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "startup.py"), "--repeats", "1",
         "--json", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 6
    assert all(r["cpu_s"] > 0 and r["wall_s"] > 0 for r in rows.values()), rows
    # Nothing to do costs no more than starting torch and exiting (2 s of slack for a busy
    # machine: the floor alone is 2 to 3 CPU-s).
    floor = rows["import torch (the floor) (this checkout)"]["cpu_s"]
    assert rows["ladder evaluate, all cached (this checkout)"]["cpu_s"] < floor + 2


def test_scheduler_benchmark_runs_both_rows(tmp_path):
    # The real run on a one-experiment, one-epoch config; the full ladder's dry run as written.
    tiny = tmp_path / "tiny.yaml"
    params = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    first = next(iter(params["experiments"]))
    params["experiments"] = {first: {**params["experiments"][first], "epochs": 1}}
    tiny.write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scheduler.py"), "--demo-config", str(tiny)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^  (full ladder, dry run|demo, real run) +(\S+) +(\S+)$", result.stdout,
                      re.M)  # fmt: skip
    assert [what for what, _, _ in rows] == ["full ladder, dry run", "demo, real run"]
    assert all(float(cpu) > 0 for _, cpu, _ in rows), result.stdout


def test_planning_benchmark_runs_every_row_at_tiny_sizes(tmp_path):
    out = tmp_path / "planning.json"
    args = ["--sizes", "2", "--json", str(out)]  # one size: each size costs 5 CPU-s of setup
    result = run_benchmark("planning.py", args)
    rows = json.loads(out.read_text())["this checkout"]
    assert set(rows) == {"snakemake -n", "dvc status"}
    assert all(set(by_size) == {"2"} for by_size in rows.values()), rows
    assert all(cpu > 0 for by_size in rows.values() for cpu in by_size.values()), rows
    assert "exponent" in result.stdout


@pytest.mark.slow  # about 35 CPU-s: four scratch DVC projects, each importing and preparing
def test_data_in_dvc_benchmark_runs_every_row_at_tiny_sizes(tmp_path):
    out = tmp_path / "data_in_dvc.json"
    args = ["--work", str(tmp_path / "work"), "--sizes", "100,150", "--before", str(REPO),
            "--json", str(out)]  # fmt: skip
    result = run_benchmark("data_in_dvc.py", args)
    rows = json.loads(out.read_text())
    assert set(rows) == {"this checkout", f"before ({REPO})"}
    for by_size in rows.values():
        assert set(by_size) == {"100", "150"}
        for row in by_size.values():
            assert row["dvc status CPU-s"] > 0, row
            assert row["disk MB"] > 0, row
            # Linked to the data store (results/cache/data) at least, and, this checkout's, to
            # the dataset folder and DVC's cache where the file system has hard links.
            assert row["raw image links"] >= 2, row
            assert row["prepared array links"] >= 2, row
    assert result.stdout.count("per 1000") == 2


def test_data_in_dvc_benchmark_times_the_import_alone(tmp_path):
    out = tmp_path / "import.json"
    args = ["--work", str(tmp_path / "work"), "--sizes", "100", "--import-only",
            "--json", str(out)]  # fmt: skip
    run_benchmark("data_in_dvc.py", args)
    (row,) = json.loads(out.read_text())["this checkout"].values()
    assert set(row) == {"import CPU-s", "import CPU-s per 1000"}, row
    assert row["import CPU-s per 1000"] == pytest.approx(row["import CPU-s"] * 10)


def test_data_in_dvc_benchmark_adds_the_dataset_as_an_archive(tmp_path):
    out = tmp_path / "archive.json"
    args = ["--work", str(tmp_path / "work"), "--sizes", "100", "--archive",
            "--json", str(out)]  # fmt: skip
    run_benchmark("data_in_dvc.py", args)
    rows = json.loads(out.read_text())
    assert set(rows) == {"this checkout", "this checkout, archive"}
    with tarfile.open(tmp_path / "work" / "images-100.tar") as tf:
        names = tf.getnames()
    assert names == sorted(names)  # packed in order, under the one top-level folder
    assert "images/c000/0000000.png" in names
    assert len([n for n in names if n.endswith(".png")]) == 100
    (row,) = rows["this checkout, archive"].values()
    assert row["dvc status CPU-s"] > 0, row
    assert row["raw image links"] >= 2, row  # extracted, and linked into the data store


def test_no_benchmark_script_shadows_an_installed_module():
    """tests/test_report_browser.py puts benchmarks/ on sys.path: a script named like an installed
    package (dvc_data.py did) then replaces it for every test after it in that worker."""
    installed = set(importlib.metadata.packages_distributions())
    clashes = [p.name for p in (REPO / "benchmarks").glob("*.py") if p.stem in installed]
    assert not clashes, f"benchmarks/{clashes}: rename, an installed package has that name"
