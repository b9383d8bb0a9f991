"""The report at scale: what keeps its time and memory from growing with the number of
experiments (ladder.report.figures' caps, the per-run bootstrap) and that it never imports
torch. benchmarks/report.py --experiments measures it; these pin the structure."""

from __future__ import annotations

import io as stdio
import json
import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from ladder import augment_registry, io, predictions
from ladder.report import build_report, figures, npz, significance, tables
from report_fixtures import write_inputs


def test_the_report_does_not_import_torch(tmp_path):
    """A whole report (its experiments augment: the figure's ops run in a child process) in a
    fresh interpreter, which never imports torch."""
    inputs = {k: str(v) for k, v in write_inputs(tmp_path).items()}
    code = (
        "import json, sys\n"
        "from ladder.report import build_report\n"
        "build_report(**json.loads(sys.argv[1]))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps({**inputs, "out": str(tmp_path / "out")})],
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow"), "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert (tmp_path / "out" / "figures" / "augmentations.png").stat().st_size > 0


def test_panels_beyond_the_cap_are_listed_and_linked_to_their_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "PANELS", 2)
    out = tmp_path / "out"
    build_report(**write_inputs(tmp_path), out=out)
    page = (out / "index.html").read_text(encoding="utf-8")
    for name in figures.PANEL_FIGURES:
        figure = page.split(f'<figure id="fig-{name}">')[1].split("</figure>")[0]
        assert "Panels of the first 2 of 3 experiments in ladder order" in figure
        assert "The other 1 experiments, not drawn" in figure
        assert '<a href="checkpoints/c.html">c</a>' in figure
    assert page.count("The other 1 experiments") == len(figures.PANEL_FIGURES)
    assert '<a href="checkpoints/c.html">c</a> <span class="muted">— 3 checkpoints' in page
    assert "<title>c: checkpoints · Experiment ladder</title>" in (
        out / "checkpoints" / "c.html"
    ).read_text(encoding="utf-8")


def test_each_experiment_has_a_checkpoints_page_and_the_report_page_has_no_checkpoint_rows(
    tmp_path,
):
    """index.html lists the experiments, each linked to a page of its own with a row per
    checkpoint: the report page holds no checkpoint rows (44,455 at 1,000 experiments), its
    size does not grow with the checkpoints, and every number is a click away."""
    out = tmp_path / "out"
    build_report(**write_inputs(tmp_path), out=out)
    page = (out / "index.html").read_text(encoding="utf-8")
    checkpoints = pd.read_csv(out / "checkpoints.csv")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["a.html", "b.html", "c.html"]
    assert page.count('<table id="checkpoints"') == 0
    assert page.count("<table") == 2  # the ladder and the test-picked table
    for name, rows in checkpoints.groupby("experiment"):
        assert f'<a href="checkpoints/{name}.html">{name}</a>' in page
        run = (out / "checkpoints" / f"{name}.html").read_text(encoding="utf-8")
        table = run.split('<table id="checkpoints">')[1].split("</table>")[0]
        body = table.split("<tbody>")[1]
        assert body.count("<tr") == len(rows)
        assert '<a href="../index.html">' in run
        for value in rows["test_acc"]:  # every number of checkpoints.csv, on its page
            assert f">{value:.2f}<" in body


def test_panel_figures_draw_at_most_the_cap_without_a_layout_engine():
    n = figures.PANELS + 5
    names = [f"e{i}" for i in range(n)]
    checkpoints = pd.DataFrame(
        [
            {"experiment": name, "epoch": e, "test_acc": 40.0, "test_acc_tta": 41.0, "val_acc": 42}
            for name in names
            for e in (1, 2)
        ]
    )
    runs = SimpleNamespace(names=names, checkpoints=checkpoints)
    with plt.rc_context(figures.THEME):
        fig, caption = figures.checkpoint_accuracy(runs)
    try:
        assert [ax.get_title() for ax in fig.axes] == names[: figures.PANELS]
        assert fig.get_layout_engine() is None
        assert fig.fixed_layout
        assert f"first {figures.PANELS} of {n} experiments" in caption
    finally:
        plt.close(fig)


def _history(n: int, epochs: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"experiment": f"e{i}", "epoch": e, "lr": 0.1, "train_acc": 50.0 + i, "val_acc": 40.0}
            for i in range(n)
            for e in range(1, epochs + 1)
        ]
    )


def test_many_distinct_curves_are_coloured_by_rung_not_named_in_a_legend():
    n = figures.LEGEND_LINES + 1
    runs = SimpleNamespace(names=[f"e{i}" for i in range(n)], history=_history(n))
    with plt.rc_context(figures.THEME):
        fig, _ = figures.gap(runs)
    try:
        ax = fig.axes[0]
        assert ax.get_legend() is None
        assert len(ax.get_lines()) == n + 1  # every curve, and the zero line
        assert f"{n} distinct curves" in fig.axes[1].get_ylabel()  # the colour bar
        assert tuple(fig.get_size_inches()) == (9.1, 3.8)
    finally:
        plt.close(fig)
    few = SimpleNamespace(names=["e0", "e1"], history=_history(2))
    with plt.rc_context(figures.THEME):
        fig, _ = figures.gap(few)
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    plt.close(fig)


def test_the_ladder_chart_has_a_fixed_width_beyond_the_names_it_can_show():
    n = figures.LADDER_NAMES + 1
    acc = np.linspace(30, 60, n)
    ladder = pd.DataFrame(
        {
            "experiment": [f"e{i}" for i in range(n)],
            "test_acc": acc,
            "test_acc_low": acc - 1,
            "test_acc_high": acc + 1,
            "test_acc_tta": np.nan,
            "val_acc": acc + 2,
            "ref_test": np.nan,
            "ref_val": np.nan,
        }
    )
    with plt.rc_context(figures.THEME):
        fig, _ = figures.ladder_chart(ladder)
    try:
        assert fig.get_size_inches()[0] == 12.0
        assert "too many to name" in fig.axes[0].get_xlabel()
    finally:
        plt.close(fig)


# Resolved `augment` settings with every op off.
OFF = {op.name: 0.0 if op.bare else {"p": 0.0} for op in augment_registry.OPS}


def test_augmentation_rows_one_per_distinct_setting_capped(monkeypatch):
    flip, none = {**OFF, "hflip": 0.5}, OFF
    settings = {"a": {"augment": flip}, "b": {"augment": none}, "c": {"augment": flip}}
    runs = SimpleNamespace(sets={n: [n] for n in settings}, settings=settings)
    assert figures.augment_rows(runs) == [["a", "c"], ["b"]]
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    monkeypatch.setattr(figures, "AUGMENT_ROWS", 1)
    with plt.rc_context(figures.THEME):
        fig, caption = figures.augmentations(runs, images)
    try:
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels == ["original", "a and 1 more"]
        assert "The first 1 of 2 distinct settings" in caption
    finally:
        plt.close(fig)


def test_identity_rows_need_no_child_process(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("started a process for augmentations that are all off")

    monkeypatch.setattr(figures.subprocess, "run", refuse)
    batch = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    rows = figures._augmented(batch, [OFF])
    assert rows.shape == (1, 2, 2, 2, 3)
    assert np.array_equal(rows[0], batch / np.float32(255))


def test_runs_keep_one_row_of_test_images_per_run_not_per_checkpoint(tmp_path):
    """What the report holds per experiment does not grow with its checkpoints: per-image
    correctness of the val-picked checkpoint only, per-class rows of that checkpoint only."""
    paths = write_inputs(tmp_path)
    names = tables.read_selection(paths["selection"])
    runs = tables.read_runs(
        names, paths["configs"], paths["runs"], tables.read_labels(paths["data"])
    )
    best = tables.picked_on_val(runs)["epoch"]
    for name in names:
        assert runs.correct[name].test.ndim == 1
        assert runs.correct[name].epoch == best[name]
    assert set(zip(runs.per_class["experiment"], runs.per_class["epoch"], strict=True)) == {
        (name, best[name]) for name in names
    }


def test_the_bootstrap_counts_each_checkpoint_from_the_one_before_as_the_product_would():
    """PickedGapBootstrap counts a checkpoint as the one before it plus the images that changed:
    the gaps are those of the product of the resamples' counts with every checkpoint, bit for
    bit, whether consecutive checkpoints differ in few images or in most."""
    rng = np.random.default_rng(2)
    runs = []
    for changed in (0.02, 0.5, 1.0):
        x = [rng.random(300) < 0.6]
        for _ in range(6):
            x.append(np.where(rng.random(300) < changed, rng.random(300) < 0.6, x[-1]))
        runs.append((x, int(rng.integers(0, 7))))
    bootstrap = significance.PickedGapBootstrap(300)
    for x, pick in runs:
        bootstrap.add(x, pick)
    counts = np.concatenate(
        list(significance._resample_counts(300, 1000, np.random.default_rng(0)))
    )
    for (x, pick), got in zip(runs, bootstrap.results(), strict=True):
        hits = counts @ np.stack(x, axis=1).astype(np.float32)
        assert got.gaps.dtype == np.float32
        assert got.gaps.tobytes() == (hits.max(axis=1) - hits[:, pick]).tobytes()
    sets = [[x] for x, _ in runs]
    picks = [[pick] for _, pick in runs]
    alone = [significance.picked_gap(x, pick) for x, pick in runs]
    assert significance.picked_gaps(sets, picks) == alone


# ----------------------------------------------------------------------------------------------
# The evaluations' predictions, read without zipfile (ladder.report.npz)

LENGTHS = {"val_plain": 50, "test_plain": 30, "test_tta": 30}
KINDS = ("test_plain", "test_tta")


def _predictions(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, 200, n) for k, n in LENGTHS.items()}


def _stored(arrays: dict[str, np.ndarray], comment: bytes = b"") -> bytes:
    """An archive of the same members, not deflated (and with a comment): another layout."""
    buf = stdio.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for kind, values in arrays.items():
            member = stdio.BytesIO()
            np.lib.format.write_array(member, values.astype(np.int16))
            archive.writestr(f"{kind}.npy", member.getvalue())
        archive.comment = comment
    return buf.getvalue()


def test_predictions_as_evaluate_writes_them_are_read_without_zipfile(monkeypatch):
    """The archives to_bytes writes: the same arrays as predictions.read, which is never
    called for them."""
    archives = [predictions.to_bytes(_predictions(seed)) for seed in range(3)]
    archives.append(predictions.to_bytes({k: np.zeros(n, int) for k, n in LENGTHS.items()}))
    expected = [predictions.read("p.npz", LENGTHS, KINDS, data) for data in archives]

    def refuse(*args, **kwargs):
        raise AssertionError("zipfile read an archive as to_bytes writes it")

    monkeypatch.setattr(npz.predictions, "read", refuse)
    for data, want in zip(archives, expected, strict=True):
        got = npz.read("p.npz", LENGTHS, KINDS, data)
        assert list(got) == list(want) == list(KINDS)
        for kind in KINDS:
            assert got[kind].dtype == np.int16
            assert not got[kind].flags.writeable
            assert np.array_equal(got[kind], want[kind])


def test_other_archives_are_read_by_zipfile_to_the_same_arrays_or_the_same_error():
    arrays = _predictions(0)
    plain, commented = _stored(arrays), _stored(arrays, comment=b"a comment")
    assert npz._fast(LENGTHS, KINDS, commented) is None  # left to zipfile
    for data in (plain, commented):
        got = npz.read("p.npz", LENGTHS, KINDS, data)
        assert all(np.array_equal(got[k], arrays[k]) for k in KINDS)
    # A stored member with one byte changed: only its CRC tells.
    data = bytearray(_stored(arrays))
    data[data.index(b"test_plain.npy") + 14 + 128 + 5] ^= 1  # in the array, after its header
    assert npz._fast(LENGTHS, KINDS, bytes(data)) is None
    with pytest.raises(predictions.PredictionsError, match=r"p\.npz: unreadable, damaged"):
        npz.read("p.npz", LENGTHS, KINDS, bytes(data))
    deflated = predictions.to_bytes(arrays)
    for broken in (deflated[:-30], deflated[: len(deflated) // 2], b""):  # cut short
        with pytest.raises(predictions.PredictionsError, match=r"p\.npz: unreadable, damaged"):
            npz.read("p.npz", LENGTHS, KINDS, broken)
    other = {k: v for k, v in arrays.items() if k != "test_tta"}
    with pytest.raises(predictions.PredictionsError, match=r"p\.npz: holds test_plain, val_plain"):
        npz.read("p.npz", LENGTHS, KINDS, predictions.to_bytes(other))


# ----------------------------------------------------------------------------------------------
# An evaluation's per-class entries, parsed for the checkpoint the report shows only


def _evaluation(per_class: list) -> dict:
    return {
        "epoch": 3,
        "images": {"test": 10, "val": 20},
        "per_class": per_class,
        "test": {"acc": 0.5, "loss": 1.0},
        "tta": None,
        "val": {"acc": 0.25, "loss": 2.0},
    }


def test_the_per_class_array_is_cut_out_of_an_evaluation_as_evaluate_writes_it():
    """The layout evaluate writes (io.json_text): the rest of the JSON parses to the same values
    with per_class null, the cut-out array to the same entries, whatever the class names hold
    (brackets, quotes, newlines, the key itself) and however deeply the entries nest."""
    names = ["a ]", '"per_class": [', "two\n  ]\nlines", "\\n  ]", "[[]]"]
    entries = [
        {"index": i, "name": name, "count": 5, "test_acc": 0.5, "tta_acc": None, "x": [[i], []]}
        for i, name in enumerate(names)
    ]
    result = _evaluation(entries)
    data = io.json_text(result).encode()
    rest, array = tables._split_per_class(data)
    assert json.loads(rest) == {**result, "per_class": None}
    assert json.loads(array) == entries
    # Any other layout is parsed whole: compact, or an empty array.
    for other in (json.dumps(result).encode(), io.json_text(_evaluation([])).encode()):
        assert tables._split_per_class(other) == (other, None)
