"""Counts of the real datasets under ``$WARMSTART_DATA`` against the data README."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from warmstart.data import coldstart_split, load_dataset
from warmstart.data.episodes import load_official_lastfm
from warmstart.data.retrieval import load_scifact

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir() -> Path:
    env = os.environ.get("WARMSTART_DATA")
    if not env or not Path(env).is_dir():
        pytest.skip("WARMSTART_DATA is unset or missing")
    return Path(env)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One parse of each dataset for the whole module."""
    return tmp_path_factory.mktemp("cache")


# Expected counts are the ones stated in the data README (shared/data/README.md).
@pytest.mark.parametrize(
    ("name", "ratings", "users", "items"),
    [
        ("movielens-1m", 1_000_209, 6_040, 3_706),
        ("movielens-100k", 100_000, 943, 1_682),
        ("lastfm-2k", 92_834, 1_892, 17_632),
        ("lastfm-coldnas", 42_346, 1_872, 3_846),
    ],
)
def test_recommendation_counts(
    data_dir: Path, name: str, ratings: int, users: int, items: int
) -> None:
    ds = load_dataset(name, data_dir)
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (ratings, users, items)


def test_official_lastfm_tasks(data_dir: Path) -> None:
    split = load_official_lastfm(data_dir)
    assert (len(split.train), len(split.valid), len(split.test)) == (248, 35, 66)
    assert (len(split.train_users), len(split.valid_users), len(split.test_users)) == (
        1_310,
        187,
        375,
    )
    tasks = split.train + split.valid + split.test
    assert {len(t.support_items) for t in tasks} == {20}
    query = [len(t.query_items) for t in tasks]
    assert (min(query), max(query)) == (10, 36)


def test_scifact_counts(data_dir: Path) -> None:
    coll = load_scifact(data_dir)
    assert len(coll) == 5_183
    assert (len(coll.qrels["train"]), len(coll.qrels["test"])) == (809, 300)
    assert sum(len(d) for d in coll.qrels["train"].values()) == 919
    assert sum(len(d) for d in coll.qrels["test"].values()) == 339
    assert len(coll.queries) == 1_109 and len(coll.unlabeled_queries) == 300


def test_ml1m_episodes_are_fast_and_valid(data_dir: Path, cache_dir: Path) -> None:
    load_dataset("movielens-1m", data_dir, cache_dir)  # fill the cache (if not yet)
    start = time.perf_counter()
    split = coldstart_split("movielens-1m", data_dir, seed=0, protocol="melu", cache_dir=cache_dir)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0  # budget 2 s on an idle machine; slack for shared CI cores
    counts = split.dataset.interactions.groupby("user").size()
    eligible = int(((counts >= 13) & (counts <= 100)).sum())
    assert len(split.train) + len(split.valid) + len(split.test) == eligible
    assert all(len(t.query_items) == 10 for t in split.test)
    assert not np.intersect1d(split.train_users, split.test_users).size
