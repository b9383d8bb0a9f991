"""`ladder report`: the changes text, the tables, the page, and failing without a trace."""

from __future__ import annotations

import html.parser
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from ladder.report import build_report
from ladder.report.tables import changes
from report_fixtures import write_inputs

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
        "lr 0.01→0.1; weight_decay 0.0001→1e-05; schedule cosine→multistep; -t_max; -eta_min; "
        "+milestones=[30, 45]; +gamma=0.1; epochs 30→60; tta.passes 5→10"
    )


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
    # b vs a: a has no TTA, so plain vs plain; c vs b: both have TTA, so vote vs vote.
    assert math.isnan(ladder["delta_test_vs_parent"][0])
    assert list(ladder["delta_test_vs_parent"][1:]) == [15.0, 2.0]
    # Selected on the test set (TTA vote where there is TTA), labelled as such.
    assert list(ladder["test_picked_epoch"]) == [3, 3, 3]
    assert list(ladder["test_picked_test"]) == [60.0, 62.0, 60.0]
    assert ladder.loc[0, ["ref_train", "ref_val", "ref_test"]].tolist() == [70.0, 50.0, 45.5]
    assert ladder.loc[0, ["ref_test_picked_epoch", "ref_test_picked_test"]].tolist() == [2, 49.06]
    assert ladder[["ref_test", "ref_test_plain"]].iloc[1:].isna().all().all()
    assert ladder["changes"].tolist() == [
        "—",
        "model.dropout 0.6→0.7; -blur; tta.passes 0→2",
        "+translate(p=0.5, max=0.125); log_every 2→100",
    ]
    assert ladder["description"][0] == "root <rung> & co"


def test_metrics_json_holds_the_best_and_every_experiment(report):
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["best"] == {"rung": 3, "epoch": 3, "test": 60.0, "val_acc": 66.0}
    assert metrics["experiments"]["a"] == {
        "best_epoch": 2,
        "train_acc": 60.0,
        "val_acc": 50.0,
        "test_acc": 40.0,
    }
    assert metrics["experiments"]["c"]["delta_test_vs_parent"] == 2.0


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
    assert "<strong>c</strong> reaches <strong>60.00 %</strong>" in text


def test_markdown_has_the_tables_and_links_the_figures(report):
    lines = (report / "report.md").read_text(encoding="utf-8").splitlines()
    for name in FIGURES:
        assert any(f"(figures/{name}.png)" in line for line in lines)
    ladder = [line for line in lines if line.startswith(("| 1 | a", "| 2 | b", "| 3 | c"))]
    assert ladder[1].startswith(
        "| 2 | b — dropout 0.7, no blur, TTA (seed: a note from the seed) | model.dropout 0.6→0.7;"
    )
    assert len(ladder) == 3
    assert len([line for line in lines if line.startswith(("| a |", "| b |", "| c |"))]) == 9


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


def _break_images(inputs: dict) -> Path:
    path = inputs["data"] / "train_x.npy"
    path.write_bytes(b"not an array")
    return path


@pytest.mark.parametrize(
    "corrupt", [_break_eval, _break_history, _break_selection, _break_report_json, _break_images]
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
