"""GPU leases: jobs sharing a machine's GPUs each get their own slot, tested with fake GPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import Deadline, finish
from ladder import devices

JOB = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from ladder import devices
    gpus, per_gpu, hold = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[5])
    lease_dir, record = Path(sys.argv[3]), Path(sys.argv[4])
    if sys.argv[6:] == ["nowait"]:  # a free slot now, or exit 3
        held = devices._try_lease(gpus, per_gpu, lease_dir)
        if held is None:
            sys.exit(3)
        record.write_text(json.dumps({"gpu": held[0], "start": time.time()}))
        sys.exit(0)
    with devices.lease(gpus, per_gpu, lease_dir, poll_seconds=0.02) as gpu:
        start = time.time()
        record.write_text(json.dumps({"gpu": gpu, "start": start}))
        time.sleep(hold)
        record.write_text(json.dumps({"gpu": gpu, "start": start, "end": time.time()}))
    """
)


def job(
    gpus: str, per_gpu: int, lease_dir: Path, record: Path, hold: float, *flags: str
) -> subprocess.Popen:
    args = [gpus, str(per_gpu), str(lease_dir), str(record), str(hold), *flags]
    return subprocess.Popen([sys.executable, "-c", JOB, *args])


def test_jobs_never_exceed_their_slots_per_gpu(tmp_path):
    records = [tmp_path / f"job{i}.json" for i in range(10)]
    procs = [job("0,1", 2, tmp_path / "leases", r, hold=0.4) for r in records]
    for p in procs:
        assert finish(p, "ten jobs through two GPUs' slots", expected=5) == 0
    spans = [json.loads(r.read_text()) for r in records]
    assert {s["gpu"] for s in spans} == {"0", "1"}
    for gpu in ("0", "1"):
        mine = [s for s in spans if s["gpu"] == gpu]
        # at every start, count the jobs of this GPU running at that moment
        busiest = max(sum(o["start"] <= s["start"] < o["end"] for o in mine) for s in mine)
        assert busiest <= 2, f"GPU {gpu} had {busiest} jobs at once"
    assert max(s["end"] for s in spans) - min(s["start"] for s in spans) >= 0.4 * 10 / 4 * 0.9


def test_a_killed_jobs_slot_is_free_at_once(tmp_path):
    holder = job("0", 1, tmp_path / "leases", tmp_path / "holder.json", hold=60)
    deadline = Deadline("a job taking its slot", expected=3)
    while not (tmp_path / "holder.json").exists():
        deadline.check()
        time.sleep(0.02)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # "nowait": the follower exits 3 unless a slot is free the moment it asks
    follower = job("0", 1, tmp_path / "leases", tmp_path / "follower.json", 0, "nowait")
    assert finish(follower, "a job taking a free slot", expected=3) == 0
    assert json.loads((tmp_path / "follower.json").read_text())["gpu"] == "0"


def test_waiting_job_gets_the_slot_when_it_frees(tmp_path):
    first = job("7", 1, tmp_path / "leases", tmp_path / "a.json", hold=0.5)
    deadline = Deadline("a job taking its slot", expected=3)
    while not (tmp_path / "a.json").exists():
        deadline.check()
        time.sleep(0.02)
    second = job("7", 1, tmp_path / "leases", tmp_path / "b.json", hold=0)
    assert finish(first, "the first job", expected=3) == 0
    assert finish(second, "the job waiting for its slot", expected=3) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert b["start"] >= a["end"]


def test_the_leased_gpu_is_the_only_one_cuda_sees(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["3", "5"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with devices.job_device("auto", 1, tmp_path) as device:
        assert device == "cuda"
        assert os.environ["CUDA_VISIBLE_DEVICES"] in {"3", "5"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    with devices.job_device("cuda:1", 1, tmp_path) as device:  # an explicit choice: no lease
        assert device == "cuda:1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_without_cuda_nothing_is_leased(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_driver_present", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # names, but no driver: no GPUs
    assert devices.visible_gpus() == []
    with devices.job_device("auto", 2, tmp_path / "leases") as device:
        assert device == "auto"
    assert not (tmp_path / "leases").exists()
