"""`ladder report`: the changes text, the tables, the page, and failing without a trace."""

from __future__ import annotations

import contextlib
import html.parser
import json
import math
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from ladder import io, manifest, stages
from ladder.report import build_report, figures
from ladder.report.html import DELTA_TEST, DELTA_TTA
from ladder.report.tables import changes
from report_fixtures import RESULTS, md_ladder, write_inputs

FIGURES = {
    "accuracy_vs_step",
    "lr",
    "test_per_checkpoint",
    "ladder",
    "gap",
    "augmentations",
    "worst_classes",
}

# ----------------------------------------------------------------------------------------------
# Changes versus the parent

EFFNET = {
    "model": {"name": "efficientnet_v2_s", "unstride": 2, "dropout": 0.6},
    "augment": {
        "hflip": 0.5,
        "blur": {"p": 0.3, "kernel": 3, "sigma": 0.6},
        "solarize": {"p": 0.0},
    },
    "optimizer": {"name": "sgd", "lr": 0.01, "weight_decay": 0.0001},
    "schedule": {"name": "cosine", "t_max": 30, "eta_min": 0.0},
    "epochs": 30,
    "tta": {"passes": 5, "augment": "train", "seed": 0},
}


def edit(settings: dict, **sections) -> dict:
    """A copy of `settings` with whole sections replaced."""
    return {**json.loads(json.dumps(settings)), **sections}


def test_changes_of_a_root_is_a_dash():
    assert changes(None, EFFNET) == "—"


def test_changes_lists_changed_keys_and_switched_off_augmentation():
    child = edit(
        EFFNET,
        model={**EFFNET["model"], "dropout": 0.7},
        augment={**EFFNET["augment"], "blur": {"p": 0.0}},
    )
    assert changes(EFFNET, child) == "model.dropout 0.6→0.7; -blur"


def test_changes_shows_a_model_change_first_with_added_and_removed_keys():
    resnet = edit(
        EFFNET, model={"name": "resnet18", "unstride": 3, "maxpool": False, "dropout": 0.0}
    )
    assert changes(resnet, EFFNET) == (
        "model resnet18→efficientnet_v2_s; model.unstride 3→2; -model.maxpool; model.dropout 0→0.6"
    )


def test_changes_shows_an_added_augmentation_with_its_settings():
    child = edit(
        EFFNET, augment={**EFFNET["augment"], "solarize": {"p": 0.5, "threshold": 0.00157}}
    )
    assert changes(EFFNET, child) == "+solarize(p=0.5, threshold=0.00157)"
    no_flip = edit(EFFNET, augment={**EFFNET["augment"], "hflip": 0.0})
    assert changes(no_flip, EFFNET) == "+hflip(p=0.5)"
    assert changes(EFFNET, no_flip) == "-hflip"


def test_changes_of_augmentation_settings_in_pipeline_order():
    parent = edit(
        EFFNET,
        augment={
            "hflip": 0.5,
            "translate": {"p": 0.6, "max": 0.125},
            "rotate": {"p": 0.6, "degrees": 10.0},
        },
    )
    child = edit(
        parent,
        augment={
            "hflip": 0.8,
            "translate": {"p": 0.8, "max": 0.125},
            "rotate": {"p": 0.8, "degrees": 10.0},
        },
    )
    assert changes(parent, child) == "hflip 0.5→0.8; translate.p 0.6→0.8; rotate.p 0.6→0.8"


def test_changes_of_optimizer_schedule_and_tta_use_short_names():
    child = edit(
        EFFNET,
        optimizer={**EFFNET["optimizer"], "lr": 0.1, "weight_decay": 1e-05},
        schedule={"name": "multistep", "milestones": [30, 45], "gamma": 0.1},
        tta={**EFFNET["tta"], "passes": 10},
        epochs=60,
    )
    assert changes(EFFNET, child) == (
        "lr 0.01→0.1; weight_decay 0.0001→1e-05; schedule cosine→multistep; "
        "+milestones=[30, 45]; epochs 30→60; tta.passes 5→10"
    )  # eta_min (0) left, gamma (0.1) added, t_max (the epochs) left, all defaults: no change


def test_changes_skips_a_key_that_comes_or_goes_with_its_default_value():
    """A key the parent's model or schedule did not have, at the schema's default, changes
    nothing; the same key at another value, or a default key that is changed, does."""
    constant = edit(EFFNET, schedule={"name": "constant", "warmup_epochs": 0})
    cosine = edit(
        EFFNET, schedule={"name": "cosine", "t_max": 30, "eta_min": 0.0, "warmup_epochs": 0}
    )
    assert changes(constant, cosine) == "schedule constant→cosine"  # t_max: the epochs
    assert changes(cosine, constant) == "schedule cosine→constant"
    assert changes(constant, edit(cosine, schedule={**cosine["schedule"], "eta_min": 1e-05})) == (
        "schedule constant→cosine; +eta_min=1e-05"
    )
    # t_max follows epochs by default: listed only where it is set to something else
    assert changes(
        cosine, edit(cosine, epochs=10, schedule={**cosine["schedule"], "t_max": 10})
    ) == ("epochs 30→10")
    assert changes(constant, edit(cosine, schedule={**cosine["schedule"], "t_max": 20})) == (
        "schedule constant→cosine; +t_max=20"
    )
    assert changes(cosine, edit(cosine, schedule={**cosine["schedule"], "t_max": 20})) == (
        "t_max 30→20"
    )

    mynet = edit(EFFNET, model={"name": "mynet", "blocks": 2, "width": 32, "dropout": 0.6})
    off = {"p_drop": 0.0, "stages": [4]}
    shakedrop_off = edit(EFFNET, model={**EFFNET["model"], "shakedrop": off})
    assert changes(mynet, shakedrop_off) == "model mynet→efficientnet_v2_s; +model.unstride=2"
    on = edit(EFFNET, model={**EFFNET["model"], "shakedrop": {**off, "p_drop": 0.5}})
    assert changes(mynet, on) == (
        "model mynet→efficientnet_v2_s; +model.unstride=2; +model.shakedrop.p_drop=0.5"
    )
    assert changes(shakedrop_off, on) == "model.shakedrop.p_drop 0→0.5"


def test_changes_keeps_the_section_where_a_short_name_would_be_ambiguous():
    parent = {"optimizer": {"lr": 0.1}, "lr": 1}
    assert changes(parent, {"optimizer": {"lr": 0.2}, "lr": 1}) == "optimizer.lr 0.1→0.2"


def test_changes_formats_values_compactly():
    parent = {"model": {"name": "resnet18", "maxpool": True}, "epochs": 10, "normalize": "uniform"}
    child = {
        "model": {"name": "resnet18", "maxpool": False},
        "epochs": 10.0,
        "normalize": "dataset",
    }
    assert changes(parent, child) == "model.maxpool true→false; normalize uniform→dataset"
    assert changes(parent, parent) == "no change"


# ----------------------------------------------------------------------------------------------
# A whole report from synthetic runs


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    build_report(**write_inputs(root), out=out)
    return out


def test_report_writes_every_declared_output(report):
    for name in ("index.html", "report.md", "ladder.csv", "checkpoints.csv", "metrics.json"):
        assert (report / name).stat().st_size > 0
    # What it writes is what the report stage declares, no more (the engines keep only those).
    declared = {Path(path).name for path in stages.STAGES["report"].out_paths}
    assert {p.name for p in report.iterdir()} == declared
    assert {p.stem for p in (report / "figures").iterdir()} == FIGURES
    assert all(p.suffix == ".png" for p in (report / "figures").iterdir())
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temporaries


def test_ladder_csv_picks_by_val_and_reports_percent(report):
    ladder = pd.read_csv(report / "ladder.csv", keep_default_na=False, na_values=[""])
    assert list(ladder["rung"]) == [1, 2, 3]
    assert list(ladder["experiment"]) == ["a", "b", "c"]
    assert ladder["parent"].fillna("").tolist() == ["", "a", "b"]
    assert list(ladder["best_epoch"]) == [2, 2, 3]  # a: val ties at epochs 2 and 3 -> the earlier
    assert list(ladder["train_acc"]) == [60.0, 70.0, 90.0]
    assert list(ladder["val_acc"]) == [50.0, 70.0, 66.0]
    assert list(ladder["test_acc"]) == [40.0, 55.0, 56.0]
    assert math.isnan(ladder["test_acc_tta"][0])
    assert list(ladder["test_acc_tta"][1:]) == [58.0, 60.0]
    assert list(ladder["test_acc_tta_mean"][1:]) == [57.0, 59.0]
    assert math.isnan(ladder["delta_test_vs_parent"][0])
    assert list(ladder["delta_test_vs_parent"][1:]) == [15.0, 1.0]
    assert ladder["delta_tta_vs_parent"][:2].isna().all()
    assert ladder["delta_tta_vs_parent"][2] == 2.0
    assert list(ladder["best"]) == [False, True, False]  # b: the best val accuracy
    # Selected on the test set (no TTA, as every result), labelled as such.
    assert list(ladder["test_picked_epoch"]) == [3, 2, 3]
    assert list(ladder["test_picked_test"]) == [60.0, 55.0, 56.0]
    assert ladder.loc[0, ["ref_train", "ref_val", "ref_test"]].tolist() == [70.0, 50.0, 45.5]
    assert ladder.loc[0, ["ref_test_picked_epoch", "ref_test_picked_test"]].tolist() == [2, 49.06]
    assert ladder[["ref_test", "ref_test_plain"]].iloc[1:].isna().all().all()
    assert ladder["changes"].tolist() == [
        "—",
        "model.dropout 0.6→0.7; -blur; tta.passes 0→2",
        "'+translate(p=0.5, max=0.125); log_every 2→100",  # quoted: no spreadsheet formula
    ]
    assert ladder["description"][0] == "root <rung> & co"


def test_metrics_json_names_the_best_experiment_and_holds_every_experiment(report):
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    # The best by val (b, not c, whose test accuracy is higher); test_acc without TTA, the keys
    # an experiment's own entry has.
    assert metrics["best"] == {
        "experiment": "b",
        "best_epoch": 2,
        "val_acc": 70.0,
        "test_acc": 55.0,
        "test_acc_tta": 58.0,
    }
    assert metrics["experiments"]["a"] == {
        "best_epoch": 2,
        "train_acc": 60.0,
        "val_acc": 50.0,
        "test_acc": 40.0,
    }
    assert metrics["experiments"]["c"]["delta_test_vs_parent"] == 1.0
    assert metrics["experiments"]["c"]["delta_tta_vs_parent"] == 2.0
    assert "delta_tta_vs_parent" not in metrics["experiments"]["b"]  # a has no TTA


def test_checkpoints_csv_has_a_row_per_checkpoint(report):
    table = pd.read_csv(report / "checkpoints.csv")
    assert len(table) == 9
    assert table[["experiment", "epoch"]].drop_duplicates().shape[0] == 9
    row = table[(table["experiment"] == "b") & (table["epoch"] == 3)].iloc[0]
    assert (row["train_acc"], row["val_acc"], row["test_acc"], row["test_acc_tta"]) == (
        80.0,
        60.0,
        50.0,
        62.0,
    )
    assert row["tta_passes"] == 2
    assert table.groupby("experiment")["val_picked"].sum().tolist() == [1, 1, 1]
    assert table.loc[table["val_picked"], "epoch"].tolist() == [2, 2, 3]
    assert table.loc[table["test_picked"], "epoch"].tolist() == [3, 2, 3]  # by plain test


class _Page(html.parser.HTMLParser):
    """What the tests check in index.html: rows of #ladder's body, images, outside resources."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, dict]] = []
        self.ladder_rows = 0
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and any(t == "tbody" for t, _ in self.stack[-1:]) and self._in_ladder():
            self.ladder_rows += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe") or (tag != "img" and attrs.get("src")):
            self.external.append(tag)
        if tag not in ("img", "br", "meta"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def _in_ladder(self) -> bool:
        return any(t == "table" and a.get("id") == "ladder" for t, a in self.stack)


def test_page_is_self_contained_with_one_ladder_row_per_experiment(report):
    text = (report / "index.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert page.ladder_rows == 3
    assert len(page.images) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.external == []
    assert "://" not in text.replace("data:image/png;base64,", "")
    assert "root &lt;rung&gt; &amp; co" in text  # descriptions are escaped
    assert "49.06" in text  # the seed's best, in the headline
    assert "<strong>b</strong> has the best val accuracy" in text
    assert "its test accuracy there is <strong>55.00 %</strong> without TTA" in text


def test_markdown_has_the_tables_and_links_the_figures(report):
    lines = (report / "report.md").read_text(encoding="utf-8").splitlines()
    for name in FIGURES:
        assert any(f"(figures/{name}.png)" in line for line in lines)
    ladder = [line for line in lines if line.startswith(("| 1 | a —", "| 2 | b —", "| 3 | c —"))]
    assert ladder[1].startswith(
        "| 2 | b — dropout 0.7, no blur, TTA (seed: a note from the seed) | model.dropout 0.6→0.7;"
    )
    assert len(ladder) == 3
    picked = [line for line in lines if line.startswith(("| 1 | a |", "| 2 | b |", "| 3 | c |"))]
    assert len(picked) == 3  # the test-picked table: its own, below the ladder
    assert picked[0].startswith("| 1 | a | 60.00 (epoch 3) | +20.00 [")
    assert picked[0].endswith("] | 49.06 (epoch 2) |")
    assert len([line for line in lines if line.startswith(("| a |", "| b |", "| c |"))]) == 9


def test_delta_has_one_basis_on_every_row_and_its_header_names_it(report):
    """b has TTA and its parent a has not; c and its parent b both have TTA: Δ is plain minus
    plain on both rows, the TTA Δ only where both have TTA, and the headers say so."""
    ladder = pd.read_csv(report / "ladder.csv").set_index("experiment")
    for child, parent in (("b", "a"), ("c", "b")):
        plain = ladder.loc[child, "test_acc"] - ladder.loc[parent, "test_acc"]
        assert ladder.loc[child, "delta_test_vs_parent"] == pytest.approx(plain)
    assert ladder.loc["c", "delta_tta_vs_parent"] == pytest.approx(
        ladder.loc["c", "test_acc_tta"] - ladder.loc["b", "test_acc_tta"]
    )
    assert math.isnan(ladder.loc["b", "delta_tta_vs_parent"])

    # The headers name the basis.
    assert DELTA_TEST == "Δ test vs parent (no TTA, pp)"
    assert DELTA_TTA == "Δ TTA vote vs parent (pp)"
    md = md_ladder(report)  # each Δ first, then its interval and p-value
    assert [cell.split(" ")[0] for cell in md[DELTA_TEST]] == ["", "+15.00", "+1.00"]
    assert [cell.split(" ")[0] for cell in md[DELTA_TTA]] == ["", "", "+2.00"]
    page = (report / "index.html").read_text(encoding="utf-8")
    thead = page.split('<table id="ladder">', 1)[1].split("</thead>", 1)[0]
    assert f">{DELTA_TEST}</th>" in thead
    assert f">{DELTA_TTA}</th>" in thead
    assert f"<dt>{DELTA_TEST}</dt>" in page  # explained under "How to read"


@pytest.mark.parametrize("tta", [0.50, 0.58], ids=["tta-below-plain", "tta-above-plain"])
def test_headline_is_plain_test_at_the_val_picked_checkpoint_of_the_val_best(tmp_path, tta):
    """b is the best on val; at its checkpoint (epoch 2) plain test is 55 %. The headline is 55 %
    whether the TTA vote there is lower (50 %) or higher (58 %); c, with a higher test accuracy
    but a lower val accuracy, is not the best."""
    b = {**RESULTS["b"], "tta": [0.52, tta, 0.62]}
    out = tmp_path / "out"
    build_report(**write_inputs(tmp_path, results={"b": b}), out=out)

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["best"]["experiment"] == "b"
    assert metrics["best"]["test_acc"] == 55.0
    assert metrics["best"]["test_acc_tta"] == pytest.approx(100 * tta)
    ladder = pd.read_csv(out / "ladder.csv").set_index("experiment")
    assert ladder.loc["b", "test_acc"] == 55.0
    assert ladder["best"].tolist() == [False, True, False]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<title>Experiment ladder: b 55.00 %</title>" in page
    assert "its test accuracy there is <strong>55.00 %</strong> without TTA" in page
    assert f"The TTA vote over 2 passes gives {100 * tta:.2f} %, shown beside it." in page
    assert "Rung 3, c, has a higher test accuracy (56.00 %)" in page
    assert "every choice is made on val, every result is reported on test" in page
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "its test accuracy there is **55.00 %** without TTA" in md


def test_worst_classes_labels_touch_no_line_and_no_other_label():
    """Many classes with values at and around the all-classes line: every value label is clear
    of the line, the grid and the other labels."""
    n = 200
    acc = np.full(n, 40.1)  # the all-classes value: a label at the bar's end would touch the line
    acc[::3] = 39.0  # ... and one just short of it would cross it
    per_class = pd.DataFrame(
        {"experiment": "x", "epoch": 5, "index": range(n), "count": 50, "test_acc": acc}
    )
    ladder = pd.DataFrame([{"experiment": "x", "best_epoch": 5, "val_acc": 41.0, "test_acc": 40.1}])
    classes = {i: f"class {i}" for i in range(n)}
    with plt.rc_context(figures.THEME):
        fig, _ = figures.worst_classes(SimpleNamespace(per_class=per_class), ladder, classes)
    try:
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(labels) >= figures.WORST_CLASSES
        lines = [*ax.get_lines(), *ax.xaxis.get_gridlines(), *ax.yaxis.get_gridlines()]
        clear = 2  # pixels: a line's bounds leave out its width
        lines = [
            line.get_window_extent(renderer).padded(clear) for line in lines if line.get_visible()
        ]
        for i, label in enumerate(labels):
            assert not any(label.overlaps(line) for line in lines)
            assert not any(label.overlaps(other) for other in labels[i + 1 :])
    finally:
        plt.close(fig)


def _history(curves: dict[str, list[float]], column: str = "lr") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"experiment": name, "epoch": e, column: v, "train_acc": 50.0, "val_acc": 40.0}
            for name, values in curves.items()
            for e, v in enumerate(values, 1)
        ]
    )


def test_identical_curves_share_one_line_that_names_them_all():
    """a and c have the same schedule: drawn apart, one would hide the other. One line for
    both, its legend entry naming both; b's own line; a log axis with plain tick labels."""
    curves = {"a": [0.1, 0.01, 0.001], "b": [0.1, 0.05, 0.01], "c": [0.1, 0.01, 0.001]}
    runs = SimpleNamespace(names=list(curves), history=_history(curves))
    with plt.rc_context(figures.THEME):
        fig, caption = figures.learning_rate(runs)
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a, c (2 experiments)", "b"]
        assert len(ax.get_lines()) == 2
        assert ax.get_yscale() == "log"
        fig.canvas.draw()
        ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert ticks
        assert not [t for t in ticks if "$" in t or "mathdefault" in t], ticks
        assert "share one line" in caption
    finally:
        plt.close(fig)


def test_a_long_shared_legend_entry_counts_the_rest():
    names = [f"experiment_{i:02d}" for i in range(12)]
    label = figures._shared_label(names)
    assert label.endswith("(12 experiments)")
    assert len(label.splitlines()) <= 3
    shown = [n for n in names if n in label]
    assert shown == names[: len(shown)]
    assert f"and {12 - len(shown)} more" in label


def test_ladder_axis_is_zoomed_to_the_numbers_and_their_intervals():
    """Rungs between 40 % and 60 % on a 0-100 axis would look flat: the axis spans what is
    drawn (intervals included) with a margin, inside [0, 100]."""
    ladder = pd.DataFrame(
        {
            "experiment": ["a", "b", "c"],
            "test_acc": [40.0, 50.0, 60.0],
            "test_acc_low": [35.0, 45.0, 55.0],
            "test_acc_high": [45.0, 55.0, 66.0],
            "test_acc_tta": [np.nan, 51.0, 61.0],
            "val_acc": [42.0, 52.0, 62.0],
            "ref_test": [np.nan, 48.0, np.nan],
            "ref_val": [np.nan, np.nan, np.nan],
        }
    )
    with plt.rc_context(figures.THEME):
        fig, caption = figures.ladder_chart(ladder)
    try:
        low, high = fig.axes[0].get_ylim()
        assert 25 < low <= 35, low
        assert 66 <= high < 75, high
        assert "need not start at 0" in caption
    finally:
        plt.close(fig)
    ladder[["test_acc_low", "val_acc"]] = [[0.5, 1.0], [45.0, 52.0], [55.0, 62.0]]
    with plt.rc_context(figures.THEME):
        fig, _ = figures.ladder_chart(ladder)
    assert fig.axes[0].get_ylim()[0] == 0  # never below 0 %
    plt.close(fig)


def test_a_panel_without_a_train_line_says_why():
    """c logs every 100 steps and ran 3 epochs of 5: no train window, and its panel says so; a
    and b have their lines and no such note."""
    settings = {
        "a": {"batch_size": 4, "epochs": 3, "log_every": 2},
        "b": {"batch_size": 4, "epochs": 3, "log_every": 2},
        "c": {"batch_size": 4, "epochs": 3, "log_every": 100},
    }
    steps = pd.DataFrame(
        [{"experiment": n, "step": s, "acc": 50.0} for n in ("a", "b") for s in range(2, 16, 2)]
    )
    history = _history({n: [0.1, 0.1, 0.1] for n in settings})
    runs = SimpleNamespace(names=list(settings), settings=settings, history=history, steps=steps)
    with plt.rc_context(figures.THEME):
        fig, caption = figures.accuracy_vs_step(runs, train_images=20)
    try:
        notes = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
        assert notes["c"] == ["no train window logged:\nlog_every 100 > 15 steps in all"]
        assert notes["a"] == notes["b"] == []
        assert "says why" in caption
    finally:
        plt.close(fig)


def test_report_is_reproducible(report):
    again = report.parent / "again"
    build_report(**write_inputs(report.parent), out=again)
    for path in sorted(report.rglob("*.*")):
        assert path.read_bytes() == (again / path.relative_to(report)).read_bytes(), path.name


def test_report_of_one_experiment_whose_parent_is_left_out(tmp_path):
    out = tmp_path / "out"
    build_report(**write_inputs(tmp_path, names=["b"]), out=out)
    ladder = pd.read_csv(out / "ladder.csv")
    assert ladder["changes"].tolist() == ["(parent a is not in this report)"]
    assert math.isnan(ladder["delta_test_vs_parent"][0])
    assert "seed reported no numbers" in (out / "index.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Failures name the file and leave no report behind


def _break_eval(inputs: dict) -> Path:
    path = inputs["runs"] / "b" / "eval" / "epoch_002.json"
    path.unlink()
    return path


def _break_history(inputs: dict) -> Path:
    path = inputs["runs"] / "a" / "history.csv"
    path.write_text("epoch,lr\n1,0.1\n")
    return path


def _break_selection(inputs: dict) -> Path:
    inputs["selection"].write_text('{"experiments": [')
    return inputs["selection"]


def _break_report_json(inputs: dict) -> Path:
    path = inputs["configs"] / "c" / "report.json"
    path.write_text("[]")
    return path


def _break_predictions(inputs: dict) -> Path:
    path = inputs["runs"] / "b" / "eval" / "epoch_002.npz"
    path.write_bytes(path.read_bytes()[:-30])
    _remanifest(path.parent)  # cut short, and listed so: the report reads it and fails
    return path


def _swap_predictions(inputs: dict) -> Path:
    """b's epoch 2 predictions replaced by epoch 3's (another accuracy): a valid file that does
    not belong to the JSON beside it."""
    folder = inputs["runs"] / "b" / "eval"
    (folder / "epoch_002.npz").write_bytes((folder / "epoch_003.npz").read_bytes())
    _remanifest(folder)
    return folder / "epoch_002.npz"


def _remanifest(folder: Path) -> None:
    built = manifest.build(folder)
    io.write_json(folder / manifest.INNER, built)
    io.write_json(manifest.sibling(folder), built)


def _break_labels(inputs: dict) -> Path:
    path = inputs["data"] / "test_y.npy"
    np.save(path, np.zeros(7, dtype=np.int64))
    _remanifest(inputs["data"])
    return inputs["runs"] / "a" / "eval" / "epoch_001.json"  # evaluated on 100 images, not 7


def _break_images(inputs: dict) -> Path:
    path = inputs["data"] / "train_x.npy"
    path.write_bytes(b"not an array")
    return path


@pytest.mark.parametrize(
    "corrupt",
    [
        _break_eval,
        _break_history,
        _break_selection,
        _break_report_json,
        _break_images,
        _break_predictions,
        _swap_predictions,
        _break_labels,
    ],
)
def test_a_bad_input_fails_naming_it_and_leaves_the_old_report(tmp_path, corrupt):
    inputs = write_inputs(tmp_path)
    bad = corrupt(inputs)
    with pytest.raises((ValueError, OSError), match=str(bad).replace("\\", "\\\\")):
        build_report(**inputs, out=tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()

    old = tmp_path / "old"
    old.mkdir()
    (old / "index.html").write_text("previous report", encoding="utf-8")
    with pytest.raises((ValueError, OSError)):
        build_report(**inputs, out=old)
    assert [p.name for p in old.iterdir()] == ["index.html"]
    assert (old / "index.html").read_text(encoding="utf-8") == "previous report"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_report_by_hand_neither_takes_nor_replaces_the_engines_last_report(tmp_path):
    """`ladder report --out <folder>` by hand: the last complete report of results/report (kept
    for the engines, which pass --last) is not put into that folder while it is built, so a
    failed build leaves no complete-looking old report there, and a finished one does not take
    its place as results/report's last."""
    inputs = write_inputs(tmp_path / "in")
    last = tmp_path / stages.LAST_REPORT
    last.mkdir(parents=True)
    (last / "index.html").write_text("the engines' last report", encoding="utf-8")

    def report(out: str) -> subprocess.CompletedProcess:
        args = [f"--{k}={v}" for k, v in inputs.items()]
        return subprocess.run(
            [sys.executable, "-m", "ladder", "report", *args, f"--out={out}"],
            cwd=tmp_path, capture_output=True, text=True, check=False,
        )  # fmt: skip

    selection = inputs["selection"].read_text()
    _break_selection(inputs)
    failed = report("by-hand")
    assert failed.returncode != 0, failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr
    assert not (tmp_path / "by-hand").exists()
    inputs["selection"].write_text(selection)
    done = report("by-hand")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "by-hand" / "index.html").stat().st_size > 1000
    assert [p.name for p in last.iterdir()] == ["index.html"]
    assert (last / "index.html").read_text(encoding="utf-8") == "the engines' last report"


# ----------------------------------------------------------------------------------------------
# TensorBoard's HPARAMS view, read back by a real TensorBoard


@contextlib.contextmanager
def _tensorboard(logdir: Path):
    """`tensorboard --logdir logdir` on a free loopback port; yields its address."""
    exe = Path(sys.executable).with_name("tensorboard")
    proc = subprocess.Popen(
        [str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Starts in about 5 s; killed after 120 s if it never says where it listens.
    timer = threading.Timer(120, proc.kill)
    timer.start()
    try:
        for line in proc.stderr:
            if found := re.search(r"at (http://127\.0\.0\.1:\d+/)", line):
                yield found[1]
                break
        else:
            pytest.fail(f"tensorboard exited ({proc.wait()}) without serving")
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
        proc.stderr.close()


def _hparams(url: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}data/plugin/hparams/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_tensorboard_shows_every_row_with_its_settings_and_results(report):
    """TensorBoard's HPARAMS view has a session per ladder row: the settings that differ
    between the experiments, and the results at the val-picked checkpoint, TTA included."""
    ladder = pd.read_csv(report / "ladder.csv").set_index("experiment")
    with _tensorboard(report / "tensorboard") as url:
        experiment = _hparams(url, "experiment", {"experimentName": ""})
        query = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        }
        for _ in range(120):  # TensorBoard loads the runs in the background: about a second
            groups = _hparams(url, "session_groups", query)["sessionGroups"]
            if len(groups) == len(ladder):
                break
            time.sleep(0.5)
    hparams = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model.dropout", "tta.passes", "augment.blur.p"} <= hparams
    assert "batch_size" not in hparams  # the same in every experiment
    metrics = {m["name"]["tag"]: m["displayName"] for m in experiment["metricInfos"]}
    assert metrics["ladder/test_acc"] == "test, no TTA (%)"
    assert metrics["ladder/test_acc_tta"] == "test, TTA vote (%)"
    sessions = {g["name"]: g for g in groups}
    assert sorted(sessions) == sorted(ladder.index)
    for name, group in sessions.items():
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        row = ladder.loc[name]
        assert values["ladder/test_acc"] == pytest.approx(row["test_acc"], abs=1e-4)
        assert values["ladder/best_epoch"] == row["best_epoch"]
        if math.isnan(row["test_acc_tta"]):
            assert "ladder/test_acc_tta" not in values
        else:
            assert values["ladder/test_acc_tta"] == pytest.approx(row["test_acc_tta"], abs=1e-4)
    assert sessions["a"]["hparams"]["model.dropout"] == pytest.approx(0.6)
    assert sessions["b"]["hparams"]["model.dropout"] == pytest.approx(0.7)


def test_a_run_early_stopping_ended_says_where_and_is_read_at_the_checkpoints_it_saved(tmp_path):
    results = {"c": {**RESULTS["c"], "stopped_early": 2}}  # c asks for 3 epochs, stopped at 2
    out = tmp_path / "out"
    build_report(**write_inputs(tmp_path, results=results), out=out)
    ladder = pd.read_csv(out / "ladder.csv", keep_default_na=False, na_values=[""])
    assert ladder["stopped_early"][:2].isna().all()  # a and b ran every epoch
    assert ladder.loc[2, "stopped_early"] == 2
    assert ladder.loc[2, "epochs"] == 3
    assert ladder.loc[2, "best_epoch"] == 2  # the best of the checkpoints it saved (1 and 2)
    checkpoints = pd.read_csv(out / "checkpoints.csv")
    assert checkpoints.loc[checkpoints["experiment"] == "c", "epoch"].tolist() == [1, 2]
    assert "stopped at 2" in (out / "index.html").read_text()
    assert "of 3 stopped at 2" in (out / "report.md").read_text()
