"""Synthetic generators: shapes, determinism, and the signal they are meant to carry."""

from __future__ import annotations

import numpy as np
import pytest

from warmstart.data.episodes import EpisodeConfig
from warmstart.data.synthetic import synthetic_collection, synthetic_dataset, synthetic_split
from warmstart.data.types import PAD


def test_dataset_shapes_and_ranges() -> None:
    ds = synthetic_dataset(50, 30, interactions_per_user=(5, 12), seed=1)
    inter = ds.interactions
    assert ds.n_users == 50 and ds.n_items == 30
    counts = inter.groupby("user").size()
    assert counts.min() >= 5 and counts.max() <= 12 and len(counts) == 50
    assert not inter.duplicated(["user", "item"]).any()
    assert inter["item"].between(0, 29).all()
    assert set(np.unique(inter["label"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter["label"].dtype == np.float32 and inter["user"].dtype == np.int64
    for table in (ds.users, ds.items):
        for f in table.fields:
            assert f.index.shape[0] == len(table)
            assert (f.index[:, 0] != PAD).all()  # every row has at least one value


def test_implicit_and_featureless() -> None:
    ds = synthetic_dataset(40, 20, implicit=True, with_features=False, interactions_per_user=(3, 8))
    assert ds.rating_range == (0.0, 1.0)
    assert set(np.unique(ds.interactions["label"])) == {0.0, 1.0}
    assert [f.name for f in ds.users.fields] == ["id"] == [f.name for f in ds.items.fields]


def test_seed_determines_data() -> None:
    a, b, c = synthetic_dataset(seed=3), synthetic_dataset(seed=3), synthetic_dataset(seed=4)
    assert a.interactions.equals(b.interactions)
    assert not a.interactions.equals(c.interactions)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_users": 0}, {"interactions_per_user": (10, 500)}, {"interactions_per_user": (0, 3)}],
)
def test_dataset_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"n_users|interactions_per_user"):
        synthetic_dataset(**kwargs)


def _ridge_vs_popularity(implicit: bool) -> tuple[float, float]:
    """Test-query MSE of item means vs a per-user ridge on SVD item factors from train users."""
    split = synthetic_split(implicit=implicit, seed=0)
    train = split.train_interactions()
    n_items = split.dataset.n_items
    item_mean = np.full(n_items, train["label"].mean())
    means = train.groupby("item")["label"].mean()
    item_mean[means.index.to_numpy()] = means.to_numpy()
    matrix = np.zeros((split.dataset.n_users, n_items))
    matrix[train["user"], train["item"]] = train["label"] - item_mean[train["item"]]
    factors = np.linalg.svd(matrix, full_matrices=False)[2][:6].T  # (I, 6)
    pop_err, ridge_err = [], []
    for task in split.test:
        x = factors[task.support_items]
        resid = task.support_labels - item_mean[task.support_items]
        w = np.linalg.solve(x.T @ x + 0.1 * np.eye(x.shape[1]), x.T @ resid)
        pop = item_mean[task.query_items]
        pop_err.append(np.mean((pop - task.query_labels) ** 2))
        ridge_err.append(np.mean((pop + factors[task.query_items] @ w - task.query_labels) ** 2))
    return float(np.mean(pop_err)), float(np.mean(ridge_err))


@pytest.mark.parametrize("implicit", [False, True])
def test_personalisation_beats_popularity(implicit: bool) -> None:
    pop, personal = _ridge_vs_popularity(implicit)
    assert personal < 0.9 * pop


def test_split_default_and_custom_config() -> None:
    split = synthetic_split(seed=2)
    assert split.train and split.valid and split.test
    cfg = EpisodeConfig(
        min_interactions=15, max_interactions=40, support_size=5, query_size=5, seed=9
    )
    custom = synthetic_split(config=cfg)
    assert all(len(t.support_items) == 5 and len(t.query_items) == 5 for t in custom.test)


def _tokens(text: str) -> set[str]:
    return set(text.lower().replace(".", "").split())


def test_collection_shape() -> None:
    coll = synthetic_collection(50, 10, seed=0)
    assert len(coll) == 50 and len(set(coll.doc_ids)) == 50
    labelled = set(coll.qrels["train"]) | set(coll.qrels["test"])
    assert labelled == set(coll.queries) and not set(coll.qrels["train"]) & set(coll.qrels["test"])
    assert all(q.startswith("u") for q in coll.unlabeled_queries)
    assert all(
        d in coll.doc_ids for rel in coll.qrels.values() for docs in rel.values() for d in docs
    )


def test_collection_lexical_overlap_beats_random() -> None:
    coll = synthetic_collection(seed=5)
    docs = [_tokens(p) for p in coll.passages()]
    hits = 0
    for split in coll.qrels.values():
        for qid, rel in split.items():
            q = _tokens(coll.queries[qid])
            best = int(np.argmax([len(q & d) for d in docs]))
            hits += coll.doc_ids[best] in rel
    assert hits / len(coll.queries) > 0.5  # random top-1 would be 1 / 200


def test_collection_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_queries"):
        synthetic_collection(10, 20)
