"""The report's pages: index.html (one self-contained file: CSS inline, figures as data: URIs, no
script) and report.md (the same tables in Markdown, figures linked from figures/).

The page's markup and CSS live in templates/ (Jinja2, autoescaped: every value is escaped unless
it is markup the template writes itself); this module prepares what they show: the headline,
the tables as rows of cells, the figures. Both pages render the same column lists (LADDER,
CHECKPOINTS), so the two can never disagree. report.md is short and made of tables whose only
escaping is Markdown's `|`, so it stays in Python (`markdown`): one template environment, and it
escapes everything it renders.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pandas as pd

from ladder.report.tables import LADDER_COLUMNS, Runs, best_experiment, seed_best

TITLE = "Experiment ladder"
TEMPLATE = "index.html.j2"


# ----------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Cell:
    """One HTML table cell: its text (in bold for `strong`), then lines of their own below it,
    each (text, CSS class): a description, a note, one change per line."""

    css: str
    text: str = ""
    strong: bool = False
    lines: tuple[tuple[str, str], ...] = ()


def _num(value, digits: int = 2) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def _int(value) -> str:
    return "" if pd.isna(value) else str(int(value))


def _signed(value) -> str:
    return "" if pd.isna(value) else f"{value:+.2f}"


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[pd.Series], str]  # the cell as plain text (Markdown, and HTML by default)
    group: str = ""  # a header spanning the columns that share it
    kind: str = "num"  # the HTML cells' class: "num" right-aligns figures
    html: Callable[[pd.Series], Cell] | None = None  # a richer HTML cell (CSS: the column's)
    css: Callable[[pd.Series], str] = lambda row: ""  # a further class, by value
    unit: str = ""  # Markdown adds it to the header (HTML says it in the group header)

    @property
    def numeric(self) -> bool:
        return self.kind == "num"

    def cell(self, row: pd.Series) -> Cell:
        css = " ".join(c for c in (self.kind, self.css(row)) if c)
        if self.html is None:
            return Cell(css, self.text(row))
        rich = self.html(row)
        return Cell(css, rich.text, rich.strong, rich.lines)


def _pct(column: str, group: str, header: str) -> Column:
    return Column(header, lambda row: _num(row[column]), group, unit="%")


def _experiment_text(row: pd.Series) -> str:
    note = f" (seed: {row['note']})" if row.get("note") else ""
    return " — ".join(filter(None, (row["experiment"], row["description"]))) + note


def _experiment_html(row: pd.Series) -> Cell:
    lines = [(row["description"], "desc")] if row["description"] else []
    if row.get("note"):
        lines.append((f"seed: {row['note']}", "desc note"))
    return Cell("", row["experiment"], strong=True, lines=tuple(lines))


def _changes_html(row: pd.Series) -> Cell:
    return Cell("", lines=tuple((change, "") for change in row["changes"].split("; ")))


def _noted(header: str, group: str, value: Callable, note: Callable) -> Column:
    """A number with a small note under it in HTML (in brackets after it in Markdown)."""

    def parts(row: pd.Series) -> tuple[str, str]:
        text = value(row)
        return text, note(row) if text else ""

    def text(row: pd.Series) -> str:
        main, extra = parts(row)
        return f"{main} ({extra})" if extra else main

    def html(row: pd.Series) -> Cell:
        main, extra = parts(row)
        return Cell("", main, lines=((extra, "small"),) if extra else ())

    return Column(header, text, group, html=html, unit="%")


def _epoch_note(column: str) -> Callable[[pd.Series], str]:
    return lambda row: "" if pd.isna(row[column]) else f"epoch {int(row[column])}"


def _delta(column: str, header: str) -> Column:
    """A change versus the parent in percentage points, green when up and red when down."""

    def css(row: pd.Series) -> str:
        value = row[column]
        return "" if pd.isna(value) or value == 0 else ("pos" if value > 0 else "neg")

    return Column(header, lambda row: _signed(row[column]), OURS, css=css)


OURS, SEED, PICKED = "ours: val-picked checkpoint (%)", "seed, as reported (%)", "test-picked (%)"
ACCURACY, LOSS = "accuracy (%)", "loss"
# Markdown has one header row: the group becomes a prefix where it is needed to tell columns apart.
MD_PREFIX = {OURS: "", SEED: "seed ", PICKED: "test-picked ", ACCURACY: "", LOSS: "loss "}
# The Δ columns: one basis each, the same on every row, named in the header (and in READING).
DELTA_TEST, DELTA_TTA = "Δ test vs parent (no TTA, pp)", "Δ TTA vote vs parent (pp)"
LADDER = [
    Column("#", lambda row: _int(row["rung"])),
    Column("experiment", _experiment_text, kind="name", html=_experiment_html),
    Column("changes vs parent", lambda row: row["changes"], kind="changes", html=_changes_html),
    Column("epochs", lambda row: _int(row["epochs"])),
    Column("epoch", lambda row: _int(row["best_epoch"]), OURS),
    _pct("train_acc", OURS, "train"),
    _pct("val_acc", OURS, "val"),
    _pct("test_acc", OURS, "test, no TTA"),
    _pct("test_acc_tta", OURS, "test, TTA vote"),
    _delta("delta_test_vs_parent", DELTA_TEST),
    _delta("delta_tta_vs_parent", DELTA_TTA),
    _pct("ref_train", SEED, "train"),
    _pct("ref_val", SEED, "val"),
    _noted(
        "test",
        SEED,
        lambda row: _num(row["ref_test"]),
        lambda row: "" if pd.isna(row["ref_test_plain"]) else f"{row['ref_test_plain']:.2f} no TTA",
    ),
    _noted(
        "ours, no TTA",
        PICKED,
        lambda row: _num(row["test_picked_test"]),
        _epoch_note("test_picked_epoch"),
    ),
    _noted(
        "seed",
        PICKED,
        lambda row: _num(row["ref_test_picked_test"]),
        _epoch_note("ref_test_picked_epoch"),
    ),
]


def _picked_text(row: pd.Series) -> str:
    return ", ".join(k for k in ("val", "test") if row[f"{k}_picked"])


CHECKPOINTS = [
    Column("epoch", lambda row: _int(row["epoch"])),
    _pct("train_acc", ACCURACY, "train"),
    _pct("val_acc", ACCURACY, "val"),
    _pct("test_acc", ACCURACY, "test, no TTA"),
    _pct("test_acc_tta", ACCURACY, "TTA vote"),
    _pct("test_acc_tta_mean", ACCURACY, "TTA mean"),
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
    val: float  # val accuracy there: what picked the checkpoint and the experiment
    tta: float | None  # the TTA vote at the same checkpoint, shown beside, never instead
    tta_kind: str  # "TTA vote over 10 passes", "flip TTA", or "" without TTA
    seed: dict | None  # tables.seed_best
    higher_test: tuple[str, int, float] | None  # another rung's higher test (name, rung, %)

    @property
    def versus_seed(self) -> float:
        return self.test - self.seed["test"]


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
    return Headline(
        name,
        int(best["rung"]),
        epoch,
        float(best["test_acc"]),
        float(best["val_acc"]),
        tta,
        kind,
        seed_best(ladder),
        higher,
    )


def _summary(runs: Runs) -> str:
    first = runs.run[runs.names[0]]
    counts = runs.checkpoints.iloc[0]
    size = first["image_size"]
    n = len(runs.names)
    return (
        f"{n} experiment{'s' * (n != 1)} · {first['num_classes']} classes · {size}×{size} images · "
        f"val {int(counts['val_images']):,} / test {int(counts['test_images']):,} images"
    )


def _ladder_rows(runs: Runs, ladder: pd.DataFrame) -> pd.DataFrame:
    return ladder.assign(note=[runs.meta[n]["note"] for n in ladder["experiment"]])


# Above the ladder table, in short; RULE says it in full.
LADDER_NOTE = (
    "Picked on val, reported on test: each experiment at its checkpoint with the best val "
    "accuracy, its result the test accuracy without TTA; the TTA vote in its own columns. Each Δ "
    "has one basis on every row, named in its header."
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
READING = [
    ("headline rule", RULE),
    (
        "val-picked",
        "each experiment's checkpoint with the highest val accuracy (ties: the earliest).",
    ),
    ("test, no TTA", "one pass over the test set: the experiment's result."),
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
    (
        "test-picked",
        "the checkpoint with the highest test accuracy (no TTA): selected on the test set, so "
        "optimistic; shown only to compare with numbers picked that way (the seed's rung 26).",
    ),
    (
        "seed",
        "the numbers in the seed's log, as reported: its test number includes TTA where the "
        "seed used it.",
    ),
    ("train", "running accuracy over the epoch's augmented training batches."),
]


def _lead(top: Headline) -> list[tuple[str, bool]]:
    """The headline as a sentence: (text, bold) pieces, for HTML and Markdown alike."""
    pieces = [
        (top.experiment, True),
        (f" has the best val accuracy ({top.val:.2f} % at epoch {top.epoch}); ", False),
        ("its test accuracy there is ", False),
        (f"{top.test:.2f} %", True),
        (" without TTA", False),
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
    if top.higher_test:
        name, rung, value = top.higher_test
        pieces.append(
            (
                f" Rung {rung}, {name}, has a higher test accuracy ({value:.2f} %) but a lower "
                "val accuracy: choosing it would select on the test set.",
                False,
            )
        )
    return pieces


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
    element_id: str = ""


def _shown(columns: list[Column], rows: pd.DataFrame) -> list[Column]:
    """The columns with something to show: no empty seed or TTA columns where there is none."""
    return [c for c in columns if any(c.text(row) for _, row in rows.iterrows())]


def _table(
    columns: list[Column], rows: pd.DataFrame, element_id: str = "", best: str = ""
) -> Table:
    columns = _shown(columns, rows)
    body = [
        (
            "best" if best and row.get("experiment") == best else "",
            [col.cell(row) for col in columns],
        )
        for _, row in rows.iterrows()
    ]
    return Table(_head(columns), body, element_id)


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
    cards = [
        ("best experiment, by val", top.experiment, f"rung {top.rung}"),
        (
            "its test accuracy, no TTA",
            f"{top.test:.2f} %",
            f"epoch {top.epoch}, picked by val ({top.val:.2f} %){tta}",
        ),
    ]
    if top.seed:
        how = "picked on the test set" if top.seed["picked_on_test"] else "as reported"
        detail = f"{top.seed['experiment']}, {how} · ours {top.versus_seed:+.2f} pp"
        cards.append(("the seed's best", f"{top.seed['test']:.2f} %", detail))
    return cards


def _figures(captions: dict[str, str], figures: Path) -> list[tuple[str, str, str]]:
    """(name, data: URI, caption) of every figure."""
    return [
        (name, "data:image/png;base64," + base64.b64encode(png).decode("ascii"), caption)
        for name, caption in captions.items()
        for png in [(figures / f"{name}.png").read_bytes()]
    ]


def _checkpoints(
    runs: Runs, checkpoints: pd.DataFrame, ladder: pd.DataFrame
) -> list[tuple[str, str, Table]]:
    """(experiment, a line about the run, its checkpoints table) of every experiment."""
    parts = []
    for name, rows in checkpoints.groupby("experiment", sort=False):
        run = runs.run[name]
        best = ladder.loc[ladder["experiment"] == name, "best_epoch"].iloc[0]
        detail = (
            f"{len(rows)} checkpoint{'s' * (len(rows) != 1)} · val-picked epoch {best} · "
            f"trained on {run['device']} ({run['precision']}) · code {run['code_version']}"
        )
        parts.append((name, detail, _table(CHECKPOINTS, rows)))
    return parts


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
        "figures": _figures(captions, figures),
        "checkpoints": _checkpoints(runs, checkpoints, ladder),
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


def page(
    runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict, figures: Path
) -> str:
    content = page_content(runs, ladder, checkpoints, captions, figures)
    return _environment().get_template(TEMPLATE).render(**content)


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_header(column: Column) -> str:
    unit = f" ({column.unit})" if column.unit else ""
    return MD_PREFIX.get(column.group, "") + column.header + unit


def _md_table(columns: list[Column], rows: pd.DataFrame) -> str:
    columns = _shown(columns, rows)
    lines = [
        "| " + " | ".join(_md_cell(_md_header(c)) for c in columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|",
    ]
    lines += [
        "| " + " | ".join(_md_cell(c.text(row)) for c in columns) + " |"
        for _, row in rows.iterrows()
    ]
    return "\n".join(lines)


def markdown(runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict) -> str:
    top = headline(runs, ladder)
    lead = "".join(f"**{t}**" if bold else t for t, bold in _lead(top))
    reading = "\n".join(f"- **{k}**: {v}" for k, v in READING)
    columns = "\n".join(f"- `{k}`: {v}" for k, v in LADDER_COLUMNS.items())
    figures = "\n\n".join(
        f"![{name}](figures/{name}.png)\n\n*{caption}*" for name, caption in captions.items()
    )
    experiment = Column("experiment", lambda row: row["experiment"], kind="name")
    return f"""# {TITLE}

{_summary(runs)}

{lead}

## The ladder

Accuracy in %, differences in percentage points (pp). {LADDER_NOTE}

{_md_table(LADDER, _ladder_rows(runs, ladder))}

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
    """index.html and report.md into `out`, which holds figures/ already."""
    page_html = page(runs, ladder, checkpoints, captions, out / "figures")
    (out / "index.html").write_text(page_html, encoding="utf-8")
    (out / "report.md").write_text(markdown(runs, ladder, checkpoints, captions), encoding="utf-8")
