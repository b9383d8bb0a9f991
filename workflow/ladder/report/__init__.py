"""`ladder report`: one page, two tables and a set of figures from every selected experiment.

Reads only the files the stages before it wrote (settings, run files, evaluations with their
per-image predictions, the val/test labels, the train images for the augmentation figure) and
builds the whole report in a temporary folder that replaces `out` only when complete: a failure
leaves the previous report as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ladder import io, manifest
from ladder.report import dvc_plots, figures, html, tables

log = logging.getLogger(__name__)


def build_report(
    selection: str | Path, configs: str | Path, runs: str | Path, data: str | Path, out: str | Path
) -> Path:
    """Write out/{index.html, report.md, ladder.csv, checkpoints.csv, curves.csv, metrics.json,
    figures/}."""
    names = tables.read_selection(selection)
    manifest.read(data)
    for name in names:
        manifest.read(Path(runs) / name / "eval")
    loaded = tables.read_runs(names, configs, runs, tables.read_labels(data))
    images, classes = tables.read_images(data), tables.read_classes(data)
    ladder = tables.ladder_table(loaded)
    checkpoints = tables.checkpoints_table(loaded)
    with io.atomic_dir(out) as tmp:
        captions = figures.write_figures(loaded, ladder, images, classes, tmp / "figures")
        tables.write_csv(ladder, tmp / "ladder.csv")
        tables.write_csv(checkpoints, tmp / "checkpoints.csv")
        io.write_json(tmp / "metrics.json", tables.metrics(ladder))
        dvc_plots.write(loaded, tmp)
        html.write(tmp, loaded, ladder, checkpoints, captions)
    log.info("report of %d experiments in %s", len(names), out)
    return Path(out)
