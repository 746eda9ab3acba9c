"""Browser tests: Playwright drives Debian's chromium (headless, no browser download) against
the demo server over a tiny demo build. They skip, saying how to enable them, when Playwright
or /usr/bin/chromium is missing. Screenshots go to tests/browser/screenshots/ (gitignored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from warmstart.demo.browser import launch_chromium, missing_reason

SHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="module")
def demo_url(tiny_demo) -> Iterator[str]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    from warmstart.demo.app import create_demo_app
    from warmstart.serving.runner import running

    with running(create_demo_app(tiny_demo[1])) as url:
        yield url


@pytest.fixture(scope="module")
def browser(demo_url: str) -> Iterator[object]:
    # module scope: Playwright's sync API keeps an event loop running on the main thread until
    # it stops, and later tests call asyncio.run()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture()
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    phone = request.node.get_closest_marker("phone") is not None
    size = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
    context = browser.new_context(viewport=size)  # type: ignore[attr-defined]
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    SHOTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
