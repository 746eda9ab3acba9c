"""The README screenshot: the demo page after a new user rated a few movies.

    python experiments/demo_screenshot.py runs/demo docs/demo.png

Starts the demo server over a built demo folder, drives Debian's chromium with Playwright
(the browser tests' launch, ``warmstart.demo.browser``) and saves a PNG of the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from warmstart.demo.app import create_demo_app
from warmstart.demo.browser import launch_chromium, missing_reason
from warmstart.demo.build import artifacts_of, load_manifest
from warmstart.serving.runner import running

RATINGS = (("Toy Story", 5), ("Aladdin", 5), ("Lion King", 4), ("Alien", 2))


def main(root: Path, out: Path) -> None:
    reason = missing_reason()
    if reason:
        raise SystemExit(reason)
    manifest = load_manifest(root)
    if manifest is None:
        raise SystemExit(f"{root}: no demo.json (run `warmstart demo --check --out {root}`)")
    with running(create_demo_app(artifacts_of(root, manifest))) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("#recs li[data-id]")
        for title, stars in RATINGS:
            page.fill("#movie-q", title)
            page.wait_for_selector("#movie-list [role=option][aria-selected=true]")
            page.keyboard.press("Enter")
            page.locator("#rated li").last.locator(f".stars button >> nth={stars - 1}").click()
            page.wait_for_timeout(400)
        page.wait_for_selector("#recs .why")
        page.screenshot(path=str(out))
        browser.close()
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
