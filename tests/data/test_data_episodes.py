"""Episode building: config validation, disjoint users, task contents, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.data.episodes import EpisodeConfig, build_episodes
from warmstart.data.synthetic import synthetic_dataset

DATASET = synthetic_dataset(120, 60, interactions_per_user=(8, 45), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"train_ratio": 1.2}, "train_ratio"),
        ({"train_ratio": 0.5}, "sum to 1"),
        ({"support_size": None, "query_size": None}, "support_size or query_size"),
        ({"query_size": 0}, "query_size"),
        ({"min_interactions": 5}, "min_interactions"),
        ({"max_interactions": 12}, "max_interactions"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EpisodeConfig(**kwargs)


def test_presets() -> None:
    melu, tanp = EpisodeConfig.melu(3), EpisodeConfig.tanp(4)
    assert (melu.min_interactions, melu.max_interactions, melu.query_size, melu.support_size) == (
        13,
        100,
        10,
        None,
    )
    assert (tanp.support_size, tanp.query_size, tanp.seed) == (20, None, 4)


def _pairs(split) -> set[tuple[int, int, float]]:
    inter = split.dataset.interactions
    return set(zip(inter["user"], inter["item"], inter["label"].astype(float), strict=True))


def test_tasks_are_real_disjoint_and_sized() -> None:
    split = build_episodes(DATASET, EpisodeConfig.melu(0))
    known = _pairs(split)
    counts = DATASET.interactions.groupby("user").size()
    users = [split.train_users, split.valid_users, split.test_users]
    assert sum(len(u) for u in users) == DATASET.n_users
    assert len(np.unique(np.concatenate(users))) == DATASET.n_users
    for tasks, members in zip((split.train, split.valid, split.test), users, strict=True):
        for t in tasks:
            assert t.user in members
            assert 13 <= counts[t.user] <= 100
            assert len(t.query_items) == 10 and len(t.support_items) == counts[t.user] - 10
            assert not set(t.support_items) & set(t.query_items)
            for item, label in zip(
                np.r_[t.support_items, t.query_items],
                np.r_[t.support_labels, t.query_labels],
                strict=True,
            ):
                assert (t.user, int(item), float(label)) in known
            assert t.support_items.dtype == np.int64 and t.query_labels.dtype == np.float32
    eligible = int(((counts >= 13) & (counts <= 100)).sum())
    assert len(split.train) + len(split.valid) + len(split.test) == eligible


def test_train_interactions_exclude_other_users() -> None:
    split = build_episodes(DATASET, EpisodeConfig.melu(0))
    assert set(split.train_interactions()["user"]) <= set(split.train_users.tolist())


def test_seeding() -> None:
    a = build_episodes(DATASET, EpisodeConfig.melu(1))
    b = build_episodes(DATASET, EpisodeConfig.melu(1))
    c = build_episodes(DATASET, EpisodeConfig.melu(2))
    assert [t.user for t in a.test] == [t.user for t in b.test]
    assert all(
        np.array_equal(x.query_items, y.query_items) for x, y in zip(a.test, b.test, strict=True)
    )
    assert [t.user for t in a.test] != [t.user for t in c.test]


def test_empty_split_is_an_error() -> None:
    tiny = synthetic_dataset(4, 30, interactions_per_user=(20, 25), seed=0)
    with pytest.raises(ValueError, match="valid_ratio"):
        build_episodes(tiny, EpisodeConfig(train_ratio=0.8, valid_ratio=0.1, test_ratio=0.1))


def test_no_eligible_user_is_an_error() -> None:
    with pytest.raises(ValueError, match="min_interactions"):
        build_episodes(DATASET, EpisodeConfig(min_interactions=50, max_interactions=60))


@settings(max_examples=25, deadline=None)
@given(
    support=st.one_of(st.none(), st.integers(1, 8)),
    query=st.integers(1, 8),
    train=st.floats(0.3, 0.8),
    seed=st.integers(0, 1000),
)
def test_property_sizes_and_disjointness(
    support: int | None, query: int, train: float, seed: int
) -> None:
    valid = (1 - train) / 3
    cfg = EpisodeConfig(
        train_ratio=train,
        valid_ratio=valid,
        test_ratio=1 - train - valid,
        min_interactions=(support or 1) + query,
        max_interactions=45,
        support_size=support,
        query_size=query,
        seed=seed,
    )
    split = build_episodes(DATASET, cfg)
    tasks = split.train + split.valid + split.test
    assert len({t.user for t in tasks}) == len(tasks)
    for t in tasks:
        assert len(t.query_items) == query
        if support is not None:
            assert len(t.support_items) == support
        assert not set(t.support_items) & set(t.query_items)
    assert not set(split.train_users) & set(split.test_users)
