"""Headless Chromium for the browser tests and the README screenshot: one launch, one place.

Playwright drives Debian's ``chromium`` package (``executable_path``; ``playwright install``
is never run, nothing is downloaded). ``WARMSTART_CHROMIUM`` points at another binary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")

CHROMIUM_FLAGS = (
    "--no-sandbox",  # CI containers run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",  # no GPU on the build machines; avoids the GPU process and its probing
    "--disable-background-networking",  # offline: no update, safe-browsing or metrics calls
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",  # no first-run dialogs or profile import
)


def chromium_path() -> Path:
    """The Chromium binary: ``$WARMSTART_CHROMIUM`` or Debian's ``/usr/bin/chromium``."""
    return Path(os.environ.get("WARMSTART_CHROMIUM", str(DEFAULT_CHROMIUM)))


def missing_reason() -> str | None:
    """Why a headless Chromium cannot be driven here (None when it can), with the fix."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright missing: `pip install playwright` (the dev extra; never `playwright install`)"
    path = chromium_path()
    if not path.is_file():
        return (
            f"{path} missing: `apt-get install -y chromium` (make setup does it as root), "
            "or point WARMSTART_CHROMIUM at a Chromium binary"
        )
    return None


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium ``Browser`` from a started ``sync_playwright()`` context."""
    return playwright.chromium.launch(
        executable_path=str(chromium_path()), headless=True, args=list(CHROMIUM_FLAGS)
    )
