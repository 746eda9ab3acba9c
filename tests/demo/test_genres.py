"""On the real ML-1M demo: a new user who rates five horror films 5 stars and one who rates five
children's animations 5 stars get top-10 lists that follow their tastes (genre shares), through
the running server. Uses the cached demo build (``runs/demo``, what ``make demo`` writes; built
here, without the SciFact index, when missing: about a minute of training on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from warmstart.demo.select import personal

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_url():
    data = Path(os.environ.get("WARMSTART_DATA", ROOT.parent / "shared" / "data"))
    if not (data / "movielens-1m").is_dir():
        pytest.skip(f"MovieLens-1M not found under {data} (set WARMSTART_DATA)")
    import torch

    from warmstart.demo.app import create_demo_app
    from warmstart.demo.build import build_demo
    from warmstart.demo.preset import PRESETS
    from warmstart.serving.runner import running

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = Path(os.environ.get("WARMSTART_DEMO_DIR", ROOT / "runs" / "demo"))
        cache = Path.home() / ".cache" / "warmstart"
        artifacts = build_demo(PRESETS["quick"], data, out, cache, search=False, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    with running(create_demo_app(artifacts)) as url:
        yield url, artifacts


def test_horror_fan_and_animation_fan_get_their_genres(demo_url) -> None:
    from warmstart.demo.check import taste_report

    url, artifacts = demo_url
    with httpx.Client(base_url=url, timeout=30) as client:
        catalog = client.get("/v1/demo/catalog").json()["items"]
        report = taste_report(client, catalog)
    horror_fan, kids_fan = report["horror_fan"], report["kids_fan"]
    assert horror_fan["horror"] > horror_fan["kids"], report
    assert kids_fan["kids"] > kids_fan["horror"], report
    assert horror_fan["horror"] > kids_fan["horror"] and kids_fan["kids"] > horror_fan["kids"]
    assert report["overlap"] <= artifacts.manifest["preset"]["max_overlap"], report
    assert personal(report, artifacts.manifest["preset"]["max_overlap"])
