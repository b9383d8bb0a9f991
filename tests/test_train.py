"""Training on the CPU: it learns, it resumes exactly after a SIGKILL or a SIGTERM, it fails
loudly."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, Deadline
from ladder import config, io, manifest, stages, train, workspace
from ladder.data import prepare, stats
from ladder.data.download import download


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """Prepared digits at 16x16 plus stats.json, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("digits")
    download({"source": "digits"}, root / "raw")
    settings = {
        "source": "digits",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "split_seed": 0,
        "image_size": 16,
    }
    prepare.prepare(root / "raw", root / "prepared", settings, workers=2)
    stats.write(root / "prepared", root / "stats.json")
    return root


def settings(**diff) -> dict:
    base = {
        "model": {"name": "mynet", "blocks": 1, "width": 8},
        "augment": {"hflip": 0.0},
        "optimizer": {"lr": 0.05},
    }
    return config.Params.from_dict({"experiments": {"x": {**base, **diff}}}).experiments["x"].train


def run(digits: Path, tmp: Path, s: dict, name: str = "x") -> Path:
    runtime = train.Runtime(
        device="cpu",
        threads=1,  # the jobs' default; two beside another test worker crawl (conftest.py)
        progress_bar=False,
        resume_root=tmp / "resume",
        failed_root=tmp / "failed",
    )
    return train.train(
        name, s, digits / "prepared", digits / "stats.json", tmp / "runs" / name, runtime
    )


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_digits_learns_and_writes_every_output(digits, tmp_path):
    s = settings(epochs=2, batch_size=32, log_every=10, normalize="dataset", checkpoint_every=1)
    out = run(digits, tmp_path, s)
    history = read_csv(out / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert float(history[-1]["val_acc"]) > 0.5  # chance is 0.1
    assert list(history[0]) == train.HISTORY_COLUMNS
    steps = read_csv(out / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(10, 2 * (1149 // 32) + 1, 10))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"] == s
    assert cfg["checkpoint_epochs"] == [1, 2]
    assert cfg["normalization"]["mean"] == json.loads((digits / "stats.json").read_text())["mean"]
    assert sorted(manifest.read(out / "checkpoints")["files"]) == ["epoch_001.pt", "epoch_002.pt"]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "epoch_001.pt",
        "epoch_002.pt",
    ]
    weights = torch.load(out / "checkpoints" / "epoch_002.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    # Finished: the resume folder keeps what repeats the outputs (links), not the optimiser.
    (state,) = (tmp_path / "resume" / "x").iterdir()
    assert (state / stages.FINISHED).exists()
    assert not (state / "state.pt").exists()
    assert (state / "checkpoints" / "epoch_002.pt").samefile(out / "checkpoints" / "epoch_002.pt")


def test_a_rerun_of_a_finished_run_uses_its_results_unless_they_are_damaged(
    digits, tmp_path, caplog
):
    s = settings(epochs=2, batch_size=64)
    out = run(digits, tmp_path, s)
    first = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("*.pt")}
    config_json = (out / "config.json").read_bytes()
    shutil.rmtree(out)  # what an engine does before it reruns the job
    with caplog.at_level("INFO", logger="ladder.train"):
        again = run(digits, tmp_path, s)
    assert "trained before with the same settings, data and code" in caplog.text
    assert "epoch 1/2" not in caplog.text  # not one step trained
    assert {p.name: p.read_bytes() for p in (again / "checkpoints").glob("*.pt")} == first
    assert (again / "config.json").read_bytes() == config_json
    # A checkpoint damaged in place (the resume folder holds the same file): trained anew.
    (state,) = (tmp_path / "resume" / "x").iterdir()
    damaged = bytearray(first["epoch_001.pt"])
    damaged[-100] ^= 0xFF
    (state / "checkpoints" / "epoch_001.pt").write_bytes(damaged)
    caplog.clear()
    with caplog.at_level("INFO", logger="ladder.train"):
        fresh = run(digits, tmp_path, s)
    assert "not using the finished run" in caplog.text
    assert "epoch 2/2" in caplog.text
    assert {p.name: p.read_bytes() for p in (fresh / "checkpoints").glob("*.pt")} == first


def test_ema_weights_are_what_is_validated_and_saved(digits, tmp_path):
    averaged = run(digits, tmp_path / "ema", settings(epochs=1, batch_size=64, ema={"decay": 0.9}))
    plain = run(digits, tmp_path / "plain", settings(epochs=1, batch_size=64))
    ema = torch.load(averaged / "checkpoints" / "epoch_001.pt", weights_only=True)
    raw = torch.load(plain / "checkpoints" / "epoch_001.pt", weights_only=True)
    # The same training (EMA does not change it), but the average is what gets saved, in the
    # plain model's layout so that evaluation loads it like any checkpoint.
    assert ema.keys() == raw.keys()
    assert not torch.equal(ema["0.weight"], raw["0.weight"])
    history = [read_csv(d / "history.csv")[0] for d in (averaged, plain)]
    assert history[0]["train_loss"] == history[1]["train_loss"]
    assert history[0]["val_acc"] != history[1]["val_acc"]  # validated with the average


def test_checkpoint_every_and_the_last_epoch(digits, tmp_path):
    out = run(digits, tmp_path, settings(epochs=5, checkpoint_every=2, batch_size=128))
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "epoch_002.pt",
        "epoch_004.pt",
        "epoch_005.pt",
    ]


def test_a_diverged_run_names_where_and_keeps_its_last_good_checkpoint(digits, tmp_path):
    # Epoch 1 trains; the learning rate then jumps by 1e12 and epoch 2 diverges.
    s = settings(
        epochs=3, batch_size=64, log_every=1000, checkpoint_every=1,
        schedule={"name": "multistep", "milestones": [1], "gamma": 1.0e12},
    )  # fmt: skip
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"experiment x: the loss became NaN/inf at epoch 2, step \d+ of the epoch "
        r"\(step \d+ of the run\); lower optimizer.lr",
    ):
        run(digits, tmp_path, s)
    assert not (tmp_path / "runs" / "x" / "history.csv").exists()  # no output looks finished
    kept = tmp_path / "failed" / "x"
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["epoch_001.pt"]
    weights = torch.load(kept / "checkpoints" / "epoch_001.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert [r["epoch"] for r in read_csv(kept / "history.csv")] == ["1"]


def test_progress_lines_and_tensorboard_events(digits, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = settings(epochs=2, batch_size=32, log_every=5)
    runtime = train.Runtime(
        device="cpu", progress_bar=False, progress_seconds=0.0, resume_root=tmp_path / "resume",
        failed_root=tmp_path / "failed",
    )  # fmt: skip
    with caplog.at_level("INFO", logger="ladder.train"):
        out = train.train("x", s, digits / "prepared", digits / "stats.json", tmp_path / "x",
                          runtime)  # fmt: skip
    steps = 1149 // 32
    lines = [r.message for r in caplog.records if " step " in r.message]
    assert f"x epoch 2/2 step {steps // 2}/{steps} (" in "\n".join(lines)
    assert all("img/s; epoch ETA " in line and ", run ETA " in line for line in lines)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5, 2 * steps + 1, 5))
    assert [e.step for e in events.Scalars("epoch/val_acc")] == [steps, 2 * steps]
    history = read_csv(out / "history.csv")
    # percent there (people read it), fractions in history.csv (programs read it)
    assert events.Scalars("epoch/val_acc")[-1].value == pytest.approx(
        100 * float(history[-1]["val_acc"])
    )


def test_a_changed_experiment_never_resumes_a_stale_state(digits, tmp_path):
    s = settings(epochs=1, batch_size=128)
    stale = tmp_path / "resume" / "x" / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "state.pt").write_bytes(b"from an older version of the settings")
    run(digits, tmp_path, s)
    assert not stale.exists()


def _state_dir(digits: Path, tmp: Path, s: dict) -> Path:
    identity = train.run_identity("x", s, digits / "prepared", digits / "stats.json")
    return tmp / "resume" / "x" / config.fingerprint(identity)


class _Payload:
    def __reduce__(self):  # would run code if unpickled
        return (exec, ("raise SystemExit('executed')",))


@pytest.mark.parametrize("damage", ["truncated state", "poisoned state", "checkpoint differs"])
def test_a_resume_state_that_cannot_be_trusted_is_discarded(digits, tmp_path, caplog, damage):
    s = settings(epochs=2, batch_size=128)
    reference = run(digits, tmp_path / "reference", s)
    # A state saved after epoch 1 (as a run killed in epoch 2 leaves it), then damaged.
    state_dir = _state_dir(digits, tmp_path, s)
    one_epoch = run(digits, tmp_path / "one", settings(epochs=1, batch_size=128))
    checkpoint = state_dir / "checkpoints" / "epoch_001.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes((one_epoch / "checkpoints" / "epoch_001.pt").read_bytes())
    progress = train.Progress(epoch=1, checkpoints={"epoch_001.pt": "0" * 32})
    torch.save({"progress": progress.__dict__}, state_dir / "state.pt")
    if damage == "truncated state":
        (state_dir / "state.pt").write_bytes((state_dir / "state.pt").read_bytes()[:50])
    elif damage == "poisoned state":
        torch.save({"progress": _Payload()}, state_dir / "state.pt", pickle_module=pickle)
    with caplog.at_level("WARNING", logger="ladder.train"):
        out = run(digits, tmp_path, s)
    assert f"discarding resume state {state_dir}" in caplog.text
    assert (
        read_csv(out / "history.csv")[0]["train_loss"]
        == (read_csv(reference / "history.csv")[0]["train_loss"])
    )  # trained from the start, not from the damaged state


def test_a_second_run_of_the_same_experiment_is_refused_while_the_first_holds_it(digits, tmp_path):
    with (
        workspace.experiment_lock(tmp_path / "resume", "x"),
        pytest.raises(workspace.WorkspaceBusy, match=r"experiment x is being trained by"),
    ):
        run(digits, tmp_path, settings(epochs=1, batch_size=128))
    assert not (tmp_path / "runs" / "x").exists()
    run(digits, tmp_path, settings(epochs=1, batch_size=128))  # free again


def _train_cmd(digits: Path, tmp: Path, settings_file: Path) -> list[str]:
    return [
        str(BIN / "ladder"), "train", "--experiment", "x", "--settings", str(settings_file),
        "--data", str(digits / "prepared"), "--stats", str(digits / "stats.json"),
        "--out", str(tmp / "runs" / "x"), "--resume-dir", str(tmp / "resume"),
        "--device", "cpu", "--threads", "1", "--no-progress",
    ]  # fmt: skip


# Augmentation, batch mixing, shuffling, dropout, momentum, EMA and a per-step schedule all in
# play; small batches make epochs long enough to stop one half way.
RESUMABLE = {
    "epochs": 3, "batch_size": 4, "log_every": 10,
    "model": {"name": "mynet", "blocks": 1, "width": 8, "dropout": 0.3},
    "augment": {"hflip": 0.5, "translate": {"p": 0.5}, "randaugment": {"p": 0.5}},
    "mix": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "p": 0.8},
    "schedule": {"name": "onecycle"}, "ema": {"decay": 0.9},
}  # fmt: skip
STEPS_PER_EPOCH = 1149 // 4  # the digits' train split in batches of 4


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory) -> tuple[Path, Path]:
    """RESUMABLE's settings file, and its run trained without interruption."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    settings_file = tmp / "train.json"
    io.write_record(settings_file, settings(**RESUMABLE))
    subprocess.run(_train_cmd(digits, tmp, settings_file), check=True, capture_output=True)
    return settings_file, tmp


def assert_same_run(a: Path, b: Path) -> None:
    """Two runs' checkpoints hold the same bytes; their histories and steps agree (all but the
    timings)."""
    for name in ("epoch_001.pt", "epoch_002.pt", "epoch_003.pt"):
        x = torch.load(a / "runs" / "x" / "checkpoints" / name, weights_only=True)
        y = torch.load(b / "runs" / "x" / "checkpoints" / name, weights_only=True)
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), name

    def history(root: Path) -> list[dict]:
        rows = read_csv(root / "runs" / "x" / "history.csv")
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows
        ]

    assert history(a) == history(b)
    assert read_csv(a / "runs" / "x" / "steps.csv") == read_csv(b / "runs" / "x" / "steps.csv")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(digits, tmp_path, uninterrupted):
    settings_file, whole = uninterrupted
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(digits, killed, settings_file), stderr=subprocess.PIPE, text=True
    )
    state = next(iter((killed / "resume" / "x").glob("*")), None)
    deadline = Deadline("the first epoch", expected=10)
    while (
        state is None
        or not (state / "checkpoints" / "epoch_001.pt").exists()
        or not (state / "state.pt").exists()
    ):
        assert proc.poll() is None, proc.stderr.read()
        deadline.check()
        time.sleep(0.01)
        state = next(iter((killed / "resume" / "x").glob("*")), None)
    time.sleep(0.05)  # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    saved = torch.load(state / "state.pt", weights_only=True)
    assert saved["progress"]["epoch"] == 1, "killed outside epoch 2: nothing tested"
    assert not (killed / "runs" / "x" / "history.csv").exists()

    resumed = subprocess.run(
        _train_cmd(digits, killed, settings_file), check=True, capture_output=True, text=True
    )
    assert "resuming after epoch 1" in resumed.stderr
    assert_same_run(whole, killed)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_and_the_rerun_continues_there_bit_exact(
    digits, tmp_path, uninterrupted
):
    # What SLURM sends at a time limit or on preemption, before SIGKILL.
    settings_file, whole = uninterrupted
    stopped = tmp_path / "stopped"
    cmd = [*_train_cmd(digits, stopped, settings_file), "--progress-seconds", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # a progress line after every step
        seen.append(line)
        if f" epoch 2/3 step {STEPS_PER_EPOCH // 3}/" in line:
            break
    else:
        raise AssertionError("training ended before epoch 2:\n" + "".join(seen))
    os.kill(proc.pid, signal.SIGTERM)
    bound = Deadline("a training run stopping after its current step", expected=3)
    err = "".join(seen) + proc.communicate(timeout=bound.seconds)[1]

    assert proc.returncode == 128 + signal.SIGTERM, err
    found = re.search(
        rf"x: stopped by SIGTERM at epoch 2, step (\d+) of {STEPS_PER_EPOCH}; resumes there", err
    )
    assert found, err
    step = int(found[1])
    assert STEPS_PER_EPOCH // 3 <= step < STEPS_PER_EPOCH
    assert "Traceback" not in err
    (state,) = (stopped / "resume" / "x").iterdir()
    saved = torch.load(state / "state.pt", weights_only=True)
    assert saved["progress"]["epoch"] == 1
    assert saved["partial"]["epoch"] == 2
    assert saved["partial"]["step"] == step
    assert saved["progress"]["step"] == STEPS_PER_EPOCH + step
    assert not (stopped / "runs" / "x").exists()

    resumed = subprocess.run(
        _train_cmd(digits, stopped, settings_file), check=True, capture_output=True, text=True
    )
    assert f"resuming at epoch 2, step {step} from" in resumed.stderr
    # The earlier session's lines, repeated in the job log (Snakemake deletes it before a rerun),
    # say why it stopped.
    replayed = resumed.stderr.split("earlier sessions of this run")[1]
    assert f"x: stopped by SIGTERM at epoch 2, step {step} of" in replayed
    assert_same_run(whole, stopped)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text("{not json")
    cmd = [sys.executable, "-m", "ladder", "train", "--experiment", "x", "--settings", str(bad)]
    cmd += [
        "--data",
        str(tmp_path),
        "--stats",
        str(tmp_path / "s.json"),
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run([*cmd, "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{bad}: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_batch_larger_than_the_train_split_is_refused_before_any_output(digits, tmp_path):
    # What `configure` cannot check before `prepare` has run; train checks it first thing.
    out = tmp_path / "runs" / "x"
    with pytest.raises(ValueError, match=r"batch_size 5000: the train split \(.*\) has only 1149"):
        run(digits, tmp_path, settings(batch_size=5000))
    assert not out.exists()
    assert not (tmp_path / "resume").exists() or not any((tmp_path / "resume").rglob("*.pt"))


def _one_step_grad_norm(**diff) -> float:
    """The gradients' total L2 norm after one optimiser step of a tiny model on random images."""
    s = settings(**diff)
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    learner = train.Learner.build(s, 10, 8, 4, norm, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (16,), generator=gen)
    learner.step(images, labels, gen)
    grads = [p.grad for p in learner.model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


def test_grad_clip_norm_bounds_the_gradients_of_each_step():
    unclipped = _one_step_grad_norm()
    assert unclipped > 0.05  # else the bound below tests nothing
    assert _one_step_grad_norm(grad_clip_norm=0.05) <= 0.05 * (1 + 1e-5)
    assert _one_step_grad_norm(grad_clip_norm=1e6) == pytest.approx(unclipped)


def test_a_negative_grad_clip_norm_is_refused_with_its_key():
    with pytest.raises(config.ConfigError, match=r"experiments\.x\.grad_clip_norm"):
        settings(grad_clip_norm=-1.0)


# ----------------------------------------------------------------------------------------------
# Early stopping


def _history(*val_acc: float) -> list[dict]:
    return [{"epoch": e, "val_acc": a / 100} for e, a in enumerate(val_acc, 1)]


@pytest.mark.parametrize(
    ("val_acc", "patience", "min_delta", "stops"),
    [
        ((50, 60, 59, 58), 2, 0.0, {"epoch": 4, "best_epoch": 2, "best_val_acc": 60.0}),
        ((50, 60, 59), 2, 0.0, None),  # one epoch without a gain: patience 2 waits
        ((50, 60, 61, 62), 2, 0.0, None),  # gains, however small, with min_delta 0
        # A gain of 1 point is no improvement with min_delta 1.5, nor does it move the best:
        # 52.2 then beats 50 by more than 1.5 (it would not beat 51)
        ((50, 51, 51.4), 2, 1.5, {"epoch": 3, "best_epoch": 1, "best_val_acc": 50.0}),
        ((50, 51, 52.2), 2, 1.5, None),
        ((50, 40, 30, 20), 0, 0.0, None),  # patience 0: off
    ],
)
def test_early_stop_is_kerass_rule_on_the_history(val_acc, patience, min_delta, stops):
    setting = {"patience": patience, "min_delta": min_delta}
    assert train.early_stop(_history(*val_acc), setting) == stops


def test_an_early_stopped_run_is_finished_with_the_epoch_it_stopped_at(digits, tmp_path, caplog):
    # Any gain under 90 points is no improvement: it stops after epoch 2, with epoch 2 saved
    # although the schedule saves every third epoch.
    stop = {"patience": 1, "min_delta": 90.0}
    s = settings(epochs=6, batch_size=128, checkpoint_every=3, early_stopping=stop)
    with caplog.at_level("INFO", logger="ladder"):
        out = run(digits, tmp_path, s)
    assert [int(r["epoch"]) for r in read_csv(out / "history.csv")] == [1, 2]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["checkpoint_epochs"] == [2]
    assert cfg["stopped_early"]["epoch"] == 2
    assert cfg["stopped_early"]["best_epoch"] == 1
    assert sorted(manifest.read(out / "checkpoints")["files"]) == ["epoch_002.pt"]
    assert "x: stopped early after epoch 2 of 6" in caplog.text
    # Off, the same settings train every epoch.
    full = run(digits, tmp_path / "full", {**s, "early_stopping": {"patience": 0}})
    assert len(read_csv(full / "history.csv")) == 6
    assert "stopped_early" not in json.loads((full / "config.json").read_text())


def test_a_run_that_dies_after_deciding_to_stop_resumes_as_stopped(digits, tmp_path, monkeypatch):
    stop = {"patience": 1, "min_delta": 90.0}
    s = settings(epochs=6, batch_size=128, early_stopping=stop)
    finish = train._finish

    def dies(*args, **kwargs):  # the state after epoch 2 is saved; the outputs never written
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_finish", dies)
    with pytest.raises(KeyboardInterrupt):
        run(digits, tmp_path, s)
    monkeypatch.setattr(train, "_finish", finish)
    out = run(digits, tmp_path, s)
    assert [int(r["epoch"]) for r in read_csv(out / "history.csv")] == [1, 2]
    assert json.loads((out / "config.json").read_text())["stopped_early"]["epoch"] == 2


def test_early_stopping_settings_prune_and_refuse_bad_values():
    assert settings()["early_stopping"] == {"patience": 0}
    assert settings(early_stopping={"min_delta": 3})["early_stopping"] == {"patience": 0}
    on = settings(early_stopping={"patience": 3})["early_stopping"]
    assert on == {"patience": 3, "min_delta": 0.0}
    bad_values = [
        ({"patience": -1}, "patience"), ({"patience": 2, "min_delta": -1}, "min_delta"),
        ({"patience": 1.5}, "patience"), ({"patiense": 2}, ""),
    ]  # fmt: skip
    for bad, key in bad_values:
        with pytest.raises(config.ConfigError, match=rf"experiments\.x\.early_stopping\.?{key}"):
            settings(early_stopping=bad)
