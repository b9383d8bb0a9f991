"""The report's figures: seaborn on matplotlib's Agg backend, one PNG per figure.

The set of files is fixed (the names in `write_figures`), whatever the data: Snakemake and DVC
declare them. Facets wrap at COLUMNS per row and legends of many lines sit outside the axes, so
1 and 26 experiments both read well.

Scale: every figure's size, and so its drawing's time and memory, has a ceiling that does not
grow with the number of experiments (a ladder of 1,000 draws in the time of one of 26, see
BENCHMARKS.md). The per-experiment panels show the first PANELS experiments in ladder order (the
page links the others to their checkpoint tables); figures that depend only on settings draw one
row per distinct setting (the augmentations, at most AUGMENT_ROWS); line figures with more than
LEGEND_LINES distinct curves colour them by rung instead of naming each in a legend; the ladder
chart names its rungs up to LADDER_NAMES and numbers them beyond. No layout engine runs over a
grid of panels: their margins are fixed, in inches.

The augmentations figure runs the training ops, which are torch's, in a process of its own
(`_augmented`): the report itself does not import torch (2-3 CPU-s and 700 MB), and a ladder
without augmentation starts none.
"""

from __future__ import annotations

import io as stdio
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

import ladder
from ladder import augment_registry
from ladder.report.tables import Runs, best_experiment, picked_on_val

COLUMNS = 4  # facets per row
DPI = 100
AUGMENT_SAMPLES = 8  # training images per row of augmentations.png
AUGMENT_SEED = 0  # every row draws the same random numbers: rows differ only by their settings
AUGMENT_TILE = 96  # target tile size in pixels (images are scaled by a whole factor)
GAP = 2  # pixels between the tiles of augmentations.png
WORST_CLASSES = 20
PANELS = 24  # per-experiment panels drawn (the first, in ladder order): 6 rows of COLUMNS
PANEL_FIGURES = ("accuracy_vs_step", "test_per_checkpoint")  # the figures drawn as panels
AUGMENT_ROWS = 32  # distinct augmentation settings drawn, in ladder order
LEGEND_LINES = 20  # distinct curves a line figure names in its legend; beyond: coloured by rung
LADDER_NAMES = 60  # rungs the ladder chart names on its x axis; beyond: their numbers

TRAIN_COLOR, VAL_COLOR, TEST_COLOR, TTA_COLOR = sns.color_palette("deep", 4)
THEME = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.8),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "legend.frameon": False,
    # Class and experiment names are text, never mathtext: `$x^2$` or `a_b$` drawn as written.
    "text.parse_math": False,
}


def write_figures(
    runs: Runs, ladder: pd.DataFrame, images: np.ndarray, classes: dict[int, str], out: Path
) -> dict[str, str]:
    """Write out/<name>.png for every figure; return name -> caption, in reading order."""
    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    draw: dict[str, Callable[[], tuple[plt.Figure, str]]] = {
        "ladder": lambda: ladder_chart(ladder),
        "accuracy_vs_step": lambda: accuracy_vs_step(runs, len(images)),
        "test_per_checkpoint": lambda: checkpoint_accuracy(runs),
        "gap": lambda: gap(runs),
        "lr": lambda: learning_rate(runs),
        "worst_classes": lambda: worst_classes(runs, ladder, classes),
        "augmentations": lambda: augmentations(runs, images),
    }
    captions = {}
    with plt.rc_context(THEME):
        for name, make in draw.items():
            try:
                fig, captions[name] = make()
                _save(fig, out / f"{name}.png")
            except (ValueError, RuntimeError) as e:  # the CLI shows these without a traceback
                raise ValueError(f"{out.name}/{name}.png: {e}") from e
    return captions


# ----------------------------------------------------------------------------------------------
# Helpers


def _save(fig: plt.Figure, path: Path) -> None:
    # Panel grids have fixed margins (`_panel_grid`): measuring every label of every panel
    # again to crop is their cost; other figures are one axes, cropped to what they draw.
    tight = not getattr(fig, "fixed_layout", False)
    try:
        fig.savefig(path, bbox_inches="tight" if tight else None, metadata={"Software": None})
    finally:
        plt.close(fig)


def _palette(names: list[str]) -> dict[str, tuple]:
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colors, strict=True))


def panel_names(runs: Runs) -> list[str]:
    """The experiments the panel figures draw: the first PANELS, in ladder order."""
    return runs.names[:PANELS]


def _panel_grid(names: list[str], xlabel: str) -> tuple[plt.Figure, list[plt.Axes]]:
    """One panel per experiment, in ladder order, COLUMNS per row, y shared, with margins fixed
    in inches (no layout engine: its cost grows with every label of every panel)."""
    cols = min(len(names), COLUMNS)
    rows = math.ceil(len(names) / cols)
    height = 3.0 if len(names) <= 2 else 2.4
    width = 1.45 * height
    # inches: left (y label, ticks), right, top (legend), bottom (x label), between panels
    left, right, top, bottom, across, down = 0.75, 0.2, 0.75, 0.6, 0.35, 0.75
    fig_w = left + right + cols * width + (cols - 1) * across
    fig_h = top + bottom + rows * height + (rows - 1) * down
    fig = plt.figure(figsize=(fig_w, fig_h))
    grid = fig.subplots(
        rows,
        cols,
        sharey=True,
        squeeze=False,
        gridspec_kw={
            "left": left / fig_w,
            "right": 1 - right / fig_w,
            "top": 1 - top / fig_h,
            "bottom": bottom / fig_h,
            "wspace": across / width,
            "hspace": down / height,
        },
    )
    axes = list(grid.flat)
    for ax in axes[len(names) :]:
        fig.delaxes(ax)
    axes = axes[: len(names)]
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.set_title(name)
        if i % cols == 0:
            ax.set_ylabel("accuracy (%)")
        if i + cols >= len(names):  # nothing below it
            ax.set_xlabel(xlabel)
    fig.fixed_layout = True  # _save: no cropping pass
    return fig, axes


def _faceted(
    data: pd.DataFrame, names: list[str], panel, xlabel: str, styles: dict[str, dict]
) -> plt.Figure:
    """A panel per experiment drawn by `panel(part, ax)`, accuracy on y, one legend for all
    panels above them."""
    fig, axes = _panel_grid(names, xlabel)
    parts = dict(tuple(data[data["experiment"].isin(names)].groupby("experiment", sort=False)))
    for ax, name in zip(axes, names, strict=True):
        part = parts.get(name, data.iloc[:0])
        panel(part.assign(experiment=name) if part.empty else part, ax)
    handles = [Line2D([], [], label=label, **style) for label, style in styles.items()]
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1 - 0.55 / fig.get_figheight()),
        ncol=len(handles),
    )
    return fig


def _panels_note(runs: Runs) -> str:
    """The caption's note on the experiments a panel figure leaves out."""
    rest = len(runs.names) - len(panel_names(runs))
    if not rest:
        return ""
    return (
        f" Panels of the first {PANELS} of {len(runs.names)} experiments in ladder order; the "
        f"other {rest}: their tables under Checkpoints, and checkpoints.csv, curves.csv."
    )


def _lines(runs: Runs, y: str, data: pd.DataFrame) -> tuple[plt.Figure, plt.Axes]:
    """One line per distinct curve against the epoch, the legend at the right. Experiments with
    identical curves (the same schedule: common in a ladder) share a line and a legend entry
    that names them all: drawn one over the other, all but the last would be hidden."""
    groups: dict[tuple, list[str]] = {}
    data = data[data["experiment"].isin(runs.names)]  # seed replicates: their own figures
    for name, part in data.groupby("experiment", sort=False):
        key = tuple(part[["epoch", y]].itertuples(index=False, name=None))
        groups.setdefault(key, []).append(name)
    order = {name: i for i, name in enumerate(runs.names)}
    shared = sorted(groups.values(), key=lambda names: order[names[0]])
    n = len(shared)
    parts = dict(tuple(data.groupby("experiment", sort=False)))
    if n > LEGEND_LINES:
        return _lines_by_rung(runs, y, [parts[names[0]] for names in shared], shared)
    labels = [_shared_label(names) for names in shared]
    fig, ax = plt.subplots(figsize=(7.5 + (1.6 if n > 14 else 0), 3.8))
    few = data["epoch"].max() <= 40  # markers on longer runs only blur the lines
    colors = _palette(labels)
    for names, label in zip(shared, labels, strict=True):
        part = parts[names[0]]
        ax.plot(
            part["epoch"], part[y], color=colors[label], label=label, lw=1.5,
            marker="o" if few or len(part) < 3 else None, markersize=4,
        )  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), ncol=1 if n <= 14 else 2)
    return fig, ax


def _lines_by_rung(
    runs: Runs, y: str, parts: list[pd.DataFrame], shared: list[list[str]]
) -> tuple[plt.Figure, plt.Axes]:
    """More distinct curves than a legend can name: thin lines coloured by the rung of the
    first experiment drawing each (a colour bar for the rung), the figure's size fixed."""
    rung = {name: i for i, name in enumerate(runs.names, 1)}
    norm = Normalize(1, max(len(runs.names), 2))
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(9.1, 3.8))
    for names, part in zip(shared, parts, strict=True):
        ax.plot(part["epoch"], part[y], color=cmap(norm(rung[names[0]])), lw=0.7, alpha=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch")
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.02)
    bar.set_label(f"rung (#, ladder order): {len(shared)} distinct curves")
    return fig, ax


def _shared_label(names: list[str], width: int = 44, lines: int = 3) -> str:
    """A legend entry for the experiments sharing a curve: their names, wrapped in at most
    `lines` lines, those that do not fit counted."""
    if len(names) == 1:
        return names[0]
    count = f" ({len(names)} experiments)"
    shown = len(names)
    while shown > 1:
        rest = f" and {len(names) - shown} more" if shown < len(names) else ""
        wrapped = textwrap.wrap(", ".join(names[:shown]) + rest + count, width)
        if len(wrapped) <= lines:
            return "\n".join(wrapped)
        shown -= 1
    return "\n".join(textwrap.wrap(f"{names[0]} and {len(names) - 1} more{count}", width))


# ----------------------------------------------------------------------------------------------
# The figures


def ladder_chart(ladder: pd.DataFrame) -> tuple[plt.Figure, str]:
    n = len(ladder)
    series = {
        "ours: test, no TTA": (ladder["test_acc"], TEST_COLOR, "-", "o"),
        "ours: test, TTA vote": (ladder["test_acc_tta"], TTA_COLOR, ":", "s"),
        "ours: val": (ladder["val_acc"], VAL_COLOR, "-", "s"),
        "seed: test": (ladder["ref_test"], TEST_COLOR, "--", "D"),
        "seed: val": (ladder["ref_val"], VAL_COLOR, "--", "^"),
    }
    named = n <= LADDER_NAMES  # beyond: rung numbers, the figure's width fixed
    fig, ax = plt.subplots(figsize=(max(6.5, 0.42 * n + 3.5) if named else 12.0, 4.2))
    x = np.arange(1, n + 1)
    for label, (values, color, style, marker) in series.items():
        values = values.to_numpy(dtype=float)
        if np.isnan(values).all():
            continue
        hollow = style == "--"  # the seed's numbers
        ax.plot(
            x,
            values,
            linestyle=style,
            marker=marker,
            color=color,
            label=label,
            markersize=6 if named else 2,
            markerfacecolor="white" if hollow else color,
            alpha=0.9 if hollow else 1.0,
        )
    test = ladder["test_acc"].to_numpy(dtype=float)
    spread = [
        test - ladder["test_acc_low"].to_numpy(dtype=float),
        ladder["test_acc_high"].to_numpy(dtype=float) - test,
    ]
    ax.errorbar(
        x, test, yerr=spread, fmt="none", ecolor=TEST_COLOR, elinewidth=1 if named else 0.5,
        capsize=3 if named else 0,
    )  # fmt: skip
    if named:
        ax.set_xticks(x, [f"{i}. {name}" for i, name in zip(x, ladder["experiment"], strict=True)])
        plt.setp(
            ax.get_xticklabels(), rotation=40 if n > 3 else 0, ha="right" if n > 3 else "center"
        )
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xlabel = None if named else f"rung (# in the ladder table; {n} rungs, too many to name)"
    ax.set(xlabel=xlabel, ylabel="accuracy (%)", xlim=(0.5, n + 0.5), ylim=_zoom(ladder, series))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    caption = (
        "The ladder, accuracy in %: our test accuracy without TTA at each rung's val-picked "
        "checkpoint (the result; bars: its 95% Wilson interval), the TTA vote at the same "
        "checkpoint where the rung uses TTA (dotted), and val accuracy, beside the numbers the "
        "seed reported (hollow markers). A rung with seed replicates shows their mean. The "
        "axis is zoomed to the numbers and their intervals: it need not start at 0."
    )
    return fig, caption


def _zoom(ladder: pd.DataFrame, series: dict) -> tuple[float, float]:
    """Accuracy limits around every number drawn and the intervals, with a margin, in [0, 100]:
    on a 0-100 axis the differences between rungs, a few points, would be flat."""
    drawn = [v.to_numpy(dtype=float) for v, *_ in series.values()]
    drawn += [ladder[c].to_numpy(dtype=float) for c in ("test_acc_low", "test_acc_high")]
    low, high = np.nanmin(np.concatenate(drawn)), np.nanmax(np.concatenate(drawn))
    margin = max(2.0, 0.08 * (high - low))
    return max(0.0, low - margin), min(100.0, high + margin)


def accuracy_vs_step(runs: Runs, train_images: int) -> tuple[plt.Figure, str]:
    # Training drops the last partial batch: an epoch is train_images // batch_size steps.
    steps_per_epoch = {n: train_images // runs.settings[n]["batch_size"] for n in runs.names}
    history = runs.history
    val = history.assign(step=history["epoch"] * history["experiment"].map(steps_per_epoch))
    train_label, val_label = "train (per logged window)", "val (end of epoch)"
    styles = {
        train_label: {"color": TRAIN_COLOR, "lw": 1.0},
        val_label: {"color": VAL_COLOR, "lw": 1.2, "marker": "o", "ms": 3},
    }
    data = pd.concat(
        [runs.steps.assign(series=train_label), val.assign(acc=val["val_acc"], series=val_label)],
        ignore_index=True,
    )[["experiment", "step", "acc", "series"]]

    def panel(data: pd.DataFrame, ax: plt.Axes) -> None:
        for label, style in styles.items():
            part = data[data["series"] == label]
            # one or two points: markers, or a lone point would draw nothing
            ax.plot(
                part["step"],
                part["acc"],
                **(style | ({"marker": "o", "ms": 3} if len(part) < 3 else {})),
            )
        name = data["experiment"].iloc[0]
        if (data["series"] == train_label).sum() == 0:
            ax.text(
                0.5, 0.06, _no_train_window(runs.settings[name], steps_per_epoch[name]),
                transform=ax.transAxes, ha="center", va="bottom", fontsize=7, color="0.35",
            )  # fmt: skip

    fig = _faceted(data, panel_names(runs), panel, "optimiser step", styles)
    caption = (
        "Accuracy (%) against the optimiser step: train accuracy over each logged window of "
        "batches (augmented, as trained) and val accuracy at the end of every epoch. A panel "
        "without a train line says why: its log_every is more steps than the run took."
    ) + _panels_note(runs)
    return fig, caption


def _no_train_window(settings: dict, steps_per_epoch: int) -> str:
    total = settings["epochs"] * steps_per_epoch
    return f"no train window logged:\nlog_every {settings['log_every']} > {total} steps in all"


def checkpoint_accuracy(runs: Runs) -> tuple[plt.Figure, str]:
    styles = {
        "test": {"color": TEST_COLOR, "marker": "o", "ms": 4, "lw": 1.4},
        "test, TTA vote": {"color": TTA_COLOR, "marker": "s", "ms": 4, "lw": 1.4},
        "val": {"color": VAL_COLOR, "lw": 1.0, "ls": "--"},
    }
    columns = {"test": "test_acc", "test, TTA vote": "test_acc_tta", "val": "val_acc"}
    best = picked_on_val(runs)["epoch"]

    def panel(data: pd.DataFrame, ax: plt.Axes) -> None:
        dense = len(data) > 25  # markers would merge into a band
        for label, style in styles.items():
            ax.plot(data["epoch"], data[columns[label]], **(style | ({"ms": 1.5} if dense else {})))
        ax.axvline(best[data["experiment"].iloc[0]], color="0.45", lw=1, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    fig = _faceted(runs.checkpoints, panel_names(runs), panel, "epoch (checkpoint)", styles)
    caption = (
        "Test accuracy (%) of every checkpoint, without and with test-time augmentation (majority "
        "vote), and val accuracy; the dotted line marks the checkpoint picked by val accuracy."
    ) + _panels_note(runs)
    return fig, caption


def gap(runs: Runs) -> tuple[plt.Figure, str]:
    data = runs.history.assign(gap=runs.history["train_acc"] - runs.history["val_acc"])
    fig, ax = _lines(runs, "gap", data)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(ylabel="train − val accuracy (percentage points)")
    caption = (
        "Generalisation gap: train minus val accuracy per epoch, in percentage points (train "
        "accuracy is measured on augmented batches, so strong augmentation can push it below "
        "zero). Experiments with identical curves share one line."
    )
    return fig, caption


def learning_rate(runs: Runs) -> tuple[plt.Figure, str]:
    lr = runs.history["lr"]
    fig, ax = _lines(runs, "lr", runs.history)
    if (lr > 0).all() and lr.max() >= 10 * lr.min():  # rates a decade apart: a log scale
        ax.set_yscale("log")
        # Plain numbers: the default labels are mathtext, which THEME turns off for names.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(ylabel="learning rate")
    caption = (
        "Learning rate at the start of each epoch. Experiments with the same schedule share one "
        "line, named together in the legend."
    )
    return fig, caption


def worst_classes(
    runs: Runs, ladder: pd.DataFrame, classes: dict[int, str]
) -> tuple[plt.Figure, str]:
    """Per-class test accuracy (no TTA, as the headline) of the best experiment's checkpoint.

    The values sit in a column of their own right of the axes, one per bar's row, so they never
    meet the bars, the all-classes line or each other, however close the values are."""
    best = best_experiment(ladder)
    name, epoch = best["experiment"], best["best_epoch"]
    rows = runs.per_class[
        (runs.per_class["experiment"] == name) & (runs.per_class["epoch"] == epoch)
    ]
    worst = rows.dropna(subset=["test_acc"]).sort_values(["test_acc", "index"]).head(WORST_CLASSES)
    labels = [
        f"{classes.get(i, i)} (n={n})" for i, n in zip(worst["index"], worst["count"], strict=True)
    ]

    fig, ax = plt.subplots(figsize=(7, 0.26 * len(worst) + 1.3))
    y = np.arange(len(worst))
    ax.barh(y, worst["test_acc"], color=TEST_COLOR, height=0.7)
    ax.set_yticks(y, labels)
    _check_labels(fig, ax.get_yticklabels(), worst["index"], classes)
    ax.set(xlabel="test accuracy (%), no TTA", xlim=(0, 100), ylim=(max(len(worst), 1) - 0.5, -0.5))
    ax.grid(axis="y", visible=False)
    values = blended_transform_factory(ax.transAxes, ax.transData)  # x: axes, y: bar rows
    ax.text(1.02, -0.5, "%", transform=values, ha="left", va="bottom", color="0.3")
    for row, value in zip(y, worst["test_acc"], strict=True):
        ax.text(1.02, row, f"{value:.1f}", transform=values, ha="left", va="center")
    overall = float(best["test_acc"])
    ax.axvline(overall, color="0.3", lw=1, ls="--", label=f"all classes: {overall:.1f} %")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0))
    caption = (
        f"The {len(worst)} classes with the lowest test accuracy (%, no TTA) for {name} (the best "
        f"experiment) at epoch {epoch}, its val-picked checkpoint; the values stand right of the "
        "axes; n: test images of the class."
    )
    return fig, caption


def _check_labels(
    fig: plt.Figure, labels: list, indices: pd.Series, classes: dict[int, str]
) -> None:
    """Lay out each class's label now, so that a name the fonts cannot draw (a lone surrogate
    from an undecodable folder name) fails naming its class, not somewhere inside savefig."""
    renderer = fig.canvas.get_renderer()
    for label, index in zip(labels, indices, strict=True):
        try:
            label.get_window_extent(renderer)
        except (ValueError, RuntimeError, TypeError) as e:  # TypeError: ft2font's, for the text
            plt.close(fig)
            name = classes.get(index, index)
            raise ValueError(f"cannot draw class {index} ({name!r}): {e}") from e


def augment_rows(runs: Runs) -> list[list[str]]:
    """The ladder rows (their experiments) grouped by their augmentation settings, in ladder
    order: one row of the figure per distinct setting."""
    groups: dict[str, list[str]] = {}
    for name in runs.sets:  # a seed replicate augments as its experiment does
        key = json.dumps(runs.settings[name]["augment"], sort_keys=True)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _is_identity(settings: dict) -> bool:
    return not any(op.probability(settings) > 0 for op in augment_registry.OPS)


def augmentations(runs: Runs, images: np.ndarray) -> tuple[plt.Figure, str]:
    picks = np.linspace(0, len(images) - 1, min(AUGMENT_SAMPLES, len(images))).round().astype(int)
    batch = np.ascontiguousarray(images[np.unique(picks)])  # uint8 NHWC
    groups = augment_rows(runs)
    drawn = groups[:AUGMENT_ROWS]
    settings = [runs.settings[names[0]]["augment"] for names in drawn]
    rows = _augmented(batch, settings)
    labels = ["original"]
    for names, setting in zip(drawn, settings, strict=True):
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        labels.append(names[0] + more + (" (none)" if _is_identity(setting) else ""))
    mosaic = _mosaic(np.concatenate([batch[None].astype(np.float32) / 255, rows]))

    size = batch.shape[1]
    scale = max(1, round(AUGMENT_TILE / size))
    height, width = (s * scale / DPI for s in mosaic.shape[:2])
    fig = plt.figure(figsize=(width + 2.2, height))
    ax = fig.add_axes((2.2 / (width + 2.2), 0, width / (width + 2.2), 1))
    ax.imshow(mosaic, interpolation="nearest")
    tile = size + GAP
    ax.set_yticks([tile * i + size / 2 for i in range(len(labels))], labels)
    ax.set_xticks([])
    ax.grid(visible=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    caption = (
        "The same training images through each experiment's own training augmentation, all rows "
        f"with the same random seed ({AUGMENT_SEED}): what each setting does to the pictures. "
        "Experiments with the same augmentation settings share a row, named by the first."
    )
    if len(groups) > len(drawn):
        caption += (
            f" The first {len(drawn)} of {len(groups)} distinct settings, in ladder order; the "
            "ladder table's changes column lists the others'."
        )
    return fig, caption


# Run in a child process: the training ops are torch's, and the report does not import torch.
# stdin: the images (uint8 NHWC, .npy); argv: the settings (JSON list) and the seed; stdout: one
# row per setting (float32 rows x N x H x W x C in [0, 1], .npy), each from a generator seeded
# alike, as training draws them.
_AUGMENT_CHILD = """
import io, json, sys
import numpy as np
import torch
from ladder.augment import Augment
images = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False)
settings, seed = json.loads(sys.argv[1]), int(sys.argv[2])
batch = torch.from_numpy(images).permute(0, 3, 1, 2)
rows = [Augment(s)(batch, torch.Generator().manual_seed(seed)) for s in settings]
out = io.BytesIO()
np.save(out, torch.stack(rows).permute(0, 1, 3, 4, 2).numpy(), allow_pickle=False)
sys.stdout.buffer.write(out.getvalue())
"""


def _augmented(batch: np.ndarray, settings: list[dict]) -> np.ndarray:
    """`batch` (uint8 NHWC) through each of `settings`' augmentations: float32 (settings, N, H,
    W, C) in [0, 1]. Settings with every op off need no torch: the images as floats."""
    plain = batch.astype(np.float32) / np.float32(255)
    rows = np.repeat(plain[None], len(settings), axis=0)
    todo = [i for i, s in enumerate(settings) if not _is_identity(s)]
    if not todo:
        return rows
    package = str(Path(ladder.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, (package, os.environ.get("PYTHONPATH"))))
    buf = stdio.BytesIO()
    np.save(buf, batch, allow_pickle=False)
    done = subprocess.run(
        [
            sys.executable, "-c", _AUGMENT_CHILD,
            json.dumps([settings[i] for i in todo]), str(AUGMENT_SEED),
        ],
        input=buf.getvalue(),
        capture_output=True,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )  # fmt: skip
    if done.returncode:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"the augmentations failed: {' '.join(tail) or done.returncode}")
    rows[todo] = np.load(stdio.BytesIO(done.stdout), allow_pickle=False)
    return rows


def _mosaic(tiles: np.ndarray) -> np.ndarray:
    """(rows, cols, H, W, C) floats in [0, 1] -> one white-separated image."""
    rows, cols, h, w, c = tiles.shape
    out = np.ones((rows * (h + GAP) - GAP, cols * (w + GAP) - GAP, c), dtype=np.float32)
    for r in range(rows):
        for k in range(cols):
            out[r * (h + GAP) : r * (h + GAP) + h, k * (w + GAP) : k * (w + GAP) + w] = tiles[r, k]
    return out.clip(0, 1)
