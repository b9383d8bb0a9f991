"""`dvc plots show/diff` on the report's tables: DVC itself fills the project's templates
(.dvc/plots/) with synthetic tables of the report's shape, and the Vega-Lite specs it returns
have the data, the right fields on the right axes with the right types, and one colour per
experiment (one bar per experiment for the ladder)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO, Deadline, require_browser
from ladder import stages
from ladder.report import dvc_plots, tables
from PIL import Image

# More experiments than a 10-colour palette has, more epochs than one digit: colours must not
# repeat and epochs must sort as numbers ("10" < "9" as text).
EXPERIMENTS = [f"rung{i:02d}_{name}" for i, name in enumerate("abcdefghijkl", 1)]
EPOCHS = 12


def history() -> pd.DataFrame:
    rows = [
        {
            "experiment": name,
            "epoch": epoch,
            "lr": 0.1 / epoch,
            "train_loss": 3.0 - 0.1 * epoch - 0.01 * i,
            "train_acc": 10.0 + 5 * epoch + i,
            "val_loss": 3.2 - 0.1 * epoch,
            "val_acc": 8.0 + 4 * epoch + i / 2,
            "seconds": 1.0,
        }
        for i, name in enumerate(EXPERIMENTS)
        for epoch in range(1, EPOCHS + 1)
    ]
    return pd.DataFrame(rows)


def write_report_tables(folder: Path, shift: float = 0.0) -> None:
    """ladder.csv, checkpoints.csv (the report's columns) and curves.csv (dvc_plots.write)."""
    folder.mkdir(parents=True, exist_ok=True)
    curves = history()
    curves[["train_acc", "val_acc"]] += shift
    dvc_plots.write(SimpleNamespace(history=curves), folder)
    ladder = pd.DataFrame(
        [
            {"rung": i, "experiment": name, "test_acc": 20.0 + 2.5 * i + shift, "best": False}
            for i, name in enumerate(EXPERIMENTS, 1)
        ],
        columns=list(tables.LADDER_COLUMNS),
    )
    tables.write_csv(ladder, folder / "ladder.csv")
    checkpoints = curves.assign(test_acc=curves["val_acc"] - 1)
    checkpoints = checkpoints.reindex(columns=tables.CHECKPOINT_COLUMNS)
    tables.write_csv(checkpoints, folder / "checkpoints.csv")


def dvc_project(root: Path) -> Path:
    """A DVC project with the project's templates and every view of stages.PLOTS (also those
    whose file the report stage does not declare yet)."""
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    shutil.copytree(REPO / stages.PLOT_TEMPLATES, root / stages.PLOT_TEMPLATES)
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the page to fill
    plots = [stages.dvc_plot(plot) for plot in stages.PLOTS]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    write_report_tables(root / stages.REPORT)
    return root


def dvc_json(root: Path, *args: str) -> dict[str, dict]:
    """Plot id -> its filled Vega-Lite spec, from `dvc plots <args> --json`."""
    proc = subprocess.run(
        [str(BIN / "dvc"), "plots", *args, "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert not out.get("errors"), out["errors"]
    return {plot_id: renderers[0]["content"] for plot_id, renderers in out["data"].items()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return dvc_project(tmp_path_factory.mktemp("dvc") / "p")


@pytest.fixture(scope="module")
def specs(project) -> dict[str, dict]:
    return dvc_json(project, "show")


def test_every_view_renders_with_its_data(specs):
    assert set(specs) == {plot.id for plot in stages.PLOTS}
    for plot in stages.PLOTS:
        spec = specs[plot.id]
        assert "<DVC_METRIC" not in json.dumps(spec), f"{plot.id}: an anchor left unfilled"
        values = spec["data"]["values"]
        assert {v["experiment"] for v in values} == set(EXPERIMENTS), plot.id
        assert all(v[plot.x] != "" and v[plot.y] != "" for v in values), plot.id
        assert spec["title"]["text"] == plot.title
        assert spec["encoding"]["x"]["title"] == plot.x_label
        assert spec["encoding"]["y"]["title"] == plot.y_label


def test_the_ladder_is_one_bar_per_experiment_in_ladder_order(specs):
    spec = specs["ladder"]
    assert spec["mark"]["type"] == "bar"
    x, y = spec["encoding"]["x"], spec["encoding"]["y"]
    assert (x["field"], x["type"]) == ("test_acc", "quantitative")
    assert (y["field"], y["type"]) == ("experiment", "nominal")
    assert y["sort"] == {"field": "rung", "op": "min", "order": "ascending"}
    values = spec["data"]["values"]
    assert [v["experiment"] for v in values] == EXPERIMENTS
    assert [float(v["test_acc"]) for v in values] == [20.0 + 2.5 * i for i in range(1, 13)]
    # DVC reads CSV cells as text: the template makes numbers of what it sorts and measures.
    assert {"calculate": "toNumber(datum['test_acc'])", "as": "test_acc"} in spec["transform"]
    assert {"calculate": "toNumber(datum.rung)", "as": "rung"} in spec["transform"]


@pytest.mark.parametrize("plot", [p for p in stages.PLOTS if p.template != "ladder_bars"])
def test_lines_are_coloured_by_experiment(specs, plot):
    spec = specs[plot.id]
    assert spec["mark"]["type"] == "line"
    enc = spec["encoding"]
    assert (enc["x"]["field"], enc["x"]["type"]) == ("epoch", "quantitative")
    assert (enc["y"]["field"], enc["y"]["type"]) == (plot.y, "quantitative")
    assert (enc["color"]["field"], enc["color"]["type"]) == ("experiment", "nominal")
    assert enc["color"]["sort"] is None  # the legend in ladder order
    # A continuous scheme, sampled once per experiment: no colour repeats, however many.
    assert enc["color"]["scale"] == {"scheme": "sinebow"}
    for axis in (plot.x, plot.y):
        assert {"calculate": f"toNumber(datum['{axis}'])", "as": axis} in spec["transform"]
    values = spec["data"]["values"]
    for name in EXPERIMENTS:
        epochs = [int(v["epoch"]) for v in values if v["experiment"] == name]
        assert sorted(epochs) == list(range(1, EPOCHS + 1)), (plot.id, name)


def test_two_revisions_are_told_apart(project, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(project, root)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], cwd=root, check=True)
    write_report_tables(root / stages.REPORT, shift=1.0)
    specs = dvc_json(root, "diff", "HEAD")
    bars = specs["ladder"]
    assert {v["rev"] for v in bars["data"]["values"]} == {"HEAD", "workspace"}
    assert bars["encoding"]["yOffset"]["field"] == "rev"  # side by side
    assert bars["encoding"]["color"]["field"] == "rev"
    lines = specs["val_acc"]["encoding"]
    assert lines["strokeDash"]["field"] == "rev"  # same colour, dashed by revision
    assert lines["color"]["field"] == "experiment"


def html_page(project: Path, out: Path) -> Path:
    """`dvc plots show -o out`, as a user runs it; the page it writes."""
    subprocess.run(
        [str(BIN / "dvc"), "plots", "show", "-o", str(out)],
        cwd=project,
        capture_output=True,
        check=True,
    )
    return out / "index.html"


def test_the_html_page_has_every_view_and_needs_no_network(project, tmp_path):
    page = html_page(project, tmp_path / "html").read_text()
    assert page.count("vegaEmbed(") == len(stages.PLOTS)
    assert "vega 5.21.0" in page  # the project's page (.dvc/config), not DVC's own
    assert not re.search(r"<script[^>]+src=", page), "a script from elsewhere: blank offline"


def test_the_html_page_draws_every_view_offline_in_a_browser(project, tmp_path):
    screenshot = require_browser()
    page = html_page(project, tmp_path / "html")
    with screenshot.chromium(1400, 1000) as driver:
        driver.get(page.as_uri())
        # Vega-Embed puts one canvas in each view's div once it has drawn the chart.
        deadline = Deadline("Vega drawing the DVC plots page", expected=2)
        while True:
            drawn = driver.execute_script(
                "return [...document.querySelectorAll('body > div[id]')]"
                ".map(d => [d.id, d.querySelectorAll('canvas, svg').length])"
            )
            if len(drawn) == len(stages.PLOTS) and all(n for _, n in drawn):
                break
            deadline.check()
            time.sleep(0.2)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # A chart, not an empty canvas: the first one has more than a few colours.
        png = tmp_path / "page.png"
        driver.save_screenshot(str(png))
    assert len(Image.open(png).convert("RGB").getcolors(1 << 20)) > 20


def test_dvc_yaml_declares_the_views_of_files_the_stages_write():
    plots = yaml.safe_load(stages.dvc_yaml()).get("plots", [])
    outputs = {p for stage in stages.STAGES.values() for p in stage.out_paths}
    declared = [plot.id for plot in stages.PLOTS if plot.file in outputs]
    assert [next(iter(entry)) for entry in plots] == declared
    assert {"ladder", "checkpoints"} <= set(declared)
    for plot in stages.PLOTS:
        assert (REPO / stages.PLOT_TEMPLATES / f"{plot.template}.json").is_file(), plot.template


def test_curves_are_the_history_of_every_experiment_in_ladder_order(tmp_path):
    runs = SimpleNamespace(history=history())
    path = dvc_plots.write(runs, tmp_path)
    curves = pd.read_csv(path)
    assert list(curves.columns) == dvc_plots.CURVES_COLUMNS
    assert list(dict.fromkeys(curves["experiment"])) == EXPERIMENTS
    assert len(curves) == len(EXPERIMENTS) * EPOCHS
