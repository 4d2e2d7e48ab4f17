"""A headless Chromium for the HTML report's tests and its screenshot, through Playwright's
Python package pointed at the system's browser (nothing is downloaded).

    python tests/helpers/browser.py REPORT.html OUT.png   # the screenshot in docs/img
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Where to look, in order; TAICHI_LIMITS_CHROMIUM names another.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> tuple[str | None, str]:
    """(path of a Chromium, "") or (None, why there is none)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, (
            "the Python package 'playwright' is not installed (pip install "
            "'.[test]'; no browser download is needed)"
        )
    named = os.environ.get("TAICHI_LIMITS_CHROMIUM")
    if named:
        return (
            (named, "")
            if os.access(named, os.X_OK)
            else (None, f"TAICHI_LIMITS_CHROMIUM={named} is not an executable")
        )
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found, ""
    return None, (
        "no Chromium found (" + ", ".join(CANDIDATES) + "); install one, e.g. "
        "`apt-get install -y chromium`, or set TAICHI_LIMITS_CHROMIUM"
    )


@contextmanager
def browser(executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # As root (CI containers) Chromium refuses to start with its sandbox on.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=args)
        try:
            yield launched
        finally:
            launched.close()


def screenshot(page_path: str, out: str, width: int = 1280) -> None:
    executable, why = find_browser()
    if executable is None:
        raise SystemExit(why)
    with browser(executable) as chromium:
        page = chromium.new_page(viewport={"width": width, "height": 900})
        page.goto("file://" + os.path.abspath(page_path))
        page.locator("#tests button.show").first.click()
        page.screenshot(path=out, full_page=True)


if __name__ == "__main__":
    screenshot(sys.argv[1], sys.argv[2])
