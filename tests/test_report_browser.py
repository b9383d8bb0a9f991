"""index.html in a real browser (headless Chromium through Selenium): the page renders, every
figure decodes, the ladder table has a row per experiment, each experiment's link opens its
checkpoints page (a row per checkpoint, a link back), and a screenshot is not blank. The shipped
ladder's report (params.yaml's experiments, synthetic numbers) fits a 1280 and a 1920 px window,
and at 400 px (a phone) its tables stack and its figures keep a readable size; so does a
checkpoints page.

Needs Debian's chromium and chromium-driver (`make system-deps` installs them as root) and the
selenium package. Without them the test is skipped, or fails where CI is set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_browser
from ladder import config
from ladder.report import build_report
from PIL import Image
from report_fixtures import write_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import report as report_benchmark  # benchmarks/report.py: the whole ladder's report inputs
import screenshot  # docs/screenshot.py: the browser the README's picture uses

REPO = Path(__file__).resolve().parents[1]

WIDTH, HEIGHT = 1400, 1000


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with screenshot.chromium(WIDTH, HEIGHT) as driver:
        yield driver


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    build_report(**write_inputs(root), out=root / "out")
    browser.get((root / "out" / "index.html").as_uri())
    return browser


def test_page_renders_with_every_figure_loaded(page):
    assert page.title.startswith("Experiment ladder")
    loaded = page.execute_script(
        "return Array.from(document.images, i => i.complete && i.naturalWidth > 0);"
    )
    assert len(loaded) == 7
    assert all(loaded)
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_ladder_table_has_a_row_per_experiment(page):
    rows = page.execute_script("return document.querySelectorAll('#ladder tbody tr').length;")
    assert rows == 3


def test_page_does_not_overflow_sideways(page):
    overflow = page.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 0


def test_each_experiment_links_its_checkpoints_page_and_back(page, tmp_path):
    """Following each link of the Checkpoints list opens that experiment's page, whose table
    has a row per checkpoint; its first link leads back to the report."""
    index = page.current_url
    links = page.execute_script(
        "return Array.from(document.querySelectorAll('#checkpoints a'),"
        " a => [a.textContent, a.href]);"
    )
    assert [name for name, _ in links] == ["a", "b", "c"]
    try:
        for name, href in links:
            page.get(href)
            assert page.title == f"{name}: checkpoints · Experiment ladder"
            assert page.find_element("css selector", "h1").text == name
            rows = page.execute_script(
                "return document.querySelectorAll('#checkpoints tbody tr').length;"
            )
            assert rows == 3
            errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
            _not_blank(page, tmp_path / f"{name}.png")
            page.find_element("css selector", "a").click()
            assert page.current_url == index
    finally:
        page.get(index)


def test_screenshot_is_not_blank(page, tmp_path):
    path = tmp_path / "index.png"
    assert page.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


# ----------------------------------------------------------------------------------------------
# The whole ladder at desktop and phone widths


@pytest.fixture(scope="module")
def ladder_page(tmp_path_factory) -> Path:
    """The report of params.yaml's experiments (their names, descriptions and changes, synthetic
    numbers), small data."""
    require_browser()
    root = tmp_path_factory.mktemp("ladder")
    params = config.load(REPO / "params.yaml")
    shape = report_benchmark.Shape(classes=20, val=400, test=200, train=400, size=8)
    inputs = report_benchmark.write_inputs(root / "inputs", params, shape)
    build_report(**inputs, out=root / "out")
    return root / "out" / "index.html"


def _open(driver, page: Path, width: int, mobile: bool) -> None:
    """The page in a viewport exactly `width` CSS px wide (a window has a minimum width)."""
    metrics = {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(page.as_uri())


# Every element that shows more than its box: the page sideways, a table in its scroll box.
OVERFLOW = """
const over = [];
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth) over.push(`page ${root.scrollWidth}>${root.clientWidth}`);
for (const box of document.querySelectorAll('.scroll')) {
  if (box.scrollWidth > box.clientWidth) {
    over.push(`${box.querySelector('table').id || 'table'} ${box.scrollWidth}>${box.clientWidth}`);
  }
}
return over;
"""


# Each visible cell of the ladder tables: its display, its label, what its ::before shows, its
# right edge.
STACKED = """return Array.from(document.querySelectorAll('#ladder td, #picked td'))
  .filter(td => td.offsetParent !== null)
  .map(td => [getComputedStyle(td).display, td.dataset.label,
              getComputedStyle(td, '::before').content, td.getBoundingClientRect().right]);"""


def _run_page(index: Path) -> Path:
    """The checkpoints page of the report's first experiment (params.yaml's first)."""
    first = next(iter(config.load(REPO / "params.yaml").experiments))
    return index.parent / "checkpoints" / f"{first}.html"


def _not_blank(driver, path: Path) -> None:
    assert driver.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10


@pytest.mark.parametrize("width", [1280, 1920])
def test_the_whole_ladder_fits_a_desktop_window(ladder_page, width, tmp_path):
    """Every column of both ladder tables within the window: none cut off or behind a scroll
    bar (the test-picked columns were, at every width from 1280 to 1920)."""
    with screenshot.chromium(width, 1000) as driver:
        _open(driver, ladder_page, width, mobile=False)
        assert driver.execute_script(OVERFLOW) == []
        rights = driver.execute_script(
            "return Array.from(document.querySelectorAll('#ladder th, #picked th'),"
            " th => th.getBoundingClientRect().right);"
        )
        assert rights
        assert max(rights) <= driver.execute_script("return document.documentElement.clientWidth;")
        rows = driver.execute_script("return document.querySelectorAll('#ladder tbody tr').length;")
        assert rows == len(config.load(REPO / "params.yaml").experiments)
        _not_blank(driver, tmp_path / f"ladder-{width}.png")
        # The first experiment's checkpoints page: every column within the window too.
        _open(driver, _run_page(ladder_page), width, mobile=False)
        assert driver.execute_script(OVERFLOW) == []
        assert driver.execute_script(
            "return document.querySelectorAll('#checkpoints tbody tr').length;"
        ) == len(
            next(iter(config.load(REPO / "params.yaml").experiments.values())).checkpoint_epochs
        )


def test_on_a_phone_tables_stack_and_figures_keep_their_drawn_size(ladder_page, tmp_path):
    """At 400 px: nothing wider than the screen; each table row a card of labelled values (the
    label is the column's name); each figure at its drawn size (shrunk to 400 px its labels
    would be 2-3 px high) in a box that scrolls sideways, with a link to the PNG."""
    with screenshot.chromium(800, 1000) as driver:
        _open(driver, ladder_page, 400, mobile=True)
        assert driver.execute_script(OVERFLOW) == []
        cells = driver.execute_script(STACKED)
        assert cells
        for display, label, shown, right in cells:
            assert display == "block"
            assert label
            assert shown == f'"{label}"'
            assert right <= 400
        figures = driver.execute_script(
            """return Array.from(document.querySelectorAll('figure'), f => {
                 const img = f.querySelector('img'), frame = img.parentElement;
                 return [img.naturalWidth, img.getBoundingClientRect().width,
                         getComputedStyle(frame).overflowX,
                         f.querySelector('figcaption a').getAttribute('href')];
               });"""
        )
        assert len(figures) == 7
        for natural, drawn, scroll, href in figures:
            assert drawn == natural
            assert scroll == "auto"
            assert (ladder_page.parent / href).is_file(), href
        _not_blank(driver, tmp_path / "ladder-400.png")
        # A checkpoints page on the phone: its table stacks too.
        _open(driver, _run_page(ladder_page), 400, mobile=True)
        assert driver.execute_script(OVERFLOW) == []
        cells = driver.execute_script(STACKED.replace("#ladder td, #picked td", "#checkpoints td"))
        assert cells
        for display, label, shown, right in cells:
            assert display == "block"
            assert shown == f'"{label}"'
            assert right <= 400
        _not_blank(driver, tmp_path / "checkpoints-400.png")
