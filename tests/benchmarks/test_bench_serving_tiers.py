"""The tiers/scale helpers of benchmarks/bench_serving.py: bounded Zipf draws, the cached LMDB
catalogue (built once, resumed, reused) and the scale run's hit-rate accounting."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
bench = pytest.importorskip("bench_serving")


def test_zipf_ranks_are_bounded_and_heavy_headed():
    ranks = bench.zipf_ranks(1000, 50_000, 1.1, np.random.default_rng(0))
    assert ranks.min() >= 0 and ranks.max() <= 999
    counts = np.bincount(ranks, minlength=1000)
    assert counts[0] > counts[1] > counts[10] > counts[500]
    # bounded Zipf: rank 999 gets about its share, not the unbounded tail piled onto it
    assert counts[999] < 5 * max(1, counts[990:999].mean())


def test_zipf_users_is_seeded():
    a, b = bench.zipf_users(100, 500, 1.1, seed=3), bench.zipf_users(100, 500, 1.1, seed=3)
    assert np.array_equal(a, b) and a.max() < 100


def test_scale_catalogue_is_built_once_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SCALE_BLOCK", 300)
    path, build_s = bench.scale_catalogue(tmp_path, 1000, 4)
    assert build_s > 0 and (path / "complete.json").is_file()
    from warmstart.serving.store import LMDBTier

    tier = LMDBTier(path)
    first = tier.get_many([b"i0", b"i999"])
    assert len(tier) == 1000 and all(v is not None and len(v) == 16 for v in first)
    tier.close()
    assert bench.scale_catalogue(tmp_path, 1000, 4) == (path, 0.0)  # cached
    # an interrupted build (no completion marker) resumes and writes the same rows
    (path / "complete.json").unlink()
    bench.scale_catalogue(tmp_path, 1000, 4)
    tier = LMDBTier(path)
    assert tier.get_many([b"i0", b"i999"]) == first
    tier.close()


def test_scale_reports_hit_rates_per_tier(tmp_path):
    out = bench.scale(tmp_path, 2000, 4, requests=40, per_request=50)
    assert out["items"] == 2000 and out["memory_rows"] <= 0.05 * 2000 + 1
    assert set(out["store"]) == {"memory", "lmdb"}
    assert out["store"]["lmdb"]["hit_rate"] == 1.0  # every key is in LMDB
    assert 0 < out["store"]["memory"]["hit_rate"] < 1
    assert out["p99_ms"] >= out["p50_ms"] > 0


def test_tier_delta_counts_one_phase():
    before = {"hits": 5, "misses": 5, "writes": 1, "errors": 0, "hit_rate": 0.5}
    after = {"hits": 14, "misses": 6, "writes": 3, "errors": 0, "hit_rate": 0.7}
    d = bench._delta(after, before)
    assert (d["hits"], d["misses"], d["writes"]) == (9, 1, 2) and d["hit_rate"] == 0.9
