"""The one headless-Chromium launch (demo/browser.py): path override and the skip reason."""

from __future__ import annotations

from pathlib import Path

from warmstart.demo import browser


def test_chromium_path_honours_the_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WARMSTART_CHROMIUM", raising=False)
    assert browser.chromium_path() == browser.DEFAULT_CHROMIUM
    monkeypatch.setenv("WARMSTART_CHROMIUM", str(tmp_path / "nope"))
    assert browser.chromium_path() == tmp_path / "nope"
    reason = str(browser.missing_reason())  # Playwright is checked first
    assert str(tmp_path / "nope") in reason or "Playwright missing" in reason


def test_flags_keep_chromium_offline_and_sandbox_free() -> None:
    assert "--no-sandbox" in browser.CHROMIUM_FLAGS
    assert "--disable-background-networking" in browser.CHROMIUM_FLAGS
