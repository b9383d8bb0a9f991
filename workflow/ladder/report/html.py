"""The report's pages: index.html (one self-contained file: CSS inline, figures as data: URIs, no
script) and report.md (the same tables in Markdown, figures linked from figures/).

Both render the same column lists (LADDER, CHECKPOINTS), so the two can never disagree.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd

from ladder.report.tables import Runs, best_experiment, reported_test, seed_best

TITLE = "Experiment ladder"


# ----------------------------------------------------------------------------------------------
# Cells


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
    html: Callable[[pd.Series], str] | None = None  # richer HTML for the cell
    css: Callable[[pd.Series], str] = lambda row: ""  # a further class, by value

    @property
    def numeric(self) -> bool:
        return self.kind == "num"


def _pct(column: str, group: str, header: str) -> Column:
    return Column(header, lambda row: _num(row[column]), group)


def _experiment_text(row: pd.Series) -> str:
    note = f" (seed: {row['note']})" if row.get("note") else ""
    return " — ".join(filter(None, (row["experiment"], row["description"]))) + note


def _experiment_html(row: pd.Series) -> str:
    parts = [f"<strong>{escape(row['experiment'])}</strong>"]
    if row["description"]:
        parts.append(f'<span class="desc">{escape(row["description"])}</span>')
    if row.get("note"):
        parts.append(f'<span class="desc note">seed: {escape(row["note"])}</span>')
    return "".join(parts)


def _changes_html(row: pd.Series) -> str:
    return "<br>".join(escape(change) for change in row["changes"].split("; "))


def _noted(header: str, group: str, value: Callable, note: Callable) -> Column:
    """A number with a small note under it in HTML (in brackets after it in Markdown)."""

    def parts(row: pd.Series) -> tuple[str, str]:
        text = value(row)
        return text, note(row) if text else ""

    def text(row: pd.Series) -> str:
        main, extra = parts(row)
        return f"{main} ({extra})" if extra else main

    def html(row: pd.Series) -> str:
        main, extra = parts(row)
        return escape(main) + (f"<small>{escape(extra)}</small>" if extra else "")

    return Column(header, text, group, html=html)


def _epoch_note(column: str) -> Callable[[pd.Series], str]:
    return lambda row: "" if pd.isna(row[column]) else f"epoch {int(row[column])}"


def _delta_css(row: pd.Series) -> str:
    value = row["delta_test_vs_parent"]
    return "" if pd.isna(value) or value == 0 else ("pos" if value > 0 else "neg")


OURS, SEED, PICKED = "ours: val-picked checkpoint (%)", "seed, as reported (%)", "test-picked (%)"
ACCURACY, LOSS = "accuracy (%)", "loss"
# Markdown has one header row: the group becomes a prefix where it is needed to tell columns apart.
MD_PREFIX = {OURS: "", SEED: "seed ", PICKED: "test-picked ", ACCURACY: "", LOSS: "loss "}
LADDER = [
    Column("#", lambda row: _int(row["rung"])),
    Column("experiment", _experiment_text, kind="name", html=_experiment_html),
    Column("changes vs parent", lambda row: row["changes"], kind="changes", html=_changes_html),
    Column("epochs", lambda row: _int(row["epochs"])),
    Column("epoch", lambda row: _int(row["best_epoch"]), OURS),
    _pct("train_acc", OURS, "train"),
    _pct("val_acc", OURS, "val"),
    _pct("test_acc", OURS, "test"),
    _pct("test_acc_tta", OURS, "test TTA"),
    Column("Δ vs parent", lambda row: _signed(row["delta_test_vs_parent"]), OURS, css=_delta_css),
    _pct("ref_train", SEED, "train"),
    _pct("ref_val", SEED, "val"),
    _noted(
        "test",
        SEED,
        lambda row: _num(row["ref_test"]),
        lambda row: "" if pd.isna(row["ref_test_plain"]) else f"{row['ref_test_plain']:.2f} no TTA",
    ),
    _noted(
        "ours",
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
    _pct("test_acc", ACCURACY, "test"),
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
    experiment: str
    rung: int
    epoch: int
    test: float  # the val-picked test score
    test_kind: str  # "TTA vote over 10 passes", "flip TTA" or "no TTA"
    val: float
    seed: dict | None  # tables.seed_best

    @property
    def versus_seed(self) -> float:
        return self.test - self.seed["test"]


def headline(runs: Runs, ladder: pd.DataFrame) -> Headline:
    best = best_experiment(ladder)
    name, epoch = best["experiment"], int(best["best_epoch"])
    checkpoint = runs.checkpoints.set_index(["experiment", "epoch"]).loc[(name, epoch)]
    tta = runs.settings[name]["tta"]
    if math.isnan(best["test_acc_tta"]):
        kind = "no TTA"
    elif tta["augment"] == "flip":
        kind = "flip TTA"
    else:
        kind = f"TTA vote over {int(checkpoint['tta_passes'])} passes"
    score = float(reported_test(ladder)[best.name])
    return Headline(
        name, int(best["rung"]), epoch, score, kind, float(best["val_acc"]), seed_best(ladder)
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


READING = [
    (
        "val-picked",
        "each experiment's checkpoint with the highest val accuracy (ties: the earliest); "
        "its test accuracy is the experiment's result.",
    ),
    (
        "test TTA",
        "test-time augmentation: the test set passed several times through the training "
        "augmentations (or mirrored), the majority vote wins.",
    ),
    (
        "Δ test vs parent",
        "change of the val-picked test accuracy versus the rung this one builds "
        "on, in percentage points (TTA vote when both use TTA).",
    ),
    (
        "test-picked",
        "the checkpoint with the highest test accuracy: selected on the test set, so "
        "optimistic; shown only to compare with numbers picked that way (the seed's rung 26).",
    ),
    ("train", "running accuracy over the epoch's augmented training batches."),
]


# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
:root { --fg: #1f2933; --muted: #5f6b7a; --line: #e3e7ec; --soft: #f4f6f9; --accent: #1d4ed8;
        --good: #15803d; --bad: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
main { max-width: 1440px; margin: 0 auto; padding: 36px 28px 72px; }
h1 { font-size: 30px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 20px; margin: 44px 0 14px; padding-bottom: 6px;
     border-bottom: 1px solid var(--line); }
.sub, .muted { color: var(--muted); }
.sub { margin: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; margin: 26px 0 10px; }
.card { flex: 1 1 240px; background: var(--soft); border-radius: 12px; padding: 16px 20px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
               letter-spacing: 0.06em; }
.card .value { font-size: 30px; font-weight: 650; font-variant-numeric: tabular-nums;
               overflow-wrap: anywhere; }
.card .detail { color: var(--muted); font-size: 13.5px; }
.lead { font-size: 16.5px; max-width: 62em; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 10px; }
table { border-collapse: collapse; font-size: 13.5px; }
#ladder { width: 100%; }
th, td { padding: 7px 9px; text-align: left; vertical-align: top;
         border-bottom: 1px solid var(--line); }
thead th { background: var(--soft); font-weight: 600; vertical-align: bottom; }
thead th.group { text-align: center; border-left: 1px solid var(--line); color: var(--muted);
                 font-weight: 500; }
tbody tr:last-child td { border-bottom: none; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr.best { background: #eef4ff; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td small { display: block; color: var(--muted); font-size: 11.5px; }
td.changes { min-width: 15em; max-width: 26em; font: 12.5px/1.45 ui-monospace, SFMono-Regular,
             Menlo, Consolas, monospace; }
.desc { display: block; color: var(--muted); font-size: 12.5px; min-width: 12em; }
.note { font-style: italic; }
.pos { color: var(--good); font-weight: 600; }
.neg { color: var(--bad); font-weight: 600; }
figure { margin: 30px 0; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 14px; max-width: 60em; margin: 8px auto 0;
             text-align: center; }
details { border: 1px solid var(--line); border-radius: 10px; margin: 10px 0; padding: 0 14px; }
details[open] { padding-bottom: 12px; }
summary { cursor: pointer; padding: 10px 0; font-weight: 600; }
summary .muted { font-weight: 400; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; font-size: 14px; }
dt { font-weight: 600; }
dd { margin: 0; color: var(--muted); }
"""


def _shown(columns: list[Column], rows: pd.DataFrame) -> list[Column]:
    """The columns with something to show: no empty seed or TTA columns where there is none."""
    return [c for c in columns if any(c.text(row) for _, row in rows.iterrows())]


def _html_table(columns: list[Column], rows: pd.DataFrame, attrs: str = "", best: str = "") -> str:
    columns = _shown(columns, rows)
    head = _html_head(columns)
    body = []
    for _, row in rows.iterrows():
        cells = []
        for col in columns:
            classes = " ".join(c for c in (col.kind, col.css(row)) if c)
            content = col.html(row) if col.html else escape(col.text(row))
            cells.append(f'<td class="{classes}">{content}</td>')
        marked = ' class="best"' if best and row.get("experiment") == best else ""
        body.append(f"<tr{marked}>{''.join(cells)}</tr>")
    rows_html = "\n".join(body)
    return f'<div class="scroll"><table{attrs}>{head}<tbody>\n{rows_html}\n</tbody></table></div>'


def _html_head(columns: list[Column]) -> str:
    """Two header rows when columns are grouped: the groups, then the columns under them."""
    if not any(c.group for c in columns):
        cells = "".join(f'<th class="{c.kind}">{escape(c.header)}</th>' for c in columns)
        return f"<thead><tr>{cells}</tr></thead>"
    top, bottom, i = [], [], 0
    while i < len(columns):
        col = columns[i]
        if not col.group:
            top.append(f'<th rowspan="2" class="{col.kind}">{escape(col.header)}</th>')
            i += 1
            continue
        span = 1
        while i + span < len(columns) and columns[i + span].group == col.group:
            span += 1
        top.append(f'<th colspan="{span}" class="group">{escape(col.group)}</th>')
        bottom += [f'<th class="num">{escape(c.header)}</th>' for c in columns[i : i + span]]
        i += span
    return f"<thead><tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr></thead>"


def _cards(top: Headline) -> str:
    cards = [
        ("best experiment", escape(top.experiment), f"rung {top.rung}"),
        (
            "its test accuracy",
            f"{top.test:.2f} %",
            f"epoch {top.epoch}, picked by val ({top.val:.2f} %) · {escape(top.test_kind)}",
        ),
    ]
    if top.seed:
        how = "picked on the test set" if top.seed["picked_on_test"] else "as reported"
        cards.append(
            (
                "the seed's best",
                f"{top.seed['test']:.2f} %",
                f"{escape(top.seed['experiment'])}, {how} · ours {top.versus_seed:+.2f} pp",
            )
        )
    return "".join(
        f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="detail">{detail}</div></div>'
        for label, value, detail in cards
    )


def _lead(top: Headline) -> list[tuple[str, bool]]:
    """The headline as a sentence: (text, bold) pieces, for HTML and Markdown alike."""
    pieces = [
        (top.experiment, True),
        (" reaches ", False),
        (f"{top.test:.2f} %", True),
        (
            f" test accuracy ({top.test_kind}) at epoch {top.epoch}, "
            "its checkpoint with the best val accuracy.",
            False,
        ),
    ]
    if top.seed is None:
        return [*pieces, (" The seed reported no numbers for these experiments.", False)]
    diff = top.versus_seed
    relation = (
        "level with"
        if diff == 0
        else f"{abs(diff):.2f} percentage points {'above' if diff > 0 else 'below'}"
    )
    picked = (
        " (a checkpoint the seed picked by its test accuracy)" if top.seed["picked_on_test"] else ""
    )
    return [
        *pieces,
        (f" That is {relation} the seed's best, {top.seed['test']:.2f} %{picked}.", False),
    ]


def _lead_html(top: Headline) -> str:
    text = "".join(f"<strong>{escape(t)}</strong>" if bold else escape(t) for t, bold in _lead(top))
    return f'<p class="lead">{text}</p>'


def _figures_html(captions: dict[str, str], figures: Path) -> str:
    parts = []
    for name, caption in captions.items():
        data = base64.b64encode((figures / f"{name}.png").read_bytes()).decode("ascii")
        parts.append(
            f'<figure id="fig-{name}">'
            f'<img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _checkpoints_html(runs: Runs, checkpoints: pd.DataFrame, ladder: pd.DataFrame) -> str:
    parts = []
    for name, rows in checkpoints.groupby("experiment", sort=False):
        run = runs.run[name]
        best = ladder.loc[ladder["experiment"] == name, "best_epoch"].iloc[0]
        detail = (
            f"{len(rows)} checkpoint{'s' * (len(rows) != 1)} · val-picked epoch {best} · "
            f"trained on {run['device']} ({run['precision']}) · code {run['code_version']}"
        )
        parts.append(
            f"<details><summary>{escape(name)} "
            f'<span class="muted">— {escape(detail)}</span></summary>'
            f"{_html_table(CHECKPOINTS, rows)}</details>"
        )
    return "\n".join(parts)


def page(
    runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict, figures: Path
) -> str:
    top = headline(runs, ladder)
    reading = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in READING)
    ladder_html = _html_table(
        LADDER, _ladder_rows(runs, ladder), ' id="ladder"', best=top.experiment
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{TITLE}: {escape(top.experiment)} {top.test:.2f} %</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header><h1>{TITLE}</h1><p class="sub">{escape(_summary(runs))}</p></header>
<div class="cards">{_cards(top)}</div>
{_lead_html(top)}
<h2>The ladder</h2>
{ladder_html}
<h2>Figures</h2>
{_figures_html(captions, figures)}
<h2>Checkpoints</h2>
<p class="muted">Every evaluated checkpoint of every experiment (also in checkpoints.csv).</p>
{_checkpoints_html(runs, checkpoints, ladder)}
<h2>How to read this page</h2>
<dl>{reading}</dl>
<p class="muted">Accuracies in %. Tables as CSV: ladder.csv, checkpoints.csv.</p>
</main>
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[Column], rows: pd.DataFrame) -> str:
    columns = _shown(columns, rows)
    headers = [MD_PREFIX.get(c.group, "") + c.header for c in columns]
    lines = [
        "| " + " | ".join(map(_md_cell, headers)) + " |",
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
    figures = "\n\n".join(
        f"![{name}](figures/{name}.png)\n\n*{caption}*" for name, caption in captions.items()
    )
    experiment = Column("experiment", lambda row: row["experiment"], kind="name")
    return f"""# {TITLE}

{_summary(runs)}

{lead}

## The ladder

Accuracy in %; "ours" at each experiment's val-picked checkpoint.

{_md_table(LADDER, _ladder_rows(runs, ladder))}

## Figures

{figures}

## Checkpoints

{_md_table([experiment, *CHECKPOINTS], checkpoints)}

## How to read this report

{reading}
"""


def write(
    out: Path, runs: Runs, ladder: pd.DataFrame, checkpoints: pd.DataFrame, captions: dict
) -> None:
    """index.html and report.md into `out`, which holds figures/ already."""
    page_html = page(runs, ladder, checkpoints, captions, out / "figures")
    (out / "index.html").write_text(page_html, encoding="utf-8")
    (out / "report.md").write_text(markdown(runs, ladder, checkpoints, captions), encoding="utf-8")
