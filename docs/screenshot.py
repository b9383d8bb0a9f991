"""docs/report.png, the README's picture: a screenshot of the demo's own report, so it always
shows what `make demo` makes (`make screenshot` runs the demo first if needed).

Headless Chromium through Selenium (Debian's chromium and chromium-driver: `make system-deps`
as root; selenium is a dev dependency). tests/test_report_browser.py drives the same browser.

    python docs/screenshot.py results/report/index.html docs/report.png
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# No background traffic: this machine's network is closed, and nothing should be downloaded.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def missing() -> list[str]:
    """What is not installed for a headless Chromium, as install hints."""
    import importlib.util

    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if importlib.util.find_spec("selenium") is None:
        absent.append("the selenium package")
    return absent


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium (a Selenium driver) with a fresh profile, closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: Selenium Manager never runs, nothing is downloaded.
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 1000) -> None:
    """The top of `page` (the headline and the ladder table) as `png`."""
    if absent := missing():
        raise SystemExit(f"missing {', '.join(absent)}: run `make system-deps` as root")
    with chromium(width, height) as driver:
        driver.get(page.resolve().as_uri())
        png.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png)):
            raise SystemExit(f"{png}: the browser could not write the screenshot")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path, help="results/report/index.html")
    p.add_argument("png", type=Path, help="docs/report.png")
    args = p.parse_args(argv)
    if not args.page.is_file():
        raise SystemExit(f"{args.page}: not found; run `make demo` first")
    screenshot(args.page, args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
