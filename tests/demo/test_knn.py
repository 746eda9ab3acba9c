"""Item-kNN candidates: neighbours, popularity discount, user scores, the artifact round trip."""

from __future__ import annotations

import numpy as np
import pytest

from warmstart.coldstart.catalog import IdMap
from warmstart.demo.knn import ItemKNN, cooccurrence_knn, export_knn, load_knn


def _blocks() -> tuple[np.ndarray, np.ndarray]:
    """Users 0-9 rate items 0-2, users 10-19 rate items 3-5; everyone rates item 6."""
    users, items = [], []
    for u in range(20):
        for i in ([0, 1, 2] if u < 10 else [3, 4, 5]) + [6]:
            users.append(u)
            items.append(i)
    return np.asarray(users), np.asarray(items)


def _knn(alpha: float = 0.5) -> ItemKNN:
    users, items = _blocks()
    nb, sim = cooccurrence_knn(users, items, 7, k=6, shrink=0.0, alpha=alpha)
    return ItemKNN(nb, sim, np.bincount(items, minlength=7), IdMap(range(100, 107)))


def test_neighbours_are_co_rated_items_and_never_the_item_itself() -> None:
    users, items = _blocks()
    nb, sim = cooccurrence_knn(users, items, 7, k=3, shrink=0.0)
    assert (nb != np.arange(7)[:, None]).all()
    assert set(nb[0][:2]) == {1, 2} and set(nb[3][:2]) == {4, 5}
    assert (np.diff(sim, axis=1) <= 1e-6).all()  # best first


def test_alpha_discounts_the_popular_neighbour() -> None:
    plain, discounted = _knn(0.5), _knn(0.9)
    # item 6 (rated by everyone) ranks below item 1 for item 0 once popular neighbours pay
    assert (
        discounted.similarity(np.array([0]), np.array([6]))[0, 0]
        < discounted.similarity(np.array([0]), np.array([1]))[0, 0]
    )
    assert (
        plain.similarity(np.array([0]), np.array([6]))[0, 0]
        > discounted.similarity(np.array([0]), np.array([6]))[0, 0]
    )


def test_user_scores_follow_the_rated_block_and_empty_support_is_popularity() -> None:
    knn = _knn(0.7)
    scores = knn.fit_users([(np.array([0, 1]), np.array([5.0, 5.0])), (np.zeros(0, int), [])])
    _, rows = knn.candidates(scores, 3)
    assert rows[0][0] == 2  # the unrated item of the same block comes first
    assert rows[1][0] == 6  # the most rated item, for a user with no ratings
    with pytest.raises(ValueError, match="must lie in"):
        knn.fit_users([(np.array([99]), np.array([5.0]))])


def test_export_load_round_trip(tmp_path) -> None:
    knn = _knn()
    export_knn(tmp_path, knn)
    back = load_knn(tmp_path)
    support = [(np.array([3]), np.array([4.0]))]
    np.testing.assert_allclose(back.fit_users(support), knn.fit_users(support), rtol=1e-6)
    assert back.item_ids == knn.item_ids
