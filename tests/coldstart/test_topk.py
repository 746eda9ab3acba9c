"""Catalogue-level top-k protocol: no leak, equals brute force, baselines behave."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from warmstart.coldstart.baselines import MatrixFactorization, MFConfig
from warmstart.coldstart.topk import (
    TOPK_KEYS,
    ColdNASRanker,
    KNNRanker,
    MFRanker,
    MostPopular,
    PredictorRanker,
    TwoStage,
    evaluate_topk,
    like_threshold,
    popularity_counts,
    popularity_rank,
    support_only,
    targets_of,
    taste_groups,
    user_topk,
)
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import EpisodeSplit, Task


@pytest.fixture(scope="module")
def split() -> EpisodeSplit:
    return synthetic_split(n_users=120, n_items=60, seed=3)


@dataclass
class Cheater:
    """Ranks the task's liked query items first: perfect if it is ever shown them."""

    threshold: float
    n_items: int
    name: str = "cheater"
    seen: list[Task] = field(default_factory=list)

    def fit(self, split: EpisodeSplit) -> None:
        """Nothing to learn."""

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        self.seen.extend(tasks)
        out = np.zeros((len(tasks), self.n_items))
        for i, t in enumerate(tasks):
            out[i, t.query_items[t.query_labels >= self.threshold]] = 1.0
        return out


@dataclass
class Fixed:
    """Returns given scores (rows aligned with the tasks it is asked about)."""

    scores: dict[int, np.ndarray]
    name: str = "fixed"

    def fit(self, split: EpisodeSplit) -> None:
        """Nothing to learn."""

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        return np.stack([self.scores[t.user] for t in tasks])


def test_like_threshold() -> None:
    assert like_threshold((0.0, 1.0)) == 1.0
    assert like_threshold((1.0, 5.0)) == 4.0


def test_cheater_is_perfect_when_it_sees_the_answers_but_the_protocol_hides_them(
    split: EpisodeSplit,
) -> None:
    thr = like_threshold(split.dataset.rating_range)
    n = split.dataset.n_items
    cheater = Cheater(thr, n)
    tasks = [t for t in split.test if targets_of(t, thr).size]
    # shown the whole task, its scores give every metric 1
    for row, t in zip(cheater.score_catalogue(tasks), tasks, strict=True):
        metrics, _ = user_topk(row, t.support_items, targets_of(t, thr))
        assert metrics == [1.0, 1.0, 1.0, 1.0]
    cheater.seen.clear()
    result = evaluate_topk(cheater, split.test, n, thr)
    assert len(cheater.seen) == len(tasks)
    assert all(t.query_items.size == 0 and t.query_labels.size == 0 for t in cheater.seen)
    for seen, t in zip(cheater.seen, tasks, strict=True):
        np.testing.assert_array_equal(seen.support_items, t.support_items)
    assert result.per_user[:, TOPK_KEYS.index("nDCG@10")].mean() < 0.5


def _brute_force(scores: np.ndarray, task: Task, thr: float) -> tuple[list[float], list[int]]:
    """Metrics by sorting Python tuples, one item at a time."""
    support = set(task.support_items.tolist())
    liked = {int(i) for i, y in zip(task.query_items, task.query_labels, strict=True) if y >= thr}
    targets = liked - support
    ranked = sorted(
        (i for i in range(scores.size) if i not in support), key=lambda i: (-scores[i], i)
    )
    hits = [i in targets for i in ranked]
    dcg = sum(1.0 / math.log2(r + 2) for r in range(10) if hits[r])
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(10, len(targets))))
    first = hits.index(True) + 1
    row = [float(any(hits[:10])), dcg / ideal, sum(hits[:50]) / len(targets), 1.0 / first]
    return row, ranked[:10]


def test_full_catalogue_ranking_equals_brute_force(split: EpisodeSplit) -> None:
    thr = like_threshold(split.dataset.rating_range)
    n = split.dataset.n_items
    rng = np.random.default_rng(0)
    # rounded scores: many ties, which must follow the stable rule (lower item id first)
    scores = {t.user: np.round(rng.normal(size=n), 1) for t in split.test}
    result = evaluate_topk(Fixed(scores), split.test, n, thr)
    tasks = [t for t in split.test if targets_of(t, thr).size]
    tops = []
    for i, t in enumerate(tasks):
        row, top = _brute_force(scores[t.user], t, thr)
        np.testing.assert_allclose(result.per_user[i], row, atol=1e-12)
        assert result.top[i].tolist() == top
        tops.append(set(top))
    assert result.lists["coverage@10"] == len(set().union(*tops)) / n
    pairs = [(a, b) for a in range(len(tops)) for b in range(a + 1, len(tops))]
    mean_all = np.mean([len(tops[a] & tops[b]) for a, b in pairs])
    assert result.lists["overlap@10 all"] == pytest.approx(mean_all)


def test_contrasting_pairs_use_dominant_genre(split: EpisodeSplit) -> None:
    thr = like_threshold(split.dataset.rating_range)
    n = split.dataset.n_items
    groups = taste_groups(split.test, split.dataset.items, thr)
    assert groups is not None and groups.shape == (len(split.test),)
    scores = {t.user: np.random.default_rng(t.user).normal(size=n) for t in split.test}
    result = evaluate_topk(Fixed(scores), split.test, n, thr, groups=groups)
    keep = [i for i, t in enumerate(split.test) if targets_of(t, thr).size]
    g = groups[keep]
    tops = [set(r) for r in result.top.tolist()]
    pairs = [(a, b) for a in range(len(g)) for b in range(a + 1, len(g)) if g[a] != g[b]]
    assert result.lists["contrasting pairs"] == len(pairs)
    assert result.lists["overlap@10"] == pytest.approx(
        np.mean([len(tops[a] & tops[b]) for a, b in pairs])
    )


def test_popularity_ranks_by_train_likes_and_gives_everyone_the_same_list(
    split: EpisodeSplit,
) -> None:
    thr = like_threshold(split.dataset.rating_range)
    pop = MostPopular()
    pop.fit(split)
    counts = popularity_counts(split, thr)
    ranks = popularity_rank(counts)
    assert ranks[np.argmax(counts)] == 1.0
    result = evaluate_topk(pop, split.test, split.dataset.n_items, thr, pop_rank=ranks)
    # every list is the 10 most liked items outside the user's support set
    tasks = [t for t in split.test if targets_of(t, thr).size]
    for top, t in zip(result.top, tasks, strict=True):
        rest = [i for i in np.argsort(-counts, kind="stable") if i not in set(t.support_items)]
        assert top.tolist() == rest[:10]
    assert result.lists["pop rank@10"] == pytest.approx(ranks[result.top].mean())


def test_item_knn_and_mf_beat_random_and_mf_matches_its_predictions(split: EpisodeSplit) -> None:
    thr = like_threshold(split.dataset.rating_range)
    n = split.dataset.n_items
    rng = np.random.default_rng(1)
    random = evaluate_topk(
        Fixed({t.user: rng.normal(size=n) for t in split.test}), split.test, n, thr
    )
    mf = MatrixFactorization(MFConfig(dims=(4,), l2s=(5.0,), ridges=(5.0,), sweeps=5))
    ranker = MFRanker(mf)
    ranker.fit(split)
    # inside the rating range the catalogue scores are the baseline's own predictions
    scores = ranker.score_catalogue([support_only(t) for t in split.test[:5]])
    preds = mf.predict(split.test[:5])
    for s, p, t in zip(scores, preds, split.test[:5], strict=True):
        np.testing.assert_allclose(np.clip(s[t.query_items], 1, 5), p, rtol=1e-6)
    knn = KNNRanker()
    knn.fit(split)
    for r in (ranker, knn):
        res = evaluate_topk(r, split.test, n, thr)
        assert res.per_user[:, 0].mean() > random.per_user[:, 0].mean()


def test_predictor_ranker_scores_every_item_with_the_predictor(split: EpisodeSplit) -> None:
    mf = MatrixFactorization(MFConfig(dims=(4,), l2s=(5.0,), ridges=(5.0,), sweeps=5))
    ranker = PredictorRanker(mf, chunk=7)
    ranker.fit(split)
    scores = ranker.score_catalogue([support_only(t) for t in split.test])
    assert scores.shape == (len(split.test), split.dataset.n_items)
    for s, p, t in zip(scores, mf.predict(split.test), split.test, strict=True):
        np.testing.assert_allclose(s[t.query_items], p)


def test_two_stage_reorders_only_the_first_stage_candidates(split: EpisodeSplit) -> None:
    n = split.dataset.n_items
    rng = np.random.default_rng(2)
    first = {t.user: rng.normal(size=n) for t in split.test}
    second = {t.user: rng.normal(size=n) for t in split.test}
    two = TwoStage(Fixed(first, "a"), Fixed(second, "b"), n_candidates=15)
    tasks = [support_only(t) for t in split.test[:4]]
    out = two.score_catalogue(tasks)
    for row, t in zip(out, tasks, strict=True):
        f = first[t.user].copy()
        f[t.support_items] = -np.inf
        cand = sorted(range(n), key=lambda i: (-f[i], i))[:15]
        expect = sorted(cand, key=lambda i: (-second[t.user][i], i))
        assert [int(i) for i in np.argsort(-row, kind="stable")[:15]] == expect


def test_coldnas_ranker_scores_with_the_model_logits(split: EpisodeSplit) -> None:
    from warmstart.coldstart.training import PRESETS, FixedStructurePredictor

    preset = PRESETS["tiny"]
    film = FixedStructurePredictor(None, preset.model, preset.train)
    film.fit(split)
    ranker = ColdNASRanker(film, fitted=True)
    tasks = split.test[:6]
    logits = ranker.score_catalogue([support_only(t) for t in tasks])
    preds = film.predict(tasks)
    low, high = split.dataset.rating_range
    for row, p, t in zip(logits, preds, tasks, strict=True):
        np.testing.assert_allclose(
            low + (high - low) / (1 + np.exp(-row[t.query_items])), p, rtol=1e-5
        )
