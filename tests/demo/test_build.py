"""The demo build on tiny data: every part is written, a second build reuses them, and the
served models answer through the serving pipeline's interface."""

from __future__ import annotations

import json

import numpy as np

from fixtures.demo import build_tiny_demo
from warmstart.demo.build import load_manifest
from warmstart.demo.served import load_served


def test_build_then_cached_rebuild(tiny_demo) -> None:
    tmp_path, first = tiny_demo
    m = first.manifest
    assert set(m["parts"]) == {"coldnas", "mf", "knn", "search"}
    assert m["served"]["table"] and m["served"]["reason"]
    assert (first.coldnas / "items.json").is_file()  # titles, years, genres for the page
    movies = json.loads(first.catalog.read_text())["items"]
    assert movies and {"id", "title", "year", "genres", "n"} <= set(movies[0])
    stamp = (first.root / m["parts"]["coldnas"] / "model" / "model.safetensors").stat().st_mtime
    again = build_tiny_demo(tmp_path)
    assert again.manifest["served"]["name"] == m["served"]["name"]
    assert not again.manifest["timings_s"]  # nothing retrained
    assert (again.coldnas / "model.safetensors").stat().st_mtime == stamp
    assert load_manifest(first.root)["parts"] == m["parts"]
    # a build that skips the index still serves the one already built (the genre test's)
    assert build_tiny_demo(tmp_path, search=False).search == first.search
    assert "search" in load_manifest(first.root)["parts"]


def test_served_models_rank_unrated_items(tiny_demo) -> None:
    _, a = tiny_demo
    models = load_served(a.root, a.manifest)
    rated = np.array([0, 1, 2])
    support = [(rated, np.array([5.0, 4.0, 1.0], np.float32))]
    states = models.ranker.adapt_many(support)
    users = models.candidates.fit_users(support)
    _, cands = models.candidates.candidates(users, 10)
    scores = models.ranker.score_many(states, [cands[0]])[0]
    assert scores.shape == (10,) and np.isfinite(scores).all()
