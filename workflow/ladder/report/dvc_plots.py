"""Tables for `dvc plots show/diff`, in the shape DVC's Vega-Lite templates draw.

DVC colours a plot's lines by file and revision, never by a column; so every per-experiment file
(history.csv) would be a plot of its own, or one colour for all. Instead the report writes one
long table per view, with an `experiment` column, and the project's templates
(.dvc/plots/lines_by_experiment.json) draw one line per experiment. The views themselves (file,
x, y, template) are declared in ladder.stages.PLOTS, from which dvc.yaml is generated.
"""

from __future__ import annotations

from pathlib import Path

from ladder.report import tables

CURVES = "curves.csv"
CURVES_COLUMNS = ["experiment", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]


def write(runs: tables.Runs, out: str | Path) -> Path:
    """out/curves.csv: every selected experiment's history.csv, one row per (experiment, epoch),
    in ladder order; accuracies in %, as everywhere in the report."""
    path = Path(out) / CURVES
    tables.write_csv(runs.history[CURVES_COLUMNS], path)
    return path
