"""Every file a stage reads is checked against its digest before it is used: a file damaged in
place, keeping its size and its timestamp (what neither engine notices), is refused with its
name and the command that regenerates only it.

One small workspace is built by the stages' own functions, in the layout the engines use (paths
relative to the project root, so the messages name them as a user sees them); each test damages
one file of a copy and runs the stage that reads it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import flip_a_byte
from ladder import config, evaluate, io, manifest, provenance, stages, train
from ladder.data import prepare, stats
from ladder.data.download import download
from ladder.report import build_report

PARAMS = {
    "dataset": {"source": "digits", "image_size": 8},
    "tta": {"passes": 2},
    "experiments": {
        "x": {
            "model": {"name": "mynet", "blocks": 1, "width": 4},
            "augment": {"hflip": 0.0},
            "batch_size": 64,
            "epochs": 1,
        }
    },
}
RUN = Path(stages.RUN.replace("{exp}", "x"))
SETTINGS = Path(stages.EXP_CONFIGS.replace("{exp}", "x"))


def _train() -> Path:
    runtime = train.Runtime(device="cpu", threads=1, progress_bar=False)
    settings = provenance.read_record(SETTINGS / "train.json")
    return train.train("x", settings, stages.PREPARED, stages.STATS, RUN, runtime)


def _evaluate() -> list[Path]:
    tta = provenance.read_record(SETTINGS / "evaluate.json")
    return evaluate.evaluate_run(RUN, tta, stages.PREPARED, f"{stages.CACHE}/evaluate", "cpu")


def _report() -> Path:
    return build_report(
        f"{stages.CONFIGS}/selection.json",
        f"{stages.CONFIGS}/experiments",
        stages.RUNS,
        stages.PREPARED,
        stages.REPORT,
    )


def _prepare() -> dict:
    settings = provenance.read_record(f"{stages.CONFIGS}/prepare.json")
    return prepare.prepare(stages.RAW, stages.PREPARED, settings, workers=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity") / "built"
    root.mkdir()
    cwd = Path.cwd()
    os.chdir(root)
    try:
        params = config.Params.from_dict(PARAMS)
        config.write_settings(params, stages.CONFIGS)
        download({"source": "digits"}, stages.RAW)
        _prepare()
        stats.write(stages.PREPARED, stages.STATS)
        _train()
        _evaluate()
        _report()
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def workspace(built, tmp_path, monkeypatch) -> Path:
    """A copy of the built workspace (timestamps kept), as the current folder."""
    root = tmp_path / "w"
    shutil.copytree(built, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def change_a_digit(path: Path) -> None:
    """Change the last digit of a text file's first number run, in place, keeping its size and
    timestamps: still valid JSON or CSV, with another value."""
    st = path.stat()
    text = path.read_text()
    i = next(i for i, c in enumerate(text) if c.isdigit() and text[i + 1].isdigit())
    path.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def _clear_evaluation_cache() -> None:
    # Evaluation reads what it evaluates: checkpoints it has seen before come from its cache.
    shutil.rmtree(Path(stages.CACHE) / "evaluate")


CASES: dict[str, tuple[str, Callable[[Path], None], Callable[[], object], str]] = {
    # file: (damage, the stage that reads it, the rule that regenerates it)
    "prepared train images": ("results/data/prepared/train_x.npy", flip_a_byte, _train, "prepare"),
    "prepared val labels": ("results/data/prepared/val_y.npy", flip_a_byte, _train, "prepare"),
    "prepared test images": (
        "results/data/prepared/test_x.npy",
        flip_a_byte,
        lambda: (_clear_evaluation_cache(), _evaluate()),
        "prepare",
    ),
    "prepared class names": ("results/data/prepared/classes.json", flip_a_byte, _report, "prepare"),
    "prepared test labels": ("results/data/prepared/test_y.npy", flip_a_byte, _report, "prepare"),
    "raw image": ("results/data/raw/train/3/0003.png", flip_a_byte, _prepare, "download"),
    "stats": ("results/data/stats.json", change_a_digit, _train, "stats"),
    "checkpoint": (
        "results/experiments/x/checkpoints/epoch_001.pt",
        flip_a_byte,
        lambda: (_clear_evaluation_cache(), _evaluate()),
        "train",
    ),
    "run config": ("results/experiments/x/config.json", change_a_digit, _evaluate, "train"),
    "history": ("results/experiments/x/history.csv", change_a_digit, _report, "train"),
    "predictions": ("results/experiments/x/eval/epoch_001.npz", flip_a_byte, _report, "evaluate"),
    "evaluation": (
        "results/experiments/x/eval/epoch_001.json", change_a_digit, _report, "evaluate"
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", CASES)
def test_a_file_damaged_in_place_is_refused_where_it_is_read(workspace, kind):
    rel, damage, read, rule = CASES[kind]
    path = workspace / rel
    damage(path)
    with pytest.raises(ValueError, match=r"regenerate it with") as refused:
        read()
    message = str(refused.value)
    assert message.startswith(rel), message  # names the file first
    assert f"--forcerun {rule} --cores 1`" in message, message
    assert "dvc repro --force --single-item" in message, message


def test_a_damaged_settings_file_is_refused_with_the_command_that_rewrites_it(workspace):
    path = SETTINGS / "train.json"
    change_a_digit(path)
    with pytest.raises(io.RecordError, match=r"does not match its digest") as refused:
        provenance.read_record(path)
    assert "`dvc repro --force --single-item configure`" in str(refused.value)


def test_without_the_digest_check_a_damaged_array_is_trained_on(workspace, monkeypatch):
    """The mutation check: the refusals above come from the digest check, nothing else."""
    flip_a_byte(workspace / "results/data/prepared/train_x.npy")
    monkeypatch.setattr(manifest, "verify", lambda folder, names: manifest.read(folder))
    shutil.rmtree(workspace / stages.RESUME)  # no finished run to reuse: it trains
    _train()  # no error: the damage went into the weights


def test_what_the_report_read_is_recorded_by_digest(workspace):
    with provenance.job():  # what `ladder report` runs in
        _report()
        tracked = provenance.made_with()
    assert io.read_json(workspace / stages.REPORT / "provenance.json")["made_with"] == tracked
    assert set(tracked) >= {
        f"{stages.CONFIGS}/selection.json",
        str(SETTINGS / "evaluate.json"),
        str(RUN / "config.json"),
        stages.manifest(stages.PREPARED),
        stages.manifest(str(RUN / "eval")),
    }
    assert tracked[str(RUN / "config.json")] == manifest.file_digest(RUN / "config.json")


def test_a_settings_file_rewritten_before_the_commit_fails_the_job(workspace):
    """What a job does when another command rewrites its settings while it runs: it commits
    nothing, and says which file changed."""
    before = (RUN / "eval.manifest.json").read_bytes()
    shutil.rmtree(Path(stages.CACHE) / "evaluate")
    with provenance.job():
        tta = provenance.read_record(SETTINGS / "evaluate.json")
        io.write_record(SETTINGS / "evaluate.json", {**tta, "passes": 5})  # the other command
        with pytest.raises(provenance.InputChangedError, match=r"evaluate.json changed while"):
            evaluate.evaluate_run(RUN, tta, stages.PREPARED, f"{stages.CACHE}/evaluate", "cpu")
    assert (RUN / "eval.manifest.json").read_bytes() == before
    assert not list((Path(stages.CACHE) / "evaluate" / "x").glob("*.json"))
