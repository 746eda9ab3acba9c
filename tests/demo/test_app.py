"""The demo server end to end on a tiny build: the page, the demo routes, the serving API, and
every functional check of ``warmstart demo --check`` (its latency goal is reported, never
asserted here: timings belong to the benchmark runs)."""

from __future__ import annotations

import httpx
import pytest

from warmstart.demo.app import create_demo_app
from warmstart.demo.check import run_checks
from warmstart.serving.runner import running


@pytest.fixture(scope="module")
def url(tiny_demo):
    with running(create_demo_app(tiny_demo[1])) as base:
        yield base


def test_every_functional_check_passes(url) -> None:
    checks = run_checks(url)
    failed = [c for c in checks if not c.ok and not c.name.startswith("p99")]
    assert not failed, failed
    assert any(c.name.startswith("p99") for c in checks)


def test_routes_refuse_bad_input_naming_the_field(url) -> None:
    with httpx.Client(base_url=url) as c:
        r = c.post("/v1/demo/explain", json={"rated": ["nope"], "ratings": [5], "items": []})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rated", "0"]
        r = c.post("/v1/demo/burst", json={"seconds": 60})
        assert r.status_code == 422
        r = c.post("/v1/recommend", json={"interactions": [], "k": 3})
        assert float(r.headers["x-latency-ms"]) > 0  # the page shows the server-side time
        stats = c.get("/v1/demo/stats").json()
        assert {"rps", "p50_ms", "p99_ms", "shed_rate", "stages", "tiers"} <= set(stats)
