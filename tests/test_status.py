"""`ladder status`: every state an experiment can be in, from real `ladder train` processes
(killed, failed, finished) and a lock held here while a resume folder records epochs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, Deadline, finish
from ladder import config, manifest, stages, status, workspace
from ladder.data import prepare, stats
from ladder.data.download import download

DATASET = {
    "source": "digits",
    "val_fraction": 0.2,
    "test_fraction": 0.2,
    "split_seed": 0,
    "image_size": 16,
}
EXPERIMENT = {
    "model": {"name": "mynet", "blocks": 1, "width": 8},
    "augment": {"hflip": 0.0},
    "optimizer": {"lr": 0.05},
    "batch_size": 64,
    "epochs": 1,
}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """Prepared digits at 16x16 and their stats.json."""
    root = tmp_path_factory.mktemp("digits")
    download({"source": "digits"}, root / "raw")
    prepare.prepare(root / "raw", root / "prepared", DATASET, workers=2)
    stats.write(root / "prepared", root / "stats.json")
    return root


class Workspace:
    """A project root as the engines leave it: params.yaml, resolved settings, prepared data."""

    def __init__(self, root: Path, digits: Path, **experiment):
        self.root = root
        prepared = root / stages.PREPARED
        prepared.parent.mkdir(parents=True)
        shutil.copytree(digits / "prepared", prepared)
        shutil.copy(manifest.sibling(digits / "prepared"), manifest.sibling(prepared))
        shutil.copy(digits / "stats.json", root / stages.STATS)
        self.set(**experiment)

    def set(self, **experiment) -> None:
        params = {"dataset": DATASET, "experiments": {"x": {**EXPERIMENT, **experiment}}}
        (self.root / "params.yaml").write_text(yaml.safe_dump(params))
        config.write_settings(config.load(self.root / "params.yaml"), self.root / stages.CONFIGS)

    def cmd(self, stage: str) -> list[str]:
        """What the engines run for experiment x, in this root."""
        cmd = stages.STAGES[stage].command("x").split()
        assert cmd[0] == "ladder"
        return [str(BIN / "ladder"), *cmd[1:], "--device", "cpu", "--threads", "1"]

    def train_cmd(self) -> list[str]:
        return [*self.cmd("train"), "--no-progress"]

    def train(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.train_cmd(), cwd=self.root, capture_output=True, text=True)

    def evaluate(self) -> None:
        subprocess.run(self.cmd("evaluate"), cwd=self.root, capture_output=True, check=True)

    def status(self) -> status.ExperimentStatus:
        (row,) = status.status(self.root / "params.yaml", self.root)
        return row

    def resume(self) -> Path:
        return self.root / stages.RESUME / "x"


def test_a_finished_run_is_done_then_outdated_when_its_settings_or_data_change(digits, tmp_path):
    ws = Workspace(tmp_path, digits)
    assert ws.status().state == "waiting"
    assert ws.train().returncode == 0
    row = ws.status()
    assert (row.state, row.epoch, row.epochs, row.evaluation) == ("done", 1, 1, "none")

    ws.set(optimizer={"lr": 0.1})
    row = ws.status()
    assert row.state == "outdated"
    assert row.changes == ["optimizer.lr: 0.05 -> 0.1"]
    ws.set()
    assert ws.status().state == "done"

    stats_file = tmp_path / stages.STATS
    original = stats_file.read_text()
    stats_file.write_text(original.replace("0.", "0.0", 1))
    assert ws.status().changes == ["stats.json changed"]
    stats_file.write_text(original)

    # Evaluation, by what the real evaluation records of its making: current, then outdated by
    # a TTA edit (and current again once reverted), then stale once the checkpoints differ.
    ws.evaluate()
    assert ws.status().evaluation == "evaluated"
    ws.set(tta={"passes": 3})
    assert ws.status().evaluation == "outdated"
    ws.set()
    assert ws.status().evaluation == "evaluated"
    run = tmp_path / "results" / "experiments" / "x"
    checkpoint = run / "checkpoints" / "epoch_001.pt"
    weights = checkpoint.read_bytes()
    with manifest.folder(run / "checkpoints") as tmp:  # other weights, of the same size
        (tmp / checkpoint.name).write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    assert ws.status().evaluation == "stale"

    # A checkpoint that no longer matches its manifest: not done, whatever config.json says.
    checkpoint = run / "checkpoints" / "epoch_001.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1])
    row = ws.status()
    assert row.state == "waiting"
    assert "outputs:" in row.detail
    assert "epoch_001.pt: changed since" in row.detail


def test_an_early_stopped_run_is_done_at_the_epoch_it_stopped_and_evaluates(digits, tmp_path):
    # Any gain under 90 points is no improvement: it stops after epoch 2 of 5.
    stop = {"patience": 1, "min_delta": 90.0}
    ws = Workspace(tmp_path, digits, epochs=5, checkpoint_every=2, early_stopping=stop)
    assert ws.train().returncode == 0
    ws.evaluate()  # the checkpoints it saved: epoch 2 only
    row = ws.status()
    assert (row.state, row.epoch, row.epochs, row.evaluation) == ("done", 2, 5, "evaluated")
    assert row.detail.startswith("stopped early after epoch 2 (best val ")
    assert row.detail.endswith("at epoch 1); checkpoints of epochs 2")


def test_a_failed_run_names_its_log_and_error(digits, tmp_path):
    ws = Workspace(tmp_path, digits, optimizer={"lr": 1.0e12})
    proc = ws.train()
    assert proc.returncode == 1, proc.stderr
    row = ws.status()
    assert row.state == "failed"
    assert row.log == "logs/train/x.log"
    assert "loss became NaN/inf" in row.detail
    assert "(read logs/train/x.log)" in row.detail


@pytest.mark.slow
def test_a_running_then_killed_run_is_running_then_interrupted(digits, tmp_path):
    # Batch 4: epochs of a few seconds; 20 of them, so the run is never over before the kill.
    ws = Workspace(tmp_path, digits, batch_size=4, epochs=20)
    proc = subprocess.Popen(ws.train_cmd(), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = Deadline("the first epoch", expected=10)
    while not list(ws.resume().glob("*/history.csv")):
        assert proc.poll() is None, proc.stderr.read()
        deadline.check()
        time.sleep(0.05)
    row = ws.status()
    assert (row.state, row.epochs) == ("running", 20)
    assert row.epoch >= 1  # another epoch may have ended since
    assert row.holder["pid"] == proc.pid
    assert row.eta_seconds is not None
    assert f"epoch {row.epoch + 1} of 20, " in row.detail

    proc.send_signal(signal.SIGKILL)
    finish(proc, "a killed run", expected=1)
    proc.stderr.close()
    lock = tmp_path / stages.RESUME / "x.lock"
    assert json.loads(lock.read_text())["pid"] == proc.pid  # a killed run leaves its stamp
    (history,) = ws.resume().glob("*/history.csv")
    done = len(history.read_text().splitlines()) - 1
    row = ws.status()
    assert (row.state, row.epoch) == ("interrupted", done)
    assert row.detail.startswith(f"resumes after epoch {done} of 20 (results/resume/x/")
    assert row.log is None


def test_a_lock_held_while_the_resume_folder_records_epochs_is_running(digits, tmp_path):
    ws = Workspace(tmp_path, digits, epochs=5)
    folder = ws.resume() / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "history.csv").write_text("epoch,seconds\n1,10.0\n2,12.0\n")
    ended = (folder / "history.csv").stat().st_mtime
    exp = config.load(tmp_path / "params.yaml").experiments["x"]
    with workspace.experiment_lock(tmp_path / stages.RESUME, "x"):
        row = status.experiment_status(tmp_path, exp, now=ended + 5)
    assert (row.state, row.epoch, row.epochs) == ("running", 2, 5)
    assert row.eta_seconds == pytest.approx(3 * 11.0 - 5)
    assert row.resume == "results/resume/x/0123456789abcdef"
    assert row.holder["pid"] == os.getpid()
    assert "epoch 3 of 5, 11.0 s/epoch, ETA 28s" in row.detail
    # Released: the resume folder stays, the run is interrupted.
    row = status.experiment_status(tmp_path, exp, now=ended + 5)
    assert (row.state, row.epoch) == ("interrupted", 2)


def test_a_lock_stamped_by_another_host_is_probed(tmp_path):
    lock = tmp_path / "x.lock"
    stamp = {"pid": 1, "host": "elsewhere", "since": "2026-11-28 12:00:00"}
    lock.write_text(json.dumps(stamp))
    assert status.holder(lock) is None  # nobody holds it
    with workspace.experiment_lock(tmp_path, "x"):
        lock.write_text(json.dumps(stamp))  # as that host's process wrote it
        assert status.holder(lock) == stamp


def test_the_last_session_of_a_log_decides(tmp_path):
    log = tmp_path / "x.log"
    header = "2026-11-28 12:00:00,000 INFO ladder: ==== ladder train --experiment x (pid 1 on h)"
    error = "2026-11-28 12:00:09,000 ERROR ladder: ValueError: something went wrong"
    done = "2026-11-28 12:00:09,000 INFO ladder: done in 9.0 s, 9.0 CPU-s, peak RSS 1 MB"
    epoch = "2026-11-28 12:00:05,000 INFO ladder.train: x epoch 1/3 lr 0.05"
    assert status.last_session(log) is None
    log.write_text(f"{header}\n{epoch}\n{error}\n")
    assert status.last_session(log) == status.Session("error", "ValueError: something went wrong")
    log.write_text(f"{header}\n{error}\n{header}\n{epoch}\n")  # failed, then killed
    assert status.last_session(log) == status.Session("open")
    log.write_text(f"{header}\n{error}\n{header}\n{done}\n")
    assert status.last_session(log) == status.Session("done")


def test_the_table_and_the_json(digits, tmp_path):
    ws = Workspace(tmp_path, digits)
    proc = subprocess.run(
        [str(BIN / "ladder"), "status"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert proc.stdout.splitlines()[:2] == [
        "experiment  state    epoch  eval  detail",
        "x           waiting    0/1  -",
    ]
    proc = subprocess.run(
        [str(BIN / "ladder"), "status", "--json"], cwd=ws.root, capture_output=True, check=True
    )
    assert [r["state"] for r in json.loads(proc.stdout)] == ["waiting"]
