"""Catalogue-level top-k evaluation of cold-start recommenders (issue 13).

What a new user sees is a ranked list drawn from the whole catalogue, so the protocol ranks every
item, not the few rated query items of the ColdNAS protocol (Wu et al., WWW 2023, arXiv
2306.03387, whose tasks and user splits are reused unchanged):

- For each test task the ranker sees the **support set only** (``support_only``: the task with
  its query items and labels removed) and scores every catalogue item.
- The candidates are every item not in the support set; the **targets** are the held-out query
  items the user liked (``like_threshold``: rating >= 4 on a 1..5 scale, label 1 on 0/1 data).
  Users without a liked held-out item are left out (the same users for every method).
- Per user: HR@10, nDCG@10 (binary gain), Recall@50, MRR (over the whole ranking), via
  ``warmstart.metrics``; per method: catalogue coverage@10, the mean popularity rank of the
  recommended items (1 = the item most train users liked) and the **personalisation check**:
  the mean top-10 overlap between users of contrasting tastes (different dominant genre of the
  liked support items; without genres, users whose liked support sets share no item).
- Optional sampled variant: the targets ranked against 100 random items the user never rated
  (reported beside, never instead: sampled metrics can reorder methods, Krichene & Rendle 2020).

Rankers implement ``CatalogueRanker``; adapters turn the rating ``Predictor`` s of
``coldstart.evaluate`` / ``baselines`` / ``maml`` / ``training`` into rankers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from warmstart.coldstart.baselines import MatrixFactorization, fit_new_users
from warmstart.coldstart.evaluate import Predictor
from warmstart.coldstart.knn_inference import (
    TOPK_KNN,
    ItemKNN,
    KNNConfig,
    fit_knn,
)
from warmstart.coldstart.model import ColdNAS
from warmstart.data.types import PAD, EpisodeSplit, FeatureTable, Task, TaskBatch, collate_tasks
from warmstart.metrics import (
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    rank_order,
    recall_at_k,
)

TOPK_KEYS = ("HR@10", "nDCG@10", "Recall@50", "MRR")
"""Per-user columns of the full-catalogue protocol, in table order."""
SAMPLED_KEYS = ("HR@10 s100", "nDCG@10 s100")
"""Per-user columns of the sampled variant (targets against 100 sampled unrated items)."""
LIST_KEYS = ("coverage@10", "pop rank@10", "overlap@10", "overlap@10 all")
"""Per-method columns: catalogue coverage, mean popularity rank, contrasting / all-pairs overlap."""


# ----------------------------------------------------------------------------- protocol pieces
def like_threshold(rating_range: tuple[float, float]) -> float:
    """Label at or above which a held-out item is a target: 1 on 0/1 data, else 4 of 1..5.

    Other scales use the same relative point, ``low + 0.75 * (high - low)``.
    """
    low, high = (float(v) for v in rating_range)
    if (low, high) == (0.0, 1.0):
        return 1.0
    return low + 0.75 * (high - low)


def support_only(task: Task) -> Task:
    """The task as a ranker may see it: the support set, no query items, no query labels."""
    empty_items = np.zeros(0, dtype=np.int64)
    return Task(
        task.user,
        task.support_items,
        task.support_labels,
        empty_items,
        np.zeros(0, dtype=np.float32),
    )


def targets_of(task: Task, threshold: float) -> np.ndarray:
    """``(T,)`` held-out items the user liked (query label >= ``threshold``), minus support."""
    liked = task.query_items[task.query_labels >= threshold]
    return np.setdiff1d(liked, task.support_items)


def popularity_counts(split: EpisodeSplit, threshold: float) -> np.ndarray:
    """``(n_items,)`` number of train-split users who liked each item."""
    inter = split.train_interactions()
    liked = inter[inter["label"].to_numpy() >= threshold]
    counts = np.bincount(liked["item"].to_numpy(np.int64), minlength=split.dataset.n_items)
    return counts.astype(np.float64)


def popularity_rank(counts: np.ndarray) -> np.ndarray:
    """``(n_items,)`` 1-based rank of each item by ``counts`` (1 = most liked; stable ties)."""
    ranks = np.empty(counts.size, dtype=np.float64)
    ranks[rank_order(counts)] = np.arange(1, counts.size + 1)
    return ranks


@runtime_checkable
class CatalogueRanker(Protocol):
    """Scores the whole catalogue for new users.

    ``fit`` may read what a ``Predictor`` may (train users, valid tasks), never test tasks.
    ``score_catalogue`` gets tasks that hold the support set only and returns ``(T, n_items)``
    scores (higher = recommended first); support items are removed by the protocol.
    """

    name: str

    def fit(self, split: EpisodeSplit) -> None: ...

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray: ...


@dataclass
class TopKResult:
    """One ranker on one set of tasks.

    Attributes:
        per_user: ``(U, len(keys))`` metrics of the evaluated users.
        keys: the column names (``TOPK_KEYS`` [+ ``SAMPLED_KEYS``]).
        users: ``(U,)`` dense user ids, in task order.
        top: ``(U, 10)`` recommended items per user, best first.
        lists: ``LIST_KEYS`` values (+ ``contrasting pairs``).
    """

    per_user: np.ndarray
    keys: tuple[str, ...]
    users: np.ndarray
    top: np.ndarray
    lists: dict[str, float] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        """Per-user metrics averaged over users, then the list-level metrics and ``users``."""
        out = {k: float(v) for k, v in zip(self.keys, self.per_user.mean(0), strict=True)}
        return {**out, **self.lists, "users": float(len(self.users))}


def user_topk(
    scores: np.ndarray, support: np.ndarray, targets: np.ndarray, k: int = 10, recall_k: int = 50
) -> tuple[list[float], np.ndarray]:
    """Metrics of one user's catalogue scores.

    Args:
        scores: ``(n_items,)`` the ranker's scores.
        support: support items (removed from the candidates).
        targets: liked held-out items (non-empty, disjoint from ``support``).

    Returns:
        ``[HR@k, nDCG@k, Recall@recall_k, MRR]`` and the ``(k,)`` top items.
    """
    cand = np.setdiff1d(np.arange(scores.size), support)  # (C,) ascending item ids
    pred = scores[cand]
    labels = np.isin(cand, targets).astype(np.float64)
    top = cand[rank_order(pred)[:k]]
    row = [
        hit_rate_at_k(pred, labels, k),
        ndcg_at_k(pred, labels, k),
        recall_at_k(pred, labels, recall_k),
        mrr_at_k(pred, labels, cand.size),
    ]
    return row, top


def sampled_topk(
    scores: np.ndarray,
    task: Task,
    targets: np.ndarray,
    rng: np.random.Generator,
    n_sampled: int = 100,
    k: int = 10,
) -> list[float]:
    """HR@k and nDCG@k of the targets ranked against ``n_sampled`` items the user never rated."""
    rated = np.union1d(task.support_items, task.query_items)
    pool = np.setdiff1d(np.arange(scores.size), rated)
    neg = rng.choice(pool, size=min(n_sampled, pool.size), replace=False)
    cand = np.concatenate([targets, np.sort(neg)])
    labels = np.r_[np.ones(targets.size), np.zeros(neg.size)]
    return [hit_rate_at_k(scores[cand], labels, k), ndcg_at_k(scores[cand], labels, k)]


def score_checked(ranker: CatalogueRanker, tasks: Sequence[Task], n_items: int) -> np.ndarray:
    """The ranker's ``(T, n_items)`` scores for the support-only view of ``tasks``."""
    scores = np.asarray(ranker.score_catalogue([support_only(t) for t in tasks]), np.float64)
    if scores.shape != (len(tasks), n_items):
        raise ValueError(
            f"{ranker.name}: score_catalogue returned shape {scores.shape}, "
            f"expected {(len(tasks), n_items)}"
        )
    if np.isnan(scores).any():
        raise ValueError(f"{ranker.name}: score_catalogue returned NaN")
    return scores


def evaluate_topk(
    ranker: CatalogueRanker,
    tasks: Sequence[Task],
    n_items: int,
    threshold: float,
    pop_rank: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    sampled_seed: int | None = None,
) -> TopKResult:
    """Full-catalogue top-k metrics of a fitted ranker on ``tasks`` (support sets only seen).

    Args:
        n_items: catalogue size.
        threshold: target rule (``like_threshold``).
        pop_rank: ``(n_items,)`` popularity ranks for ``pop rank@10`` (omitted when None).
        groups: ``(T,)`` taste group per task (``taste_groups``; -1 = none), for the
            personalisation check; None: contrasting = disjoint liked support sets.
        sampled_seed: also compute the sampled-100 variant with this seed.
    """
    keep = [i for i, t in enumerate(tasks) if targets_of(t, threshold).size]
    if not keep:
        raise ValueError("evaluate_topk: no task has a liked held-out item")
    kept = [tasks[i] for i in keep]
    scores = score_checked(ranker, kept, n_items)  # (U, I)
    rng = np.random.default_rng(sampled_seed) if sampled_seed is not None else None
    rows, tops = [], []
    for s, t in zip(scores, kept, strict=True):
        targets = targets_of(t, threshold)
        row, top = user_topk(s, t.support_items, targets)
        if rng is not None:
            row += sampled_topk(s, t, targets, rng)
        rows.append(row)
        tops.append(top)
    top_arr = np.array(tops, dtype=np.int64)
    kept_groups = None if groups is None else np.asarray(groups)[keep]
    contrast = contrasting_pairs(kept, threshold, kept_groups)
    lists = list_metrics(top_arr, n_items, contrast, pop_rank)
    keys = TOPK_KEYS + (SAMPLED_KEYS if rng is not None else ())
    users = np.array([t.user for t in kept], dtype=np.int64)
    return TopKResult(np.array(rows, dtype=np.float64), keys, users, top_arr, lists)


# ----------------------------------------------------------------------------- personalisation
def taste_groups(tasks: Sequence[Task], items: FeatureTable, threshold: float) -> np.ndarray | None:
    """Each user's dominant genre among their liked support items (all support items if none
    is liked); ``None`` when the item table has no ``genre`` field.

    Returns:
        ``(T,)`` int64 genre index (ties: the lower index).
    """
    genre = next((f for f in items.fields if f.name == "genre"), None)
    if genre is None:
        return None
    out = np.zeros(len(tasks), dtype=np.int64)
    for i, t in enumerate(tasks):
        liked = t.support_items[t.support_labels >= threshold]
        rows = genre.index[liked if liked.size else t.support_items]  # (S, L)
        counts = np.bincount(rows[rows != PAD], minlength=genre.cardinality)
        out[i] = int(np.argmax(counts))
    return out


def contrasting_pairs(
    tasks: Sequence[Task], threshold: float, groups: np.ndarray | None
) -> np.ndarray:
    """``(T, T)`` bool: pairs of users of contrasting tastes (upper triangle only).

    With ``groups``: different dominant genre. Without: liked support sets that share no item.
    """
    n = len(tasks)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    if groups is not None:
        return upper & (groups[:, None] != groups[None, :])
    liked = [t.support_items[t.support_labels >= threshold] for t in tasks]
    vocab = np.unique(np.concatenate(liked)) if n else np.zeros(0, np.int64)
    m = np.zeros((n, vocab.size), dtype=np.float32)
    for i, items in enumerate(liked):
        m[i, np.searchsorted(vocab, items)] = 1.0
    return upper & ((m @ m.T) == 0)


def list_metrics(
    top: np.ndarray, n_items: int, contrast: np.ndarray, pop_rank: np.ndarray | None
) -> dict[str, float]:
    """Coverage@k, mean popularity rank and mean top-k overlaps of ``(U, k)`` lists."""
    member = np.zeros((top.shape[0], n_items), dtype=np.float32)
    np.put_along_axis(member, top, 1.0, axis=1)
    overlap = member @ member.T  # (U, U) shared items per pair
    upper = np.triu(np.ones_like(overlap, dtype=bool), 1)
    out = {
        "coverage@10": float(np.unique(top).size / n_items),
        "overlap@10": float(overlap[contrast].mean()) if contrast.any() else float("nan"),
        "overlap@10 all": float(overlap[upper].mean()) if upper.any() else float("nan"),
        "contrasting pairs": float(contrast.sum()),
    }
    if pop_rank is not None:
        out["pop rank@10"] = float(pop_rank[top].mean())
    return out


# ----------------------------------------------------------------------------- rankers
@dataclass
class MostPopular:
    """Item popularity for ranking: the number of train-split users who liked the item."""

    name: str = "item popularity"
    threshold: float | None = None
    counts_: np.ndarray | None = None

    def fit(self, split: EpisodeSplit) -> None:
        threshold = self.threshold or like_threshold(split.dataset.rating_range)
        self.counts_ = popularity_counts(split, threshold)

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        if self.counts_ is None:
            raise ValueError(f"{self.name}: call fit(split) before score_catalogue(tasks)")
        return np.tile(self.counts_, (len(tasks), 1))


@dataclass
class KNNRanker:
    """Item-kNN (``coldstart.knn_inference``, the implementation the demo and serving load) as
    a catalogue ranker: fitted on the train-split users, each support set scored by
    ``ItemKNN.fit_users``.

    Attributes:
        config: how the item-item matrix is fitted and labels weigh (default: ``TOPK_KNN``,
            the table's ``item-kNN`` row).
    """

    config: KNNConfig = TOPK_KNN
    name: str = "item-kNN"
    model_: ItemKNN | None = None

    def fit(self, split: EpisodeSplit) -> None:
        self.model_ = fit_knn(split, self.config, like_threshold(split.dataset.rating_range))

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        if self.model_ is None:
            raise ValueError(f"{self.name}: call fit(split) before score_catalogue(tasks)")
        return self.model_.fit_users([(t.support_items, t.support_labels) for t in tasks])


@dataclass
class MFRanker:
    """MF + per-user ridge (``baselines.MatrixFactorization``, selected on valid MSE), scored
    over the catalogue without the rating-range clip (a clip would tie every item above 5)."""

    mf: MatrixFactorization = field(default_factory=MatrixFactorization)
    name: str = "MF + per-user ridge"
    fitted: bool = False

    def fit(self, split: EpisodeSplit) -> None:
        if not self.fitted:
            self.mf.fit(split)
            self.fitted = True

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        model = self.mf.model_
        if model is None:
            raise ValueError(f"{self.name}: call fit(split) before score_catalogue(tasks)")
        dim = model.items.shape[1] - 1
        with_support = [i for i, t in enumerate(tasks) if t.support_items.size]
        rows = np.tile(model.user_prior, (len(tasks), 1))  # empty support: the mean train user
        if with_support:
            fitted = fit_new_users(
                model, [tasks[i] for i in with_support], self.mf.selected_["ridge"]
            )
            rows[with_support] = fitted
        q = model.items  # (I, D + 1)
        return model.mu + rows[:, dim : dim + 1] + q[None, :, dim] + rows[:, :dim] @ q[:, :dim].T


@dataclass
class PredictorRanker:
    """Any rating ``Predictor`` as a ranker: the predicted rating of every catalogue item."""

    predictor: Predictor
    chunk: int = 32
    fitted: bool = False
    n_items: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.predictor.name

    def fit(self, split: EpisodeSplit) -> None:
        self.n_items = split.dataset.n_items
        if not self.fitted:
            self.predictor.fit(split)
            self.fitted = True

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        every = np.arange(self.n_items, dtype=np.int64)
        full = [
            replace(t, query_items=every, query_labels=np.zeros(every.size, np.float32))
            for t in tasks
        ]
        out = [
            np.stack(self.predictor.predict(full[s : s + self.chunk]))
            for s in range(0, len(full), self.chunk)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.n_items))


def model_of(predictor: Any) -> ColdNAS:
    """The trained ``ColdNAS`` of a fitted ``FixedStructurePredictor`` / ``ColdNASPredictor``."""
    model = getattr(predictor, "model", None)
    outcome = getattr(predictor, "outcome", None)
    model = model if model is not None else getattr(outcome, "model", None)
    if model is None:
        raise ValueError(f"{predictor.name}: call fit(split) before ranking")
    return model


@torch.no_grad()
def batch_catalogue_logits(model: ColdNAS, batch: TaskBatch, chunk: int = 16) -> torch.Tensor:
    """``(B, n_items)`` output logits of every catalogue item after adapting to each support
    set of ``batch`` (its query part is not read).

    Logits, not ratings: a sigmoid saturates to exactly the top of the range in float32 and
    would tie the best items.
    """
    was_training = model.training
    model.eval()
    n_items = model.item_embedding.n_rows
    items = torch.arange(n_items)
    vectors = model.item_embedding(items)  # (I, Di), computed once
    user_vec = model.embed_users(batch.users)
    params = model.adapt_embedded(
        user_vec, batch.support_items, batch.support_labels, batch.support_mask
    )  # (B, P)
    out = torch.zeros((len(batch), n_items))
    for start in range(0, len(batch), chunk):
        rows = slice(start, min(start + chunk, len(batch)))
        b = rows.stop - rows.start
        out[rows] = model.logits_embedded(
            params[rows], user_vec[rows], items.expand(b, -1), vectors.expand(b, -1, -1)
        )
    model.train(was_training)
    return out


def catalogue_logits(model: ColdNAS, tasks: Sequence[Task]) -> np.ndarray:
    """``(T, n_items)`` ``batch_catalogue_logits`` of ``tasks``' support sets."""
    if not tasks:
        return np.zeros((0, model.item_embedding.n_rows), dtype=np.float32)
    return batch_catalogue_logits(model, collate_tasks(tasks)).numpy()


@dataclass
class ColdNASRanker:
    """A ColdNAS-family predictor (ColdNAS, fixed FiLM; rating- or ranking-trained) ranking the
    catalogue by its output logits."""

    predictor: Any
    fitted: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.predictor.name

    def fit(self, split: EpisodeSplit) -> None:
        if not self.fitted:
            self.predictor.fit(split)
            self.fitted = True

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        return catalogue_logits(model_of(self.predictor), tasks)


@dataclass
class TwoStage:
    """Candidates from ``first`` (its top ``n_candidates``), ordered by ``second``; the rest of
    the catalogue follows in ``first``'s order. Both stages are fitted by ``fit`` unless they
    were fitted already (the CLI reuses the fitted single-stage rankers)."""

    first: CatalogueRanker
    second: CatalogueRanker
    n_candidates: int = 100
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"two-stage {self.first.name} -> {self.second.name}"

    def fit(self, split: EpisodeSplit) -> None:
        self.first.fit(split)
        self.second.fit(split)

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        first = np.asarray(self.first.score_catalogue(tasks), np.float64)  # (T, I)
        second = np.asarray(self.second.score_catalogue(tasks), np.float64)
        out = np.empty_like(first)
        n = first.shape[1]
        for i, t in enumerate(tasks):
            masked = first[i].copy()
            masked[t.support_items] = -np.inf  # support items are not candidates
            order = rank_order(masked)
            cand = order[: self.n_candidates]
            rest = order[self.n_candidates :]
            final = np.concatenate([cand[rank_order(second[i, cand])], rest])
            out[i, final] = np.arange(n, 0, -1, dtype=np.float64)  # higher = earlier
        return out
