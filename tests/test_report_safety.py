"""Text from users and datasets reaches every report output as text: descriptions, seed notes and
class names built to attack report.md (raw HTML, javascript: links, a broken table), index.html
(script, event handlers), the CSV tables (spreadsheet formulas) and the figures (mathtext)."""

from __future__ import annotations

import html.parser
import io as stdio
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import report_fixtures
from ladder.report import build_report, figures, tables
from markdown_it import MarkdownIt
from report_fixtures import write_inputs

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "![x](javascript:alert(1))",
    '=HYPERLINK("http://x","y")',
    "+1+1",
    "-2+3",
    "@SUM(A1)",
    "a|b",
    "two\nlines",
    "$x^2_$",
    "a_b$",
    "\\alpha",
]
# Each starts with a formula character (CSV) and carries HTML and Markdown payloads.
DESCRIPTIONS = {
    "a": '=HYPERLINK("http://x","y") <script>alert(1)</script> [click](javascript:alert(1))',
    "b": "+1+1 <img src=x onerror=alert(1)> ![x](javascript:alert(1)) a|b *em* `code`",
    "c": "-2+3 two\nlines $x^2_$ a_b$ \\alpha [d](data:text/html,x) ~~s~~ &lt;",
}
NOTES = {"a": "@SUM(A1) [v](vbscript:msgbox(1)) <b>bold</b>", "b": "__init__ | _x_"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A report of the fixture's runs with DESCRIPTIONS, NOTES and HOSTILE as class names."""
    experiments = {
        name: {
            **exp,
            "description": DESCRIPTIONS[name],
            "reference": {**exp.get("reference", {}), "note": NOTES.get(name, "")},
        }
        for name, exp in report_fixtures.PARAMS["experiments"].items()
    }
    root = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            report_fixtures, "PARAMS", {**report_fixtures.PARAMS, "experiments": experiments}
        )
        patch.setattr(report_fixtures, "CLASSES", HOSTILE)
        build_report(**write_inputs(root), out=root / "out")
    return root / "out"


# ----------------------------------------------------------------------------------------------
# report.md


def _parse(md: str) -> list:
    """`md`'s tokens as CommonMark with GitHub's tables and strikethrough parses it, links to
    any URL accepted: markdown-it itself turns a javascript: link back into text, a renderer
    with another sanitiser (or none) may not, so the text must not form one at all."""
    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    parser.validateLink = lambda url: True
    return parser.parse(md)


def test_markdown_has_no_markup_from_user_text(hostile):
    md = (hostile / "report.md").read_text(encoding="utf-8")
    assert "<script" not in md
    assert "<img" not in md
    tokens = _parse(md)
    assert not [t for t in tokens if t.type == "html_block"]
    inline = [child for t in tokens if t.type == "inline" for child in t.children]
    assert not [t for t in inline if t.type == "html_inline"]
    assert not [t for t in inline if t.type == "link_open"]  # the report links nothing itself
    images = {t.attrs["src"] for t in inline if t.type == "image"}
    assert images == {f"figures/{p.name}" for p in (hostile / "figures").iterdir()}


def test_markdown_ladder_shows_user_text_literally_in_its_own_cells(hostile):
    md = (hostile / "report.md").read_text(encoding="utf-8")
    tokens = _parse(md)
    ladder = tokens[: next(i for i, t in enumerate(tokens) if t.type == "table_close")]
    rows, row = [], []
    for i, token in enumerate(ladder):
        if token.type in ("th_open", "td_open"):
            cell = ladder[i + 1]
            assert {c.type for c in cell.children} <= {"text"}  # no emphasis, code, link
            row.append("".join(c.content for c in cell.children))
        elif token.type == "tr_close":
            rows.append(row)
            row = []
    assert len(rows) == 1 + 3
    assert {len(r) for r in rows} == {len(rows[0])}  # a | in the text split no cell
    experiment = dict(zip(rows[0], zip(*rows[1:], strict=True), strict=True))["experiment"]
    assert experiment == (
        f"a — {DESCRIPTIONS['a']} (seed: {NOTES['a']})",
        f"b — {DESCRIPTIONS['b']} (seed: {NOTES['b']})",
        f"c — {' '.join(DESCRIPTIONS['c'].splitlines())}",  # on one line
    )


# ----------------------------------------------------------------------------------------------
# index.html


class _Elements(html.parser.HTMLParser):
    """Every element (tag, attributes) and every piece of text of a page."""

    def __init__(self):
        super().__init__()  # character references decoded: text holds what a browser shows
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _links(hostile, page) -> set[str]:
    """The links a report page may have, relative to it: each figure's PNG, full size, and each
    experiment's checkpoints page (from index.html); the report (from a checkpoints page)."""
    if page.parent.name == "checkpoints":
        return {"../index.html"}
    folders = ("figures", "checkpoints")
    return {f"{f}/{p.name}" for f in folders for p in (hostile / f).iterdir()}


@pytest.mark.parametrize("name", ["index.html", "checkpoints/a.html", "checkpoints/c.html"])
def test_page_shows_user_text_as_text(hostile, name):
    page = _Elements()
    page.feed((hostile / name).read_text(encoding="utf-8"))
    tags = [tag for tag, _ in page.elements]
    assert "script" not in tags
    figures = len(list((hostile / "figures").iterdir())) if name == "index.html" else 0
    assert tags.count("img") == figures
    assert "b" not in tags  # NOTES' <b>: only the page's own markup (strong, span, ...)
    links = _links(hostile, hostile / name)
    for tag, attrs in page.elements:
        assert not [name for name in attrs if name.startswith("on") or name == "style"], tag
        if "href" in attrs:  # only the page's own links
            assert tag == "a", attrs
            assert attrs["href"] in links, attrs
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), tag
        for value in attrs.values():
            assert not re.search(r"(java|vb)script:", value or "", re.IGNORECASE), (tag, value)
    shown = [*DESCRIPTIONS.values(), *NOTES.values()] if name == "index.html" else []
    if name != "index.html":  # a checkpoints page: its experiment's description
        shown = [DESCRIPTIONS[Path(name).stem]]
    for text in shown:
        assert any(text in piece for piece in page.text), text  # shown as written, one text node


# ----------------------------------------------------------------------------------------------
# CSV tables


def test_csv_text_cells_cannot_run_as_formulas_and_numbers_stay_numbers(hostile):
    ladder = pd.read_csv(hostile / "ladder.csv", keep_default_na=False, na_values=[""])
    assert ladder["description"].tolist() == [f"'{d}" for d in DESCRIPTIONS.values()]
    assert ladder["changes"][2].startswith("'+translate(")
    for column in ("rung", "best_epoch", "test_acc", "delta_test_vs_parent", "p_vs_parent"):
        assert pd.api.types.is_numeric_dtype(ladder[column]), column
    assert ladder["delta_low"].dtype == float
    assert ladder["delta_low"][2] == -6.0  # a negative number is a number, not a formula
    for path in sorted(hostile.glob("*.csv")):  # ladder, checkpoints, curves: every text cell
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        cells = [v for c in table.select_dtypes(["object", "string"]) for v in table[c].dropna()]
        assert not [v for v in cells if isinstance(v, str) and v.startswith(tables.FORMULA_STARTS)]


def test_write_csv_quotes_formula_text_only(tmp_path):
    text = [*HOSTILE, "\tx", "\ry", "plain", "x\ry"]
    numbers = [-1.5 + i for i in range(len(text))]
    tables.write_csv(
        pd.DataFrame({"text": text, "delta": numbers, "n": range(len(text))}), tmp_path / "t.csv"
    )
    back = pd.read_csv(tmp_path / "t.csv", keep_default_na=False, na_values=[""])
    expected = [
        ("'" if t[0] in "=+-@\t\r" else "") + t.replace("\r", "\n") for t in text
    ]  # a carriage return would end the row for readers: a newline, which the writer quotes
    assert back["text"].tolist() == expected
    assert back["delta"].dtype == float
    assert back["delta"].tolist() == numbers
    assert back["n"].tolist() == list(range(len(text)))


# ----------------------------------------------------------------------------------------------
# Figures


def test_figures_draw_hostile_class_names_as_written(hostile):
    assert (hostile / "figures" / "worst_classes.png").stat().st_size > 0  # the whole report
    n = len(HOSTILE)  # the classes in index order, worst first
    per_class = pd.DataFrame(
        {"experiment": "x", "epoch": 1, "index": range(n), "count": 5, "test_acc": range(n)}
    )
    ladder = pd.DataFrame([{"experiment": "x", "best_epoch": 1, "val_acc": 50.0, "test_acc": 40.0}])
    runs, classes = SimpleNamespace(per_class=per_class), dict(enumerate(HOSTILE))
    with plt.rc_context(figures.THEME):
        fig, _ = figures.worst_classes(runs, ladder, classes)
        try:
            fig.savefig(stdio.BytesIO(), format="png")
            labels = fig.axes[0].get_yticklabels()
            assert [t.get_text() for t in labels] == [f"{name} (n=5)" for name in HOSTILE]
            assert not [t for t in labels if t.get_parse_math()]
        finally:
            plt.close(fig)


def test_theme_draws_dollars_literally_in_ticks_titles_legends_and_annotations():
    text = "$x^2_$ a_b$"  # mathtext would fail on it: `_` with nothing after it
    with plt.rc_context(figures.THEME):
        fig, ax = plt.subplots()
        try:
            ax.plot([0, 1], [0, 1], label=text)
            ax.set_xticks([0, 1], [text, "\\alpha"])
            ax.set_title(text)
            ax.legend()
            ax.annotate(text, (0.5, 0.5))
            fig.savefig(stdio.BytesIO(), format="png")
            tick, title = ax.get_xticklabels()[0], ax.title
            legend, annotation = ax.get_legend().get_texts()[0], ax.texts[0]
            for drawn in (tick, title, legend, annotation):
                assert drawn.get_text() == text
                assert not drawn.get_parse_math()
        finally:
            plt.close(fig)


def test_a_class_name_that_cannot_be_drawn_fails_naming_the_figure_and_the_class(tmp_path):
    """A lone surrogate (what an undecodable folder name becomes) has no glyph to draw."""
    classes = ["cat", "dog", "bad\udc80name", "owl"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_fixtures, "CLASSES", classes)
        inputs = write_inputs(tmp_path)
    message = f"figures/worst_classes.png: cannot draw class 2 ({classes[2]!r}): "
    with pytest.raises(ValueError, match=re.escape(message)):
        build_report(**inputs, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
