"""Offline MPP as a catalogue ranker: full-catalogue scores from the support set only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from warmstart.coldstart.compare import with_item_ids
from warmstart.coldstart.mpp import PartitionRule
from warmstart.coldstart.mpp_compare import CompareConfig
from warmstart.coldstart.mpp_topk import MPPRanker, documented_config
from warmstart.coldstart.mpp_train import MetaConfig, click_split, predict_adapted
from warmstart.coldstart.topk import TOPK_KEYS, evaluate_topk, like_threshold, targets_of
from warmstart.data.synthetic import synthetic_split
from warmstart.data.types import EpisodeSplit, Task


@dataclass
class Spy(MPPRanker):
    """Records the tasks the protocol hands to the ranker."""

    seen: list[Task] = field(default_factory=list)

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        self.seen.extend(tasks)
        return super().score_catalogue(tasks)


@pytest.fixture(scope="module")
def fitted() -> tuple[EpisodeSplit, Spy]:
    split = synthetic_split(n_users=120, n_items=60, seed=3)
    tiny = CompareConfig(
        meta=MetaConfig(steps=4, eval_every=2, batch_size=8), rule=PartitionRule.parse("film")
    )
    ranker = Spy(config=tiny, seed=0, chunk=3)
    ranker.fit(split)
    return split, ranker


def test_documented_settings_are_those_of_the_mpp_tables() -> None:
    config = documented_config()
    assert (config.meta.lr, config.meta.steps, config.meta.batch_size) == (1e-2, 300, 32)
    assert config.rule == PartitionRule.parse("film")


def test_mpp_ranks_the_whole_catalogue_and_never_sees_the_query(
    fitted: tuple[EpisodeSplit, Spy],
) -> None:
    split, ranker = fitted
    n, thr = split.dataset.n_items, like_threshold(split.dataset.rating_range)
    ranker.seen.clear()
    result = evaluate_topk(ranker, split.test, n, thr)
    kept = [t for t in split.test if targets_of(t, thr).size]
    assert len(ranker.seen) == len(kept) == len(result.users)
    assert all(t.query_items.size == 0 and t.query_labels.size == 0 for t in ranker.seen)
    for seen, t in zip(ranker.seen, kept, strict=True):
        np.testing.assert_array_equal(seen.support_items, t.support_items)
    assert result.top.shape == (len(kept), 10)
    assert np.isfinite(result.per_user[:, TOPK_KEYS.index("HR@10")]).all()


def test_scores_do_not_depend_on_the_query(fitted: tuple[EpisodeSplit, Spy]) -> None:
    split, ranker = fitted
    tasks = split.test[:7]
    rng = np.random.default_rng(0)
    lying = [replace(t, query_labels=rng.permutation(t.query_labels) + 1.0) for t in tasks]
    scores = ranker.score_catalogue(tasks)
    assert scores.shape == (len(tasks), split.dataset.n_items)
    np.testing.assert_array_equal(scores, ranker.score_catalogue(lying))


def test_catalogue_logits_are_the_offline_mpp_condition(fitted: tuple[EpisodeSplit, Spy]) -> None:
    """At the query items, the ranker's scores are ``mpp compare``'s offline MPP predictions."""
    split, ranker = fitted
    assert ranker.learner_ is not None
    clicked = click_split(with_item_ids(split)).test[:6]
    probs = predict_adapted(ranker.learner_, clicked)
    scores = ranker.score_catalogue(split.test[:6])
    for row, p, t in zip(scores, probs, clicked, strict=True):
        np.testing.assert_allclose(1 / (1 + np.exp(-row[t.query_items])), p, atol=1e-5)
