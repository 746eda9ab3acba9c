"""Synthetic data in the exact shapes of the real datasets, for tests, demos and smoke runs.

Recommendation data is generated from latent factors: each user ``u`` and item ``i`` gets a
``(D,)`` vector, each item a bias, and the score ``p_u · q_i + b_i + noise`` is turned into a
1..5 rating (explicit) or a 0/1 click (implicit). Because the user part of the score is as large as
the item bias, a model that adapts to the user measurably beats item popularity. Side features are
noisy functions of the latent factors, so feature-based cold-start models have something to learn.

The retrieval collection has word-overlap structure: every document holds a few words of its own,
and each query repeats some of them, so lexical and dense retrievers beat random ranking.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from warmstart.data.episodes import EpisodeConfig, build_episodes
from warmstart.data.retrieval import RetrievalCollection
from warmstart.data.types import PAD, EpisodeSplit, FeatureField, FeatureTable, RecDataset

LATENT_DIM = 4
AGE_BUCKETS = 5


def synthetic_dataset(
    n_users: int = 300,
    n_items: int = 120,
    *,
    implicit: bool = False,
    with_features: bool = True,
    interactions_per_user: tuple[int, int] = (15, 40),
    seed: int = 0,
) -> RecDataset:
    """A small recommendation dataset whose labels depend on user-item affinity.

    Args:
        n_users: number of users.
        n_items: number of items.
        implicit: 0/1 labels (``rating_range == (0, 1)``) instead of 1..5 ratings.
        with_features: side features derived from the latent factors; otherwise one-hot ids.
        interactions_per_user: inclusive ``(low, high)`` range of interactions per user;
            ``high`` must not exceed ``n_items``.
        seed: all randomness comes from this seed.

    Returns:
        A ``RecDataset`` named ``"synthetic"`` (or ``"synthetic-implicit"``).
    """
    low, high = interactions_per_user
    if n_users < 1 or n_items < 1:
        raise ValueError(f"n_users and n_items must be >= 1, got {n_users}, {n_items}")
    if not 1 <= low <= high <= n_items:
        raise ValueError(
            f"interactions_per_user must satisfy 1 <= low <= high <= n_items={n_items}, "
            f"got {interactions_per_user}"
        )
    rng = np.random.default_rng(seed)
    user_f = rng.normal(size=(n_users, LATENT_DIM)) / LATENT_DIM**0.25  # (U, D)
    item_f = rng.normal(size=(n_items, LATENT_DIM)) / LATENT_DIM**0.25  # (I, D)
    item_bias = rng.normal(scale=0.5, size=n_items)  # (I,)
    users, items = _sample_pairs(rng, n_users, n_items, low, high)
    score = (user_f[users] * item_f[items]).sum(1) + item_bias[items]
    score += rng.normal(scale=0.3, size=len(score))
    if implicit:
        labels, rating_range = (score > 0).astype(np.float32), (0.0, 1.0)
    else:
        labels, rating_range = (
            np.clip(np.rint(3 + 1.2 * score), 1, 5).astype(np.float32),
            (1.0, 5.0),
        )
    interactions = pd.DataFrame({"user": users, "item": items, "label": labels})
    user_ids, item_ids = np.arange(n_users, dtype=np.int64), np.arange(n_items, dtype=np.int64)
    if with_features:
        user_table = FeatureTable(user_ids, _user_fields(rng, user_f))
        item_table = FeatureTable(item_ids, _item_fields(item_f))
    else:
        user_table, item_table = (
            FeatureTable.one_hot_ids(user_ids),
            FeatureTable.one_hot_ids(item_ids),
        )
    name = "synthetic-implicit" if implicit else "synthetic"
    return RecDataset(name, interactions, user_table, item_table, rating_range)


def _sample_pairs(
    rng: np.random.Generator, n_users: int, n_items: int, low: int, high: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct items per user, more popular items drawn more often (Gumbel top-k)."""
    popularity = np.log(np.linspace(2.0, 0.2, n_items))  # (I,) log-weights
    keys = popularity + rng.gumbel(size=(n_users, n_items))  # (U, I)
    order = np.argsort(-keys, axis=1)
    counts = rng.integers(low, high + 1, size=n_users)
    keep = np.arange(n_items)[None, :] < counts[:, None]  # (U, I)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    return users, order[keep].astype(np.int64)


def _user_fields(rng: np.random.Generator, user_f: np.ndarray) -> tuple[FeatureField, ...]:
    n = len(user_f)
    segment = np.argmax(user_f, axis=1)
    ranks = np.argsort(np.argsort(user_f[:, 0]))
    age = ranks * AGE_BUCKETS // max(n, 1)
    noise = rng.integers(0, 2, size=n)  # a feature with no signal, as real data has
    return (
        FeatureField("segment", LATENT_DIM, segment.reshape(n, 1).astype(np.int64)),
        FeatureField("age", AGE_BUCKETS, age.reshape(n, 1).astype(np.int64)),
        FeatureField("gender", 2, noise.reshape(n, 1).astype(np.int64)),
    )


def _item_fields(item_f: np.ndarray) -> tuple[FeatureField, ...]:
    """``genre``: multi-hot over (dimension, sign) of the two strongest latent dimensions."""
    n = len(item_f)
    top2 = np.argsort(-np.abs(item_f), axis=1)[:, :2]  # (I, 2)
    signs = np.take_along_axis(item_f, top2, axis=1) > 0
    genre = (top2 * 2 + signs).astype(np.int64)
    weak = np.abs(np.take_along_axis(item_f, top2[:, 1:], axis=1))[:, 0] < 0.3
    genre[weak, 1] = PAD  # items with one clear genre
    category = np.argmax(np.abs(item_f), axis=1).reshape(n, 1).astype(np.int64)
    return (
        FeatureField("genre", 2 * LATENT_DIM, genre),
        FeatureField("category", LATENT_DIM, category),
    )


def synthetic_split(
    n_users: int = 300,
    n_items: int = 120,
    *,
    implicit: bool = False,
    with_features: bool = True,
    interactions_per_user: tuple[int, int] = (15, 40),
    config: EpisodeConfig | None = None,
    seed: int = 0,
) -> EpisodeSplit:
    """``synthetic_dataset`` cut into cold-start episodes.

    Args:
        config: episode protocol; default: MeLU-style with ``min_interactions`` lowered to fit
            ``interactions_per_user`` (query 10, support = the rest).
        seed: seeds both the data and (when ``config`` is None) the split.
        (other arguments: see ``synthetic_dataset``)
    """
    dataset = synthetic_dataset(
        n_users,
        n_items,
        implicit=implicit,
        with_features=with_features,
        interactions_per_user=interactions_per_user,
        seed=seed,
    )
    if config is None:
        low, high = interactions_per_user
        query = min(10, max(1, low // 2))
        config = EpisodeConfig(
            min_interactions=max(low, query + 1),
            max_interactions=max(high, query + 1),
            query_size=query,
            seed=seed,
        )
    return build_episodes(dataset, config)


_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def _make_words(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct pronounceable pseudo-words of 3 syllables."""
    words: dict[str, None] = {}
    while len(words) < count:
        picks = rng.integers(0, len(_SYLLABLES), size=(count, 3))
        for row in picks:
            words.setdefault("".join(_SYLLABLES[j] for j in row), None)
    return list(words)[:count]


def synthetic_collection(
    n_docs: int = 200, n_queries: int = 40, seed: int = 0
) -> RetrievalCollection:
    """A tiny BEIR-shaped collection where each query shares distinctive words with one document.

    Documents belong to topics; each document has 3 key words of its own plus topic and
    background words. A query repeats 2 of its document's key words and 2 topic words.
    Labelled queries are split in half into ``train`` and ``test`` qrels; ``n_queries // 4`` more
    queries are generated without labels (ids prefixed ``u``), as in SciFact.

    Args:
        n_docs: number of documents (>= 2).
        n_queries: number of labelled queries (>= 2, at most ``n_docs``).
        seed: all randomness comes from this seed.
    """
    if n_docs < 2 or not 2 <= n_queries <= n_docs:
        raise ValueError(
            f"need n_docs >= 2 and 2 <= n_queries <= n_docs, got {n_docs}, {n_queries}"
        )
    rng = np.random.default_rng(seed)
    n_topics = max(2, n_docs // 10)
    words = _make_words(rng, n_topics * 12 + 3 * n_docs + 60)
    topic_words = [words[t * 12 : (t + 1) * 12] for t in range(n_topics)]
    key_words = [words[n_topics * 12 + 3 * d : n_topics * 12 + 3 * d + 3] for d in range(n_docs)]
    background = words[n_topics * 12 + 3 * n_docs :]
    topics = rng.integers(0, n_topics, size=n_docs)
    titles, texts = [], []
    for d in range(n_docs):
        topical = list(rng.choice(topic_words[topics[d]], size=8))
        filler = list(rng.choice(background, size=12))
        body = topical + filler + key_words[d]
        titles.append(" ".join([*key_words[d][:1], *topical[:2]]).capitalize())
        texts.append(" ".join(rng.permutation(body)) + ".")
    doc_ids = [f"d{d}" for d in range(n_docs)]
    targets = rng.permutation(n_docs)
    n_unlabeled = n_queries // 4

    def query_for(d: int) -> str:
        picked = [*rng.choice(key_words[d], size=2, replace=False)]
        picked += [*rng.choice(topic_words[topics[d]], size=2), rng.choice(background)]
        return " ".join(rng.permutation(picked))

    queries = {f"q{j}": query_for(int(targets[j])) for j in range(n_queries)}
    half = n_queries // 2
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "test": {}}
    for j in range(n_queries):
        qrels["train" if j < half else "test"][f"q{j}"] = {doc_ids[int(targets[j])]: 1}
    unlabeled = {f"u{j}": query_for(int(targets[j % n_docs])) for j in range(n_unlabeled)}
    return RetrievalCollection(doc_ids, titles, texts, queries, qrels, unlabeled)
