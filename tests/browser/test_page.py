"""The demo page in a real browser: rating, search, dashboard, load burst."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.browser
TIMEOUT_MS = 45_000


def _rec_ids(page) -> list[str]:
    return page.eval_on_selector_all("#recs li[data-id]", "els => els.map(e => e.dataset.id)")


@pytest.mark.phone
def test_rate_movies_with_the_keyboard_and_recommendations_change(page, demo_url) -> None:
    page.goto(demo_url + "/")
    page.wait_for_selector("#recs li[data-id]", timeout=TIMEOUT_MS)
    before = _rec_ids(page)
    assert page.locator("#rated-empty").is_visible()
    # pick the first recommendation by title with the keyboard, rate it 5 stars
    title = page.locator("#recs li[data-id] strong").first.inner_text()
    page.focus("#movie-q")
    page.keyboard.type(title)
    page.wait_for_selector("#movie-list [role=option][aria-selected=true]", timeout=TIMEOUT_MS)
    page.keyboard.press("Enter")
    # focus is on the first star of the picked movie: Tab to the fifth, Enter
    for _ in range(4):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "5 stars"
    page.keyboard.press("Enter")
    page.wait_for_function(
        "before => { const ids = [...document.querySelectorAll('#recs li[data-id]')].map(e => e.dataset.id);"
        " return ids.length > 0 && ids.join() !== before.join(); }",
        arg=before,
        timeout=TIMEOUT_MS,
    )
    after = _rec_ids(page)
    assert before[0] not in after  # a rated movie is never recommended
    assert "ms" in page.locator("#rec-latency").inner_text()
    assert page.locator("#rated li[data-stars='5']").count() == 1
    # the typed title picked that very movie (exact titles come first in the typeahead)
    assert page.locator("#rated li[data-stars='5']").get_attribute("data-id") == before[0]
    # a second movie rated 1 star changes them again; reset empties the ratings
    page.fill("#movie-q", "")
    page.keyboard.type(page.locator("#recs li[data-id] strong").nth(1).inner_text())
    page.wait_for_selector("#movie-list [role=option][aria-selected=true]", timeout=TIMEOUT_MS)
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")  # the first star: 1 star
    page.wait_for_function(
        "after => [...document.querySelectorAll('#recs li[data-id]')].map(e => e.dataset.id).join() !== after.join()",
        arg=after,
        timeout=TIMEOUT_MS,
    )
    page.screenshot(
        path=str(__import__("pathlib").Path(__file__).parent / "screenshots" / "rated-phone.png")
    )
    page.click("#reset")
    page.wait_for_selector("#rated-empty", state="visible", timeout=TIMEOUT_MS)


def test_search_shows_ranked_abstracts_and_explains_rerank(page, demo_url) -> None:
    page.goto(demo_url + "/#search")
    page.wait_for_selector("#panel-search:not([hidden])", timeout=TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#rerank-why').textContent.length > 0")
    assert page.locator("#rerank").is_disabled()
    assert "cross-encoder" in page.locator("#rerank-why").inner_text()
    page.fill("#search-q", "protein cell response")
    page.press("#search-q", "Enter")
    page.wait_for_selector("#hits li[data-id]", timeout=TIMEOUT_MS)
    assert page.locator("#hits li[data-id]").count() == 10
    assert "ms" in page.locator("#search-meta").inner_text()
    scores = [float(s) for s in page.locator("#hits .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)


def test_dashboard_numbers_update(page, demo_url) -> None:
    page.goto(demo_url + "/#dash")
    page.wait_for_function(
        "document.querySelector('#m-rps').textContent !== '–'", timeout=TIMEOUT_MS
    )
    with httpx.Client(base_url=demo_url) as client:
        for _ in range(30):
            client.post("/v1/recommend", json={"interactions": [], "k": 5})
        page.wait_for_function(
            "Number(document.querySelector('#m-rps').textContent) > 0"
            " && document.querySelector('#m-p50').textContent !== '–'",
            timeout=TIMEOUT_MS,
        )
    assert page.locator("#stages tbody tr").count() >= 4  # lookup, adapt, candidates, rank, ...
    assert page.locator("#tiers tbody tr").count() >= 1
    # idle again: requests/s falls back to 0 within a few ticks
    page.wait_for_function(
        "document.querySelector('#m-rps').textContent === '0'", timeout=TIMEOUT_MS
    )


def test_burst_moves_the_shed_rate(page, demo_url) -> None:
    page.goto(demo_url + "/#dash")
    page.wait_for_function(
        "document.querySelector('#m-shed').textContent === '0.0%'", timeout=TIMEOUT_MS
    )
    # a 1 ms deadline: the admission controller must shed once queues form
    page.evaluate("window.burstOptions = {deadline_ms: 1, seconds: 2, rate: 2000}")
    page.click("#burst")
    page.wait_for_function(
        "parseFloat(document.querySelector('#m-shed').textContent) > 0", timeout=TIMEOUT_MS
    )
    page.wait_for_function(
        "document.querySelector('#burst-status').textContent.startsWith('Burst done')",
        timeout=60_000,
    )
    status = page.locator("#burst-status").inner_text()
    shed = int(status.split(" shed")[0].rsplit(" ", 1)[-1])
    assert shed > 0, status
