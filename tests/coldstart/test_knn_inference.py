"""Item-kNN (coldstart/knn_inference.py): scores against a brute-force reference, the popularity
discount, user scores, the config checks, the artifact round trip, imports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from warmstart.coldstart.catalog import IdMap
from warmstart.coldstart.knn_inference import (
    KNN_ROWS,
    TOPK_KNN,
    ItemKNN,
    KNNConfig,
    export_knn,
    item_matrix,
    load_knn,
)


def _blocks() -> tuple[np.ndarray, np.ndarray]:
    """Users 0-9 like items 0-2, users 10-19 like items 3-5; everyone likes item 6."""
    users, items = [], []
    for u in range(20):
        for i in ([0, 1, 2] if u < 10 else [3, 4, 5]) + [6]:
            users.append(u)
            items.append(i)
    return np.asarray(users), np.asarray(items)


def _knn(config: KNNConfig, users: np.ndarray, items: np.ndarray, n: int) -> ItemKNN:
    matrix, counts = item_matrix(users, items, n, config)
    return ItemKNN(matrix, counts, IdMap(range(100, 100 + n)), config, like=4.0)


def _reference(config: KNNConfig, users: np.ndarray, items: np.ndarray, n: int, support) -> list:
    """Item-kNN scores written out loop by loop from the formula (no matrix tricks): the
    candidate's top-k neighbours, the sum over the liked support items."""
    raters = [set(users[items == i]) for i in range(n)]
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            co = len(raters[i] & raters[j])
            ni, nj = max(len(raters[i]), 1), max(len(raters[j]), 1)
            norm = ni ** (1 - config.alpha) * nj**config.alpha
            sim[i, j] = co / (norm + config.shrink)
        sim[i, i] = 0.0
    k = config.neighbours
    kept = np.zeros_like(sim)
    for i in range(n):
        cut = np.sort(sim[i])[::-1][k - 1] if k is not None and k < n else 0.0
        kept[i] = np.where((sim[i] >= cut) & (sim[i] > 0), sim[i], 0.0)
    pop = np.array([len(r) for r in raters], dtype=float)
    out = []
    for rows, labels in support:
        s = config.prior * pop / pop.max()
        for j, label in zip(rows, labels, strict=True):
            s = s + (kept[:, j] if label >= 4.0 else 0.0)
        out.append(s)
    return out


@pytest.mark.parametrize(
    "config",
    [
        TOPK_KNN,
        replace(TOPK_KNN, neighbours=3, alpha=0.6),
        replace(KNN_ROWS["item-kNN (alpha 0.8)"], neighbours=None, shrink=0.0, prior=1e-3),
    ],
    ids=["topk", "alpha0.6-k3", "alpha0.8-all"],
)
def test_scores_equal_the_brute_force_formula(config: KNNConfig) -> None:
    rng = np.random.default_rng(0)
    pairs = {
        (int(u), int(i))
        for u, i in zip(rng.integers(0, 30, 200), rng.integers(0, 12, 200), strict=True)
    }
    users, items = (np.array(v) for v in zip(*sorted(pairs), strict=True))
    support = [([0, 3, 5], [5.0, 2.0, 4.0]), ([7], [1.0]), ([], [])]
    knn = _knn(config, users, items, 12)
    got = knn.fit_users(support)
    for g, want in zip(got, _reference(config, users, items, 12, support), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-9)


def test_neighbours_are_co_rated_items_and_never_the_item_itself() -> None:
    users, items = _blocks()
    knn = _knn(replace(TOPK_KNN, shrink=0.0, neighbours=3), users, items, 7)
    dense = knn.matrix.toarray()
    assert (np.diag(dense) == 0).all()
    assert (dense[0, [1, 2]] > 0).all() and (dense[0, [3, 4, 5]] == 0).all()


def test_alpha_moves_weight_from_the_candidates_popularity_to_the_liked_items() -> None:
    base = replace(TOPK_KNN, shrink=0.0, neighbours=6)
    knn = {a: _knn(replace(base, alpha=a), *_blocks(), 7) for a in (0.1, 0.5, 0.9)}

    def sim(a: float, liked: int, candidate: int) -> float:
        return float(knn[a].similarity(np.array([liked]), np.array([candidate]))[0, 0])

    # liked item 0: candidate 6 (liked by all 20 users) vs candidate 1 (its own block of 10)
    np.testing.assert_allclose(sim(0.5, 0, 6), 10 / np.sqrt(20 * 10), rtol=1e-6)  # cosine
    np.testing.assert_allclose(sim(0.9, 0, 6), 10 / (20**0.1 * 10**0.9), rtol=1e-5)
    assert sim(0.1, 0, 6) < sim(0.5, 0, 6) < sim(0.9, 0, 6) < sim(0.9, 0, 1)
    # liked item 6 (popular): its fans spread over both blocks, discounted more as alpha grows
    assert sim(0.1, 6, 0) > sim(0.5, 6, 0) > sim(0.9, 6, 0)


def test_user_scores_follow_the_rated_block_and_empty_support_is_popularity() -> None:
    knn = _knn(replace(TOPK_KNN, alpha=0.7, shrink=0.0, neighbours=6), *_blocks(), 7)
    empty = (np.zeros(0, int), [])
    disliked = (np.array([0, 1]), np.array([1.0, 2.0]))
    scores = knn.fit_users([(np.array([0, 1]), np.array([5.0, 5.0])), empty, disliked])
    _, rows = knn.candidates(scores, 3)
    assert rows[0][0] == 2  # the unrated item of the same block comes first
    assert rows[1][0] == 6  # the most liked item, for a user with no ratings
    np.testing.assert_array_equal(scores[2], scores[1])  # only likes count
    np.testing.assert_array_equal(knn.predict(scores[0], rows[0]), scores[0][rows[0]])
    with pytest.raises(ValueError, match="must lie in"):
        knn.fit_users([(np.array([99]), np.array([5.0]))])
    with pytest.raises(ValueError, match="labels"):
        knn.fit_users([(np.array([1, 2]), np.array([5.0]))])


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match=r"KNNConfig\.neighbours"):
        KNNConfig(neighbours=0)
    with pytest.raises(ValueError, match=r"KNNConfig\.alpha"):
        KNNConfig(alpha=1.5)


def test_export_load_round_trip(tmp_path) -> None:
    knn = _knn(KNN_ROWS["item-kNN (alpha 0.6)"], *_blocks(), 7)
    export_knn(tmp_path, knn, {"dataset": "blocks"})
    back = load_knn(tmp_path)
    support = [(np.array([3]), np.array([4.0])), (np.array([0, 6]), np.array([5.0, 5.0]))]
    np.testing.assert_allclose(back.fit_users(support), knn.fit_users(support), rtol=1e-6)
    assert back.item_ids == knn.item_ids and back.config == knn.config
    assert back.meta["dataset"] == "blocks"
    (tmp_path / "knn.json").write_text('{"format_version": 1}')
    with pytest.raises(ValueError, match="format_version"):
        load_knn(tmp_path)


def test_import_pulls_no_trainer_or_dataset_loader() -> None:
    code = (
        "import sys, warmstart.coldstart.knn_inference\n"
        "bad = [m for m in ('warmstart.coldstart.training', 'warmstart.data',"
        " 'warmstart.coldstart.topk', 'warmstart.coldstart.baselines') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
