"""One shared recommender, 8 threads, default thread settings: exactly the sequential answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from warmstart.coldstart.inference import ColdStartRecommender
from warmstart.coldstart.model import ColdNAS, ColdNASConfig
from warmstart.coldstart.structure import Structure
from warmstart.coldstart.training import TrainConfig, train_structure
from warmstart.data.synthetic import synthetic_split

THREADS = 8


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Overrides the package's one-thread fixture: this test runs with torch's default threads."""
    yield


def _requests(rec: ColdStartRecommender, seed: int) -> tuple[list, list, list]:
    """A micro-batch: mixed support sizes (one empty), users, own candidate lists."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 12, size=6)
    sizes[seed % 6] = 0
    supports = [
        (rng.choice(rec.n_items, size=int(s), replace=False), rng.integers(1, 6, size=int(s)))
        for s in sizes
    ]
    users = [int(u) if u % 3 else None for u in rng.integers(0, rec.n_users, size=6)]
    candidates = [
        rng.choice(rec.n_items, size=int(n), replace=False) for n in rng.integers(1, 40, 6)
    ]
    return supports, users, candidates


def _answer(rec: ColdStartRecommender, request: tuple[list, list, list]) -> list[np.ndarray]:
    supports, users, candidates = request
    states = rec.adapt_many(supports, users)
    return [s.params for s in states] + rec.score_many(states, candidates)


@pytest.fixture(scope="module")
def model() -> ColdNAS:
    split = synthetic_split(n_users=60, n_items=40, interactions_per_user=(15, 25), seed=4)
    config = ColdNASConfig(
        embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=16, user_features="on"
    )
    trained, _ = train_structure(
        split, Structure.parse("mul+add|add|max|-"), config, TrainConfig(epochs=1, lr=1e-2)
    )
    return trained


def test_threads_give_exactly_the_sequential_results(model: ColdNAS) -> None:
    threads_before = torch.get_num_threads()
    rec = ColdStartRecommender(model)
    requests = [_requests(rec, seed) for seed in range(4 * THREADS)]
    expected = [_answer(rec, r) for r in requests]
    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(lambda r: _answer(rec, r), requests))
    for want, have in zip(expected, got, strict=True):
        for a, b in zip(want, have, strict=True):
            np.testing.assert_array_equal(a, b)
    assert torch.get_num_threads() == threads_before  # no call changed the process's setting


def test_one_objects_thread_policy_does_not_leak(model: ColdNAS) -> None:
    """A recommender with ``threads=1`` limits its own calls only: a thread using another
    recommender meanwhile keeps the process's count, and the answers do not change."""
    default = torch.get_num_threads()
    limited, plain = ColdStartRecommender(model, threads=1), ColdStartRecommender(model)
    requests = [_requests(plain, seed) for seed in range(6)]
    expected = [_answer(plain, r) for r in requests]
    seen: list[int] = []
    started = threading.Barrier(2)

    def busy() -> list[list[np.ndarray]]:
        started.wait()
        return [_answer(limited, r) for r in requests * 20]

    def observe() -> list[list[np.ndarray]]:
        started.wait()
        out = []
        for r in requests * 20:
            seen.append(torch.get_num_threads())
            out.append(_answer(plain, r))
        return out

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(busy), pool.submit(observe)
        answers = [*a.result(), *b.result()]
    assert set(seen) == {default}
    for want, have in zip(expected * 40, answers, strict=True):
        for x, y in zip(want, have, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert torch.get_num_threads() == default
