"""`ladder report`: one page, two tables and a set of figures from every selected experiment.

Reads only the files the stages before it wrote (settings, run files, evaluations with their
per-image predictions, the val/test labels, the train images for the augmentation figure) and
builds the whole report in a temporary folder that replaces `out` only when complete: a failure
leaves the previous report as it was. Snakemake removes a job's outputs before it starts it, so
the last complete report is also kept, as links, in results/cache/report/ and put back first
(the profile keeps a failed job's outputs: keep-incomplete).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ladder import io, manifest, provenance
from ladder.report import dvc_plots, figures, hparams, html, tables

log = logging.getLogger(__name__)


def build_report(
    selection: str | Path,
    configs: str | Path,
    runs: str | Path,
    data: str | Path,
    out: str | Path,
    last: str | Path | None = None,
) -> Path:
    """Write out/{index.html, report.md, ladder.csv, checkpoints.csv, curves.csv, metrics.json,
    provenance.json, figures/, tensorboard/}; keep a copy of it in `last` (see the module
    doc)."""
    out = Path(out)
    if last is not None and not (out / "index.html").exists() and Path(last).is_dir():
        _copy(Path(last), out)
        log.info("the last complete report is back in %s until this one is complete", out)
    names = tables.read_selection(selection)
    # Every byte the report reads, checked against its digest (ladder.manifest): these first,
    # the evaluations as they are read (tables.read_runs: tens of thousands of files, each read
    # once, its bytes digested and parsed).
    manifest.verify(data, tables.DATA_FILES)
    for name in names:
        manifest.verify_beside(Path(runs) / name / "checkpoints", tables.RUN_TABLES)
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
        hparams.write(loaded, ladder, tmp)
        html.write(tmp, loaded, ladder, checkpoints, captions)
        io.write_json(tmp / "provenance.json", {"made_with": provenance.made_with()})
    if last is not None:
        _copy(out, Path(last))
    log.info("report of %d experiments in %s", len(names), out)
    return out


def _copy(src: Path, dst: Path) -> None:
    """`dst` becomes a copy of the folder `src`, made of hard links where the file system allows
    (the report's files are only ever replaced, never written in place)."""
    with io.atomic_dir(dst) as tmp:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            io.link_or_copy(path, tmp / path.relative_to(src))
