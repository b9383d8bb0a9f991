"""The report's pages: index.html (one self-contained file: CSS inline, figures as data: URIs, no
script), a page per experiment with its checkpoints table (checkpoints/<experiment>.html, linked
from index.html: at 1,000 experiments, 44,000 rows that one page would hold) and report.md (the
same tables in Markdown, figures linked from figures/).

The page's markup and CSS live in templates/ (Jinja2, autoescaped: every value is escaped unless
it is markup the template writes itself); this module prepares what they show: the headline,
the tables as rows of cells, the figures. Both pages render the same column lists (LADDER,
CHECKPOINTS), so the two can never disagree. report.md is short and made of tables, so it stays
in Python (`markdown`): one template environment. Text from users and datasets reaches it
through one escape, `markdown_text`, as it reaches the page through Jinja2's.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import pandas as pd

from ladder import config
from ladder.report import significance
from ladder.report.figures import PANEL_FIGURES, panel_names
from ladder.report.tables import (
    LADDER_COLUMNS,
    Runs,
    best_experiment,
    map_text,
    picked_on_val,
    seed_best,
    versus_runner_up,
)

TITLE = "Experiment ladder"
TEMPLATE = "index.html.j2"
RUN_TEMPLATE = "checkpoints.html.j2"
PAGES = "checkpoints"  # the folder of the experiments' pages, beside index.html


# ----------------------------------------------------------------------------------------------
# Cells


class Cell(NamedTuple):
    """One HTML table cell: its text (in bold for `strong`), then lines of their own below it,
    each (text, CSS class): a description, a note, one change per line. A tuple: the pages make
    ten per checkpoint, 440,000 at 1,000 experiments, and a frozen dataclass takes three times
    as long to make."""

    css: str
    text: str = ""
    strong: bool = False
    lines: tuple[tuple[str, str], ...] = ()


def _missing(value) -> bool:
    """pd.isna of one value (None, NaN, pd.NA), without its dispatch: the page formats a few
    numbers per checkpoint, hundreds of thousands at 1,000 experiments."""
    return value is None or value is pd.NA or value != value


def _num(value, digits: int = 2) -> str:
    return "" if _missing(value) else f"{value:.{digits}f}"


def _int(value) -> str:
    return "" if _missing(value) else str(int(value))


def _signed(value) -> str:
    return "" if _missing(value) else f"{value:+.2f}"


def interval(low, high, signed: bool = False) -> str:
    """`[45.24, 64.39]`, or `[-6.00, +8.00]` for a difference; empty for a missing one."""
    if _missing(low) or _missing(high):
        return ""
    fmt = _signed if signed else _num
    return f"[{fmt(low)}, {fmt(high)}]"


def p_value(p) -> str:
    return "" if _missing(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


# A table row as the columns read it: column name -> value (`_records`).
Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[Row], str]  # the cell as plain text (Markdown, and HTML by default)
    group: str = ""  # a header spanning the columns that share it
    kind: str = "num"  # the HTML cells' class: "num" right-aligns figures
    html: Callable[[Row], Cell] | None = None  # a richer HTML cell (CSS: the column's)
    css: Callable[[Row], str] = lambda row: ""  # a further class, by value
    unit: str = ""  # Markdown adds it to the header (HTML says it in the group header)

    @property
    def numeric(self) -> bool:
        return self.kind == "num"

    def cell(self, row: Row) -> Cell:
        extra = self.css(row)
        css = f"{self.kind} {extra}" if extra and self.kind else self.kind or extra
        if self.html is None:
            return Cell(css, self.text(row))
        _, text, strong, lines = self.html(row)
        return Cell(css, text, strong, lines)


def _pct(column: str, group: str, header: str) -> Column:
    return Column(header, lambda row: _num(row[column]), group, unit="%")


def _figure(
    header: str,
    group: str,
    value: Callable[[Row], str],
    notes: Callable[[Row], list[tuple[str, str]]],
    unit: str = "%",
    strong: bool = False,
    css: Callable[[Row], str] = lambda row: "",
) -> Column:
    """A number with small lines under it in HTML, each (text, CSS class); in Markdown the lines
    follow the number on one line, in the same order."""

    def text(row: Row) -> str:
        main = value(row)
        return " ".join([main, *(n for n, _ in notes(row) if n)]) if main else ""

    def html(row: Row) -> Cell:
        main = value(row)
        lines = tuple((n, f"small {c}".strip()) for n, c in notes(row) if n) if main else ()
        return Cell("", main, strong=strong and bool(main), lines=lines)

    return Column(header, text, group, html=html, css=css, unit=unit)


def _accuracy(column: str, group: str, header: str, strong: bool = False) -> Column:
    """An accuracy with its 95% interval under it; the sd over seed replicates where a row has
    several (test accuracy only)."""

    def notes(row: Row) -> list[tuple[str, str]]:
        lines = [(interval(row[f"{column}_low"], row[f"{column}_high"]), "")]
        spread = f"{column}_sd"
        if spread in row and not _missing(row[spread]):
            lines.append((f"sd {row[spread]:.2f}, {int(row['replicates'])} seeds", ""))
        return lines

    return _figure(header, group, lambda row: _num(row[column]), notes, strong=strong)


def _experiment_text(row: Row) -> str:
    note = f" (seed: {row['note']})" if row.get("note") else ""
    seeds = f" [{row['seeds']}]" if row.get("seeds") else ""
    return " — ".join(filter(None, (row["experiment"], row["description"]))) + note + seeds


def _experiment_html(row: Row) -> Cell:
    lines = [(row["description"], "desc")] if row["description"] else []
    if row.get("note"):
        lines.append((f"seed: {row['note']}", "desc note"))
    if row.get("seeds"):
        lines.append((row["seeds"], "desc replicates"))
    return Cell("", row["experiment"], strong=True, lines=tuple(lines))


def _changes_html(row: Row) -> Cell:
    return Cell("", lines=tuple((change, "") for change in row["changes"].split("; ")))


def _noted(header: str, group: str, value: Callable, note: Callable, css: str = "") -> Column:
    """A number with a small note under it in HTML (in brackets after it in Markdown)."""

    def parts(row: Row) -> tuple[str, str]:
        text = value(row)
        return text, note(row) if text else ""

    def text(row: Row) -> str:
        main, extra = parts(row)
        return f"{main} ({extra})" if extra else main

    def html(row: Row) -> Cell:
        main, extra = parts(row)
        return Cell("", main, lines=((extra, "small"),) if extra else ())

    return Column(header, text, group, html=html, css=lambda row: css, unit="%")


def _epoch_note(column: str) -> Callable[[Row], str]:
    return lambda row: "" if _missing(row[column]) else f"epoch {int(row[column])}"


def _delta(column: str, header: str, low: str, high: str, p: str, noise: str) -> Column:
    """A change versus the parent in percentage points with its 95% interval and p-value: green
    when up and red when down if it is beyond noise, grey and marked "within noise" if not."""

    def within(row: Row) -> bool:
        return not _missing(row[noise]) and bool(row[noise])

    def css(row: Row) -> str:
        value = row[column]
        if _missing(value):
            return ""
        if within(row):
            return "noise"
        return "" if value == 0 else ("pos" if value > 0 else "neg")

    def notes(row: Row) -> list[tuple[str, str]]:
        mark = f"{p_value(row[p])}, {NOISE_MARK}" if within(row) else p_value(row[p])
        return [(interval(row[low], row[high], signed=True), ""), (mark, "")]

    return _figure(header, OURS, lambda row: _signed(row[column]), notes, unit="", css=css)


OURS, SEED, PICKED_GROUP = (
    "ours: val-picked checkpoint (%)",
    "seed, as reported (%)",
    "test-picked: optimistic (%)",
)
ACCURACY, LOSS = "accuracy (%)", "loss"
# Markdown has one header row: the group becomes a prefix where it is needed to tell columns apart.
MD_PREFIX = {OURS: "", SEED: "seed ", PICKED_GROUP: "test-picked ", ACCURACY: "", LOSS: "loss "}
# The Δ columns: one basis each, the same on every row, named in the header (and in READING).
DELTA_TEST, DELTA_TTA = "Δ test vs parent (no TTA, pp)", "Δ TTA vote vs parent (pp)"
NOISE_MARK = "within noise"  # after the p-value of a change that is not shown to be real
PICKED_GAP = "gain from picking on test (pp)"


def _seed_figure() -> Column:
    """The seed's reported numbers in one column: its test number (with TTA where the seed used
    it), then its plain test, train and val numbers under it."""

    def value(row: Row) -> str:
        given = any(not _missing(row[c]) for c in ("ref_train", "ref_val"))
        return _num(row["ref_test"]) or ("–" if given else "")

    def notes(row: Row) -> list[tuple[str, str]]:
        plain = "" if _missing(row["ref_test_plain"]) else f"{row['ref_test_plain']:.2f} no TTA"
        splits = [
            (f"{k} {row[f'ref_{k}']:.2f}", "")
            for k in ("train", "val")
            if not _missing(row[f"ref_{k}"])
        ]
        return [(plain, ""), *splits]

    return _figure("test", SEED, value, notes)


def _epoch_figure() -> Column:
    """The val-picked epoch, of how many; where early stopping ended the run."""

    def notes(row: Row) -> list[tuple[str, str]]:
        stopped = row["stopped_early"]
        if _missing(stopped):
            return [(f"of {_int(row['epochs'])}", "")]
        return [(f"of {_int(row['epochs'])}", ""), (f"stopped at {_int(stopped)}", "")]

    return _figure("epoch", OURS, lambda row: _int(row["best_epoch"]), notes, unit="")


# The ladder table: 11 columns, so that it fits a 1280 px window; the test-picked numbers, which
# are never quoted, in a table of their own below it (PICKED).
LADDER = [
    Column("#", lambda row: _int(row["rung"]), kind="num rung"),
    Column("experiment", _experiment_text, kind="name", html=_experiment_html),
    Column("changes vs parent", lambda row: row["changes"], kind="changes", html=_changes_html),
    _epoch_figure(),
    _pct("train_acc", OURS, "train"),
    _accuracy("val_acc", OURS, "val"),
    _accuracy("test_acc", OURS, "test, no TTA", strong=True),
    _accuracy("test_acc_tta", OURS, "test, TTA vote"),
    _delta(
        "delta_test_vs_parent", DELTA_TEST, "delta_low", "delta_high", "p_vs_parent",
        "within_noise",
    ),
    _delta(
        "delta_tta_vs_parent", DELTA_TTA, "delta_tta_low", "delta_tta_high", "p_tta_vs_parent",
        "tta_within_noise",
    ),
    _seed_figure(),
]  # fmt: skip
PICKED = [
    LADDER[0],
    Column("experiment", lambda row: row["experiment"], kind="name"),
    _noted(
        "ours, no TTA",
        PICKED_GROUP,
        lambda row: _num(row["test_picked_test"]),
        _epoch_note("test_picked_epoch"),
        css="optimistic",
    ),
    _figure(
        PICKED_GAP,
        PICKED_GROUP,
        lambda row: _signed(row["picked_gap"]),
        lambda row: [(interval(row["picked_gap_low"], row["picked_gap_high"], signed=True), "")],
        unit="",
        css=lambda row: "optimistic",
    ),
    _noted(
        "seed",
        PICKED_GROUP,
        lambda row: _num(row["ref_test_picked_test"]),
        _epoch_note("ref_test_picked_epoch"),
        css="optimistic",
    ),
]


def _picked_text(row: Row) -> str:
    return ", ".join(k for k in ("val", "test") if row[f"{k}_picked"])


CHECKPOINTS = [
    Column("epoch", lambda row: _int(row["epoch"])),
    _pct("train_acc", ACCURACY, "train"),
    _accuracy("val_acc", ACCURACY, "val"),
    _accuracy("test_acc", ACCURACY, "test, no TTA"),
    _accuracy("test_acc_tta", ACCURACY, "TTA vote"),
    _accuracy("test_acc_tta_mean", ACCURACY, "TTA mean"),
    Column("train", lambda row: _num(row["train_loss"], 4), LOSS),
    Column("val", lambda row: _num(row["val_loss"], 4), LOSS),
    Column("test", lambda row: _num(row["test_loss"], 4), LOSS),
    Column("picked by", _picked_text, kind="text"),
]


# ----------------------------------------------------------------------------------------------
# Shared content


@dataclass(frozen=True)
class Headline:
    """The best experiment by the headline rule (tables.best_row) and its numbers."""

    experiment: str
    rung: int
    epoch: int
    test: float  # plain test accuracy at the val-picked checkpoint: the result
    test_interval: tuple[float, float]  # its 95% Wilson interval
    replicates: int  # runs the row stands for (1, or a set of seed replicates)
    test_sd: float  # sd of the test accuracy over the replicates (NaN for one run)
    val: float  # val accuracy there: what picked the checkpoint and the experiment
    tta: float | None  # the TTA vote at the same checkpoint, shown beside, never instead
    tta_kind: str  # "TTA vote over 10 passes", "flip TTA", or "" without TTA
    seed: dict | None  # tables.seed_best
    higher_test: tuple[str, int, float] | None  # another rung's higher test (name, rung, %)
    # The runner-up by the same val rule: (name, rung, test %), and the best versus it.
    runner_up: tuple[str, int, float] | None
    versus_runner_up: significance.Comparison | None
    # Picking the checkpoint on test instead: (test %, epoch, gain, gain's low, gain's high).
    picked: tuple[float, int, float, float, float]

    @property
    def versus_seed(self) -> float:
        return self.test - self.seed["test"]

    @property
    def distinguishable(self) -> bool | None:
        """Whether the test set tells the best from the runner-up; None without a runner-up."""
        return None if self.versus_runner_up is None else not self.versus_runner_up.within_noise


def headline(runs: Runs, ladder: pd.DataFrame) -> Headline:
    best = best_experiment(ladder)
    name, epoch = best["experiment"], int(best["best_epoch"])
    checkpoint = runs.checkpoints.set_index(["experiment", "epoch"]).loc[(name, epoch)]
    tta = None if math.isnan(best["test_acc_tta"]) else float(best["test_acc_tta"])
    if tta is None:
        kind = ""
    elif runs.settings[name]["tta"]["augment"] == "flip":
        kind = "flip TTA"
    else:
        kind = f"TTA vote over {int(checkpoint['tta_passes'])} passes"
    top = ladder.loc[ladder["test_acc"].astype(float).idxmax()]
    higher = (
        (top["experiment"], int(top["rung"]), float(top["test_acc"]))
        if top["test_acc"] > best["test_acc"]
        else None
    )
    second, versus = versus_runner_up(runs, ladder) or (None, None)
    return Headline(
        experiment=name,
        rung=int(best["rung"]),
        epoch=epoch,
        test=float(best["test_acc"]),
        test_interval=(float(best["test_acc_low"]), float(best["test_acc_high"])),
        replicates=int(best["replicates"]),
        test_sd=float(best["test_acc_sd"]),
        val=float(best["val_acc"]),
        tta=tta,
        tta_kind=kind,
        seed=seed_best(ladder),
        higher_test=higher,
        runner_up=None
        if second is None
        else (second["experiment"], int(second["rung"]), float(second["test_acc"])),
        versus_runner_up=versus,
        picked=(
            float(best["test_picked_test"]),
            int(best["test_picked_epoch"]),
            *(float(best[c]) for c in ("picked_gap", "picked_gap_low", "picked_gap_high")),
        ),
    )


def _summary(runs: Runs) -> str:
    first = runs.run[runs.names[0]]
    counts = runs.checkpoints.iloc[0]
    size = first["image_size"]
    n, replicates = len(runs.sets), len(runs.names) - len(runs.sets)
    folded = f" (+ {replicates} seed replicate{'s' * (replicates != 1)})" if replicates else ""
    return (
        f"{n} experiment{'s' * (n != 1)}{folded} · {first['num_classes']} classes · "
        f"{size}×{size} images · val {int(counts['val_images']):,} / test "
        f"{int(counts['test_images']):,} images"
    )


def _seeds(runs: Runs, name: str) -> str:
    """The line under a row's name that lists its seed replicates; empty without."""
    replicates = runs.sets[name][1:]
    listed = ", ".join(f"{m} (seed {runs.settings[m]['seed']})" for m in replicates)
    return f"seed replicates: {listed}" if replicates else ""


def _ladder_rows(runs: Runs, ladder: pd.DataFrame) -> pd.DataFrame:
    return ladder.assign(
        note=[runs.meta[n]["note"] for n in ladder["experiment"]],
        seeds=[_seeds(runs, n) for n in ladder["experiment"]],
    )


# Above the ladder table, in short; RULE and NOISE say it in full.
LADDER_NOTE = (
    "Picked on val, reported on test: each experiment at its checkpoint with the best val "
    "accuracy, its result the test accuracy without TTA (in bold); the TTA vote in its own "
    "columns. Each Δ has one basis on every row, named in its header. Under every accuracy, its "
    "95% interval (Wilson, from the per-image counts); under every Δ, its 95% interval and "
    "p-value against the parent, in grey and marked “within noise” when the change is not shown "
    "to be real. The seed's column has its reported test number, its train and val numbers "
    "under it."
)
PICKED_NOTE = (
    "Optimistic, greyed: each experiment at its checkpoint with the best test accuracy (no TTA), "
    "the gain that picking on the test set gives over the val-picked one, and the seed's number "
    "where it picked that way. Compare with them, never quote them."
)
RULE = (
    "every choice is made on val, every result is reported on test. Each experiment's checkpoint "
    "is the one with the highest val accuracy (ties: the earliest epoch); the best experiment is "
    "the one whose checkpoint has the highest val accuracy (ties: the earlier rung). Its result, "
    "and every experiment's, is the test accuracy of that checkpoint without TTA: the same basis "
    "for every experiment. Evaluation runs TTA on the test set only, so choosing between the "
    "plain and the TTA number by their test accuracy would select on the test set: the TTA vote "
    "is shown in its own column and never replaces the plain number."
)
INTERVALS_TEXT = (
    "every accuracy counted on val or test images is shown with its 95% Wilson score interval "
    "(without continuity correction), computed from the per-image predictions that evaluation "
    "keeps (eval/epoch_NNN.npz): the accuracies that many images cannot tell apart. It covers "
    "the sampling of images only, not the seed: a second training run can land outside it. "
    "Train accuracy (a running mean over augmented batches) and the seed's numbers have none."
)
NOISE = (
    "a rung's change versus its parent, on the same test images, each side at its val-picked "
    "checkpoint. With one run on each side: McNemar's exact test on the images the two runs "
    "disagree on, and a 95% paired-bootstrap interval of the difference (2,000 resamples of the "
    "test images). With seed replicates on both sides: Welch's t-test and t interval on the "
    "per-replicate accuracies (Student's, the variance pooled, when only one side has "
    "replicates): the spread between seeds, which one run per side cannot show. A change is "
    f"“{NOISE_MARK}” (grey) when p ≥ 0.05 or its interval contains 0; only the others are "
    "coloured."
)
REPLICATES_TEXT = (
    "an experiment declared `replicate_of: X` in params.yaml trains X again with another seed. "
    "X's row stands for the whole set: every accuracy and Δ is the mean over its runs (each at "
    "its own val-picked checkpoint), the test accuracy shows the sd over the seeds, and the "
    "comparisons use every run of both sides. The replicates are listed under X's name; their "
    "checkpoints are under Checkpoints."
)
PICKED_TEXT = (
    "the checkpoint with the highest test accuracy (no TTA), and how many percentage points "
    "picking it gains over the val-picked one, with a 95% interval from a bootstrap over the "
    "test images that picks again on every resample: selected on the test set, so optimistic. "
    "Shown only to compare with numbers picked that way (the seed's rung 26) and to show how "
    "much that flatters; the val-picked test accuracy is the result."
)
READING = [
    ("headline rule", RULE),
    ("runner-up", "the experiment with the next highest val accuracy, by the same rule."),
    (
        "val-picked",
        "each experiment's checkpoint with the highest val accuracy (ties: the earliest).",
    ),
    ("test, no TTA", "one pass over the test set: the experiment's result."),
    ("95% interval", INTERVALS_TEXT),
    (
        "test, TTA vote",
        "test-time augmentation: the test set passed several times through the training "
        "augmentations (or mirrored), the majority vote wins; at the same checkpoint.",
    ),
    (
        DELTA_TEST,
        "this rung's test accuracy without TTA minus its parent's (the rung it builds on), both "
        "at their val-picked checkpoints, in percentage points: the same basis on every row, "
        "with or without TTA on either side (ladder.csv: delta_test_vs_parent).",
    ),
    (
        DELTA_TTA,
        "the TTA vote minus the parent's TTA vote, only where both rungs use TTA "
        "(ladder.csv: delta_tta_vs_parent).",
    ),
    (NOISE_MARK, NOISE),
    ("seed replicates", REPLICATES_TEXT),
    ("test-picked", PICKED_TEXT),
    (
        "seed",
        "the numbers in the seed's log, as reported: its test number includes TTA where the "
        "seed used it.",
    ),
    ("train", "running accuracy over the epoch's augmented training batches."),
]
METHODS = {
    "mcnemar": "McNemar's exact test",
    "welch": "Welch's t-test over the seeds",
    "student": "Student's t-test over the seeds",
}


def _lead(top: Headline) -> list[tuple[str, bool]]:
    """The headline as sentences: (text, bold) pieces, for HTML and Markdown alike."""
    low, high = top.test_interval
    if top.replicates > 1:
        val = f"{top.val:.2f} %, the mean of its {top.replicates} seed replicates"
        spread = f"the mean of {top.replicates} seeds, sd {top.test_sd:.2f}; "
    else:
        val, spread = f"{top.val:.2f} % at epoch {top.epoch}", ""
    pieces = [
        (top.experiment, True),
        (f" has the best val accuracy ({val}); ", False),
        ("its test accuracy there is ", False),
        (f"{top.test:.2f} %", True),
        (f" without TTA ({spread}95% interval {interval(low, high)})", False),
    ]
    if top.seed is None:
        pieces.append((". The seed reported no numbers for these experiments.", False))
    else:
        diff = top.versus_seed
        relation = (
            "level with"
            if diff == 0
            else f"{abs(diff):.2f} percentage points {'above' if diff > 0 else 'below'}"
        )
        how = (
            "a checkpoint the seed picked by its test accuracy"
            if top.seed["picked_on_test"]
            else "as reported, with TTA where the seed used it"
        )
        pieces.append((f", {relation} the seed's best, {top.seed['test']:.2f} % ({how}).", False))
    if top.tta_kind:
        pieces.append((f" The {top.tta_kind} gives {top.tta:.2f} %, shown beside it.", False))
    pieces += _versus_runner_up_text(top)
    if top.higher_test:
        name, rung, value = top.higher_test
        pieces.append(
            (
                f" Rung {rung}, {name}, has a higher test accuracy ({value:.2f} %) but a lower "
                "val accuracy: choosing it would select on the test set.",
                False,
            )
        )
    pieces.append((_picked_text_lead(top), False))
    return pieces


def _versus_runner_up_text(top: Headline) -> list[tuple[str, bool]]:
    """Whether the test set tells the best experiment from the runner-up by val."""
    if top.runner_up is None:
        return []
    name, rung, test = top.runner_up
    c = top.versus_runner_up
    numbers = (
        f"a difference of {100 * c.delta:+.2f} pp, 95% interval "
        f"{interval(100 * c.low, 100 * c.high, signed=True)}, {p_value(c.pvalue)} "
        f"({METHODS[c.method]})"
    )
    if c.within_noise:
        verdict = [
            ("within noise", True),
            (f": this test set cannot tell {top.experiment} from the runner-up.", False),
        ]
    else:
        better = "better" if c.delta > 0 else "worse"
        verdict = [
            ("beyond noise", True),
            (f": {top.experiment} is distinguishably {better} on this test set.", False),
        ]
    return [
        (
            f" Against the runner-up by val, rung {rung}, {name} (test {test:.2f} %): {numbers}, ",
            False,
        ),
        *verdict,
    ]


def _picked_text_lead(top: Headline) -> str:
    test, epoch, gap, low, high = top.picked
    if gap == 0:
        which = (
            "each run's val-picked checkpoint is also its best"
            if top.replicates > 1
            else "the val-picked checkpoint is also the best"
        )
        return (
            " Picking the checkpoint by its test accuracy instead would give the same number: "
            f"{which} on test."
        )
    where = (
        f"each run's best on test; epoch {epoch} for {top.experiment}"
        if top.replicates > 1
        else f"epoch {epoch}"
    )
    return (
        f" Picking the checkpoint by its test accuracy instead ({where}) would report "
        f"{test:.2f} %, {gap:.2f} pp more (95% interval {interval(low, high, signed=True)}) "
        f"won by selecting on the test set: the honest figure is {top.test:.2f} %."
    )


# ----------------------------------------------------------------------------------------------
# HTML: what the template shows


@dataclass(frozen=True)
class Header:
    text: str
    css: str
    colspan: int = 1
    rowspan: int = 1


@dataclass(frozen=True)
class Table:
    head: list[list[Header]]  # one or two header rows
    rows: list[tuple[str, list[Cell]]]  # (the row's CSS class, its cells)
    labels: list[str]  # each column's full name: the cells' labels where rows are stacked
    element_id: str = ""


def _records(rows: pd.DataFrame) -> list[Row]:
    """The rows as dicts: a pandas Series per row (iterrows) and indexing it were most of the
    page's time in a profile at 1,000 experiments (the checkpoints tables' 42,580 rows), and
    to_dict("records") boxes every value on its own (a third of a checkpoint row's time at 100
    experiments): each column's values as Python objects at once (tolist), the same values."""
    columns = list(rows.columns)
    values = zip(*(rows[c].tolist() for c in columns), strict=True)
    return [dict(zip(columns, row, strict=True)) for row in values]


def _shown(columns: list[Column], rows: list[Row]) -> list[Column]:
    """The columns with something to show: no empty seed or TTA columns where there is none."""
    return [c for c in columns if any(c.text(row) for row in rows)]


def _table(
    columns: list[Column], rows: pd.DataFrame | list[Row], element_id: str = "", best: str = ""
) -> Table:
    rows = _records(rows) if isinstance(rows, pd.DataFrame) else rows
    columns = _shown(columns, rows)
    body = [
        (
            "best" if best and row.get("experiment") == best else "",
            [col.cell(row) for col in columns],
        )
        for row in rows
    ]
    return Table(_head(columns), body, [_md_header(c) for c in columns], element_id)


def _head(columns: list[Column]) -> list[list[Header]]:
    """Two header rows when columns are grouped: the groups, then the columns under them."""
    if not any(c.group for c in columns):
        return [[Header(c.header, c.kind) for c in columns]]
    top, bottom, i = [], [], 0
    while i < len(columns):
        col = columns[i]
        if not col.group:
            top.append(Header(col.header, col.kind, rowspan=2))
            i += 1
            continue
        span = 1
        while i + span < len(columns) and columns[i + span].group == col.group:
            span += 1
        top.append(Header(col.group, "group", colspan=span))
        bottom += [Header(c.header, "num") for c in columns[i : i + span]]
        i += span
    return [top, bottom]


def _cards(top: Headline) -> list[tuple[str, str, str]]:
    """The headline cards: (label, value, detail)."""
    tta = f" · {top.tta_kind}: {top.tta:.2f} %" if top.tta_kind else ""
    seeds = f" · {top.replicates} seed replicates" if top.replicates > 1 else ""
    spread = f" · sd {top.test_sd:.2f} over the seeds" if top.replicates > 1 else ""
    cards = [
        ("best experiment, by val", top.experiment, f"rung {top.rung}{seeds}"),
        (
            "its test accuracy, no TTA",
            f"{top.test:.2f} %",
            f"95% interval {interval(*top.test_interval)}{spread} · epoch {top.epoch}, picked "
            f"by val ({top.val:.2f} %){tta}",
        ),
    ]
    if top.runner_up:
        c = top.versus_runner_up
        value = NOISE_MARK if c.within_noise else "beyond noise"
        detail = (
            f"{top.runner_up[0]}: Δ {100 * c.delta:+.2f} pp "
            f"{interval(100 * c.low, 100 * c.high, signed=True)}, {p_value(c.pvalue)}"
        )
        cards.append(("versus the runner-up, by val", value, detail))
    if top.seed:
        how = "picked on the test set" if top.seed["picked_on_test"] else "as reported"
        detail = f"{top.seed['experiment']}, {how} · ours {top.versus_seed:+.2f} pp"
        cards.append(("the seed's best", f"{top.seed['test']:.2f} %", detail))
    return cards


def _figures(
    runs: Runs, captions: dict[str, str], figures: Path
) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(name, data: URI, caption, the experiments it leaves out) of every figure: a panel
    figure draws the first experiments only (figures.PANELS); the others are listed, each linked
    to its checkpoints page."""
    drawn = set(panel_names(runs))
    rest = [(name, page_href(name)) for name in _checkpoint_order(runs) if name not in drawn]
    return [
        (
            name,
            "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            caption,
            rest if name in PANEL_FIGURES else [],
        )
        for name, caption in captions.items()
        for png in [(figures / f"{name}.png").read_bytes()]
    ]


def _checkpoint_order(runs: Runs) -> list[str]:
    """Every experiment in the Checkpoints section's order: a seed replicate after its
    experiment."""
    return [member for members in runs.sets.values() for member in members]


def page_href(name: str) -> str:
    """The experiment's checkpoints page, relative to index.html. Experiment names are file
    names already (config.NAME: letters, digits and _.-, never a leading dot), as the runs'
    folders are; one that is not would be refused here rather than make a path or a link."""
    if not config.NAME.fullmatch(name):
        raise ValueError(f"experiment {name!r}: not a name a page can be written under")
    return f"{PAGES}/{name}.html"


@dataclass(frozen=True)
class RunPage:
    """One experiment's checkpoints: its line in index.html's list, and its page."""

    experiment: str
    detail: str  # a line about the run: checkpoints, the val-picked epoch, device, code
    description: str
    href: str  # the page, relative to index.html
    rows: pd.DataFrame  # its rows of the checkpoints table


def _run_pages(runs: Runs, checkpoints: pd.DataFrame) -> list[RunPage]:
    """Every experiment's checkpoints (seed replicates included, after their experiment). The
    tables are made page by page (`run_page`): what the pages hold in memory at once is one
    experiment's, whatever their number."""
    picked = picked_on_val(runs)["epoch"]
    row_of = runs.row_of
    positions = checkpoints.groupby("experiment", sort=False).indices
    pages = []
    for name in _checkpoint_order(runs):
        run, rows = runs.run[name], checkpoints.iloc[positions[name]]
        replicate = (
            f" · seed replicate of {row_of[name]} (seed {runs.settings[name]['seed']})"
            if row_of[name] != name
            else ""
        )
        detail = (
            f"{len(rows)} checkpoint{'s' * (len(rows) != 1)} · val-picked epoch {picked[name]}"
            f"{replicate} · trained on {run['device']} ({run['precision']}) · code "
            f"{run['code_version']}"
        )
        description = runs.meta[name]["description"]
        pages.append(RunPage(name, detail, description, page_href(name), rows))
    return pages


# Above each experiment's checkpoints table.
RUN_NOTE = (
    "Every evaluated checkpoint of this experiment (also in checkpoints.csv). Accuracies in %, "
    "each with its 95% interval (Wilson, from the per-image counts); “picked by” marks the "
    "checkpoint with the best val accuracy, the one the report shows, and the one with the best "
    "test accuracy, shown for comparison only."
)


def page_content(
    runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict, figures: Path
) -> dict:
    """Everything index.html shows, formatted and in order: the template's variables."""
    top = headline(runs, ladder)
    return {
        "title": f"{TITLE}: {top.experiment} {top.test:.2f} %",
        "heading": TITLE,
        "summary": _summary(runs),
        "cards": _cards(top),
        "lead": _lead(top),  # (text, bold) pieces
        "ladder_note": LADDER_NOTE,
        "ladder": _table(LADDER, _ladder_rows(runs, ladder), "ladder", best=top.experiment),
        "picked_note": PICKED_NOTE,
        "picked": _table(PICKED, ladder, "picked", best=top.experiment),
        "figures": _figures(runs, captions, figures),
        "checkpoints": _run_pages(runs, checkpoints),  # a line each; the tables: run_page
        "reading": READING,  # (term, definition); the first is the headline rule
        "columns": list(LADDER_COLUMNS.items()),  # ladder.csv's columns, explained
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ladder.report", "templates"),
        # The page and its CSS, and anything else: escaped.
        autoescape=jinja2.select_autoescape(["html", "html.j2", "css"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def page(content: dict, env: jinja2.Environment) -> str:
    """index.html, from `page_content`."""
    return env.get_template(TEMPLATE).render(**content)


def run_page(run: RunPage, env: jinja2.Environment) -> str:
    """checkpoints/<experiment>.html: one experiment's checkpoints table."""
    return env.get_template(RUN_TEMPLATE).render(
        run=run,
        checkpoints=_table(CHECKPOINTS, run.rows, "checkpoints"),
        heading=TITLE,
        home="../index.html",  # PAGES is one folder below index.html
        note=RUN_NOTE,
    )


# ----------------------------------------------------------------------------------------------
# Markdown


# Backslash-escaped in text from users and datasets: what could open a link or image ([ ]),
# emphasis (* ~, and _ unless between letters or digits, where it never does: names stay
# readable), code (`), math on GitHub ($), end a table cell (|), or escape the next (\\).
_MD_SYNTAX = re.compile(r"[\\`*\[\]|$~]|(?<![^\W_])_|_(?![^\W_])")
_MD_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})  # no raw HTML, no autolink


def markdown_text(text: str) -> str:
    """`text` as Markdown that renders it literally (GitHub, CommonMark) on one line: a
    description, class or experiment name can neither add markup nor break the table."""
    one_line = " ".join(text.splitlines())
    return _MD_SYNTAX.sub(r"\\\g<0>", one_line).translate(_MD_HTML)


def _md_header(column: Column) -> str:
    unit = f" ({column.unit})" if column.unit else ""
    return MD_PREFIX.get(column.group, "") + column.header + unit


def _md_table(columns: list[Column], rows: pd.DataFrame) -> str:
    rows = _records(map_text(rows, markdown_text))  # before the columns format them: [ ] stay
    columns = _shown(columns, rows)
    lines = [
        "| " + " | ".join(_md_header(c) for c in columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(c.text(row) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict) -> str:
    """report.md. Everything it shows from the data (names, descriptions, notes, changes) goes
    through `markdown_text`; only its own prose and links are written as they are."""
    top = headline(runs, ladder)
    lead = "".join(  # names inside the prose: escaped whole, which renders the same
        f"**{markdown_text(t)}**" if bold else markdown_text(t) for t, bold in _lead(top)
    )
    reading = "\n".join(f"- **{k}**: {v}" for k, v in READING)
    columns = "\n".join(f"- `{k}`: {v}" for k, v in LADDER_COLUMNS.items())
    figures = "\n\n".join(
        f"![{name}](figures/{name}.png)\n\n*{markdown_text(caption)}*"
        for name, caption in captions.items()
    )
    experiment = Column("experiment", lambda row: row["experiment"], kind="name")
    return f"""# {TITLE}

{markdown_text(_summary(runs))}

{lead}

## The ladder

Accuracy in %, differences in percentage points (pp). {LADDER_NOTE}

{_md_table(LADDER, _ladder_rows(runs, ladder))}

### Picked on test

{PICKED_NOTE}

{_md_table(PICKED, ladder)}

## Figures

{figures}

## Checkpoints

{_md_table([experiment, *CHECKPOINTS], checkpoints)}

## How to read this report

{reading}

Columns of ladder.csv:

{columns}
"""


def write(
    out: Path, runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict
) -> None:
    """index.html, a checkpoints page per experiment in out/checkpoints/ and report.md into
    `out` (a folder that replaces the report only when complete: build_report), which holds
    figures/ already."""
    env = _environment()
    content = page_content(runs, ladder, checkpoints, captions, out / "figures")
    (out / "index.html").write_text(page(content, env), encoding="utf-8")
    (out / PAGES).mkdir()
    for run in content["checkpoints"]:
        (out / run.href).write_text(run_page(run, env), encoding="utf-8")
    (out / "report.md").write_text(markdown(runs, ladder, checkpoints, captions), encoding="utf-8")
