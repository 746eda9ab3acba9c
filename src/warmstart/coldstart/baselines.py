"""Simple cold-start baselines: constants, item popularity, and MF with a per-user ridge fit.

These are the reference points ColdNAS (Wu et al., WWW 2023, arXiv 2306.03387) suggests always
reporting next to meta-learned models. Each class is a ``warmstart.coldstart.evaluate.Predictor``:
``fit`` learns only from the interactions of train-split users (``split.train_interactions()``)
and selects hyperparameters on the valid tasks; ``predict`` reads each new user's support set and
query items, never the query labels.

Matrix factorisation is fitted by alternating least squares (ALS) with biases:
``y_ui ≈ mu + b_u + b_i + p_u · q_i``. A new user's ``(p_u, b_u)`` is the closed-form ridge
solution on their support set with item factors frozen, shrunk toward the mean train user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from warmstart.coldstart.evaluate import Predictor
from warmstart.data.types import EpisodeSplit, Task
from warmstart.metrics import mse

SMOOTHING = ("none", "beta")


def _train_labels(split: EpisodeSplit) -> pd.DataFrame:
    """Interactions of train-split users; raises if there are none."""
    inter = split.train_interactions()
    if inter.empty:
        raise ValueError(f"{split.dataset.name}: train-split users have no interactions")
    return inter


def _unfitted(name: str) -> ValueError:
    return ValueError(f"{name}: call fit(split) before predict(tasks)")


@dataclass
class Constant:
    """Predicts the same value for every query item (e.g. 0.5 on 0/1 labels)."""

    value: float
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"constant {self.value:g}"

    def fit(self, split: EpisodeSplit) -> None:
        """Nothing to learn."""

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        return [np.full(t.query_items.shape, self.value, dtype=np.float64) for t in tasks]


@dataclass
class GlobalMean:
    """Predicts the mean label over all interactions of train-split users."""

    name: str = "global mean"
    mean_: float | None = None

    def fit(self, split: EpisodeSplit) -> None:
        self.mean_ = float(_train_labels(split)["label"].mean())

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        if self.mean_ is None:
            raise _unfitted(self.name)
        return [np.full(t.query_items.shape, self.mean_, dtype=np.float64) for t in tasks]


def popularity_scores(
    items: np.ndarray, labels: np.ndarray, n_items: int, smoothing: str, prior_weight: float
) -> np.ndarray:
    """Per-item score from ``(N,)`` interaction item indices and labels.

    - ``"none"``: the item's mean label; an item never seen gets the global mean label.
    - ``"beta"`` with 0/1 labels: ``(pos + 1) / (n + 2)`` (Laplace rule, Beta(1, 1) prior mean).
    - ``"beta"`` with other labels: ``(sum + w * mu) / (n + w)``, the mean shrunk toward the
      global mean ``mu`` as if the item had ``w = prior_weight`` extra ratings equal to ``mu``.

    Returns:
        ``(n_items,)`` float64 scores.
    """
    if smoothing not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
    labels = labels.astype(np.float64)
    n = np.bincount(items, minlength=n_items).astype(np.float64)
    total = np.bincount(items, weights=labels, minlength=n_items)
    mu = float(labels.mean())
    if smoothing == "none":
        return np.where(n > 0, total / np.maximum(n, 1.0), mu)
    if np.isin(labels, (0.0, 1.0)).all():
        return (total + 1.0) / (n + 2.0)
    return (total + prior_weight * mu) / (n + prior_weight)


@dataclass
class ItemPopularity:
    """Predicts each query item's (optionally smoothed) mean label among train-split users.

    Attributes:
        smoothing: ``"none"`` (raw mean, unseen item → global mean) or ``"beta"`` (see
            ``popularity_scores``).
        prior_weight: pseudo-count of the shrinkage toward the global mean for non-binary labels
            under ``"beta"``; 0/1 labels always use ``(pos + 1) / (n + 2)``.
    """

    smoothing: str = "none"
    prior_weight: float = 5.0
    name: str = ""
    scores_: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.smoothing not in SMOOTHING:
            raise ValueError(
                f"ItemPopularity.smoothing must be one of {SMOOTHING}, got {self.smoothing!r}"
            )
        if self.prior_weight <= 0:
            raise ValueError(f"ItemPopularity.prior_weight must be > 0, got {self.prior_weight}")
        suffix = "" if self.smoothing == "none" else " (smoothed)"
        self.name = self.name or f"item popularity{suffix}"

    def fit(self, split: EpisodeSplit) -> None:
        inter = _train_labels(split)
        self.scores_ = popularity_scores(
            inter["item"].to_numpy(np.int64),
            inter["label"].to_numpy(np.float64),
            split.dataset.n_items,
            self.smoothing,
            self.prior_weight,
        )

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        if self.scores_ is None:
            raise _unfitted(self.name)
        return [self.scores_[t.query_items] for t in tasks]


@dataclass(frozen=True)
class MFConfig:
    """Matrix factorisation baseline; every grid is searched on the valid tasks.

    Attributes:
        dims: latent dimensions to try.
        l2s: ALS L2 penalties on factors and biases (train users and items) to try.
        ridges: per-new-user ridge penalties to try (shrinkage toward the mean train user).
        sweeps: ALS sweeps (one user step + one item step each).
        init_std: std of the normal initialisation of the factors.
        seed: seeds the initialisation.
        progress: show a progress bar over the grid.
    """

    dims: tuple[int, ...] = (8, 16)
    l2s: tuple[float, ...] = (5.0, 10.0)
    ridges: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0, 40.0, 100.0, 300.0, 1000.0)
    sweeps: int = 20
    init_std: float = 0.1
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("dims", "l2s", "ridges"):
            grid = getattr(self, name)
            if not grid:
                raise ValueError(f"MFConfig.{name} must not be empty")
            if any(v <= 0 for v in grid):
                raise ValueError(f"MFConfig.{name} values must all be > 0, got {grid}")
        if self.sweeps < 1:
            raise ValueError(f"MFConfig.sweeps must be >= 1, got {self.sweeps}")
        if self.init_std <= 0:
            raise ValueError(f"MFConfig.init_std must be > 0, got {self.init_std}")


@dataclass
class ALSModel:
    """Fitted factors: ``y ≈ mu + b_u + b_i + p_u · q_i``.

    Attributes:
        mu: global mean label.
        users: ``(U, D + 1)`` rows ``[p_u, b_u]`` of the train users (others are 0).
        items: ``(I, D + 1)`` rows ``[q_i, b_i]``; items unseen in training are 0.
        user_prior: ``(D + 1,)`` mean ``[p_u, b_u]`` over train users.
    """

    mu: float
    users: np.ndarray
    items: np.ndarray
    user_prior: np.ndarray


@dataclass(frozen=True)
class Groups:
    """Interactions grouped by one side's id, for batched per-row least squares.

    Attributes:
        order: ``(N,)`` permutation sorting interactions by id.
        ids: ``(G,)`` distinct ids, ascending.
        starts / counts: ``(G,)`` where each id's run begins in sorted order, and its length.
        batches: lists of group positions with similar counts, each padded to one width.
    """

    order: np.ndarray
    ids: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    batches: tuple[np.ndarray, ...]


def group_rows(group: np.ndarray, budget: int = 1 << 16) -> Groups:
    """Group ``(N,)`` ids; batches hold groups of similar size, ``B * max_count <= budget`` rows."""
    order = np.argsort(group, kind="stable")
    ids, starts, counts = np.unique(group[order], return_index=True, return_counts=True)
    by_size = np.argsort(counts, kind="stable")
    batches, begin = [], 0
    while begin < by_size.size:
        end = begin + 1
        # groups are in ascending size, so the last one added sets the padded width
        while end < by_size.size and (end - begin + 1) * counts[by_size[end]] <= budget:
            end += 1
        batches.append(by_size[begin:end])
        begin = end
    return Groups(order, ids, starts, counts, tuple(batches))


def ridge_rows(
    feats: np.ndarray,
    other: np.ndarray,
    target: np.ndarray,
    groups: Groups,
    n_rows: int,
    lam: float,
) -> np.ndarray:
    """One ALS half-step: ridge regression of ``target`` on ``feats[other]`` for each group.

    Groups of similar size are padded into ``(B, L, F)`` blocks so the Gram matrices come from a
    few batched matmuls instead of one small product per user or item.

    Args:
        feats: ``(M, F)`` features of the fixed side (``[q_i, 1]`` or ``[p_u, 1]``).
        other: ``(N,)`` row of ``feats`` for each interaction.
        target: ``(N,)`` residual labels.
        groups: ``group_rows`` of the solved side's ``(N,)`` ids.
        n_rows: number of rows of the solved side.
        lam: L2 penalty.

    Returns:
        ``(n_rows, F)`` float64 solutions; rows with no interaction are 0.
    """
    f, n = feats.shape[1], other.size
    # row n is an all-zero interaction that padded positions point to
    x_all = torch.from_numpy(
        np.vstack([feats.astype(np.float32)[other[groups.order]], np.zeros((1, f), np.float32)])
    )
    t_all = torch.from_numpy(np.r_[target[groups.order], 0.0].astype(np.float32))  # (N + 1,)
    gram = torch.zeros((groups.ids.size, f, f))
    rhs = torch.zeros((groups.ids.size, f))
    for batch in groups.batches:
        offsets = np.arange(groups.counts[batch].max())
        padded = offsets[None, :] >= groups.counts[batch][:, None]
        rows = torch.from_numpy(np.where(padded, n, groups.starts[batch][:, None] + offsets))
        x, t = x_all[rows], t_all[rows]  # (B, L, F), (B, L)
        index = torch.from_numpy(batch)
        gram[index] = x.transpose(1, 2) @ x
        rhs[index] = (x.transpose(1, 2) @ t[..., None])[..., 0]
    system = gram.double() + lam * torch.eye(f, dtype=torch.float64)
    solution = torch.linalg.solve(system, rhs.double())
    out = np.zeros((n_rows, f))
    out[groups.ids] = solution.numpy()
    return out


def fit_als(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    shape: tuple[int, int],
    dim: int,
    l2: float,
    sweeps: int,
    rng: np.random.Generator,
    init_std: float = 0.1,
) -> ALSModel:
    """Biased MF by alternating least squares on ``(N,)`` user / item / label arrays.

    Args:
        shape: ``(n_users, n_items)`` of the dense index space.
        dim: latent dimension ``D``.
        l2: L2 penalty on every user and item row (factors and bias).
        sweeps: number of (user step, item step) rounds.
        rng: generator for the factor initialisation.
    """
    y = labels.astype(np.float64)
    mu = float(y.mean())
    n_users, n_items = shape
    by_user, by_item = group_rows(users), group_rows(items)
    q = np.zeros((n_items, dim + 1))  # [q_i, b_i]
    q[np.unique(items), :dim] = rng.normal(0.0, init_std, (np.unique(items).size, dim))
    p = np.zeros((n_users, dim + 1))  # [p_u, b_u]
    ones_u, ones_i = np.ones((n_items, 1)), np.ones((n_users, 1))
    for _ in range(sweeps):
        # user step: y - mu - b_i ≈ [q_i, 1] · [p_u, b_u]
        p = ridge_rows(
            np.hstack([q[:, :dim], ones_u]), items, y - mu - q[items, dim], by_user, n_users, l2
        )
        # item step: y - mu - b_u ≈ [p_u, 1] · [q_i, b_i]
        q = ridge_rows(
            np.hstack([p[:, :dim], ones_i]), users, y - mu - p[users, dim], by_item, n_items, l2
        )
    seen = np.unique(users)
    return ALSModel(mu=mu, users=p, items=q, user_prior=p[seen].mean(axis=0))


def _padded_support(tasks: Sequence[Task]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(T, S)`` support items, labels and validity mask, padded with item 0 / label 0."""
    width = max(t.support_items.size for t in tasks)
    items = np.zeros((len(tasks), width), dtype=np.int64)
    labels = np.zeros((len(tasks), width))
    mask = np.zeros((len(tasks), width), dtype=bool)
    for i, t in enumerate(tasks):
        n = t.support_items.size
        items[i, :n], labels[i, :n], mask[i, :n] = t.support_items, t.support_labels, True
    return items, labels, mask


def fit_new_users(model: ALSModel, tasks: Sequence[Task], ridge: float) -> np.ndarray:
    """Closed-form ridge fit of each new user's ``[p_u, b_u]`` on their support set.

    Solves ``min_w sum_j (y_j - mu - b_ij - [q_ij, 1] · w)^2 + ridge * |w - w_prior|^2`` with item
    factors frozen, all tasks at once.

    Returns:
        ``(T, D + 1)`` user rows.
    """
    dim = model.items.shape[1] - 1
    items, labels, mask = _padded_support(tasks)  # (T, S)
    x = np.concatenate([model.items[items, :dim], np.ones((*items.shape, 1))], axis=2)
    x *= mask[..., None]  # (T, S, D + 1); padded rows are zero so they add nothing
    resid = (labels - model.mu - model.items[items, dim]) * mask  # (T, S)
    gram = np.einsum("tsf,tsg->tfg", x, x) + ridge * np.eye(dim + 1)
    rhs = np.einsum("tsf,ts->tf", x, resid) + ridge * model.user_prior
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def predict_queries(
    model: ALSModel, user_rows: np.ndarray, tasks: Sequence[Task], bounds: tuple[float, float]
) -> list[np.ndarray]:
    """``mu + b_u + b_i + p_u · q_i`` for each task's query items, clipped to ``bounds``."""
    dim = model.items.shape[1] - 1
    out = []
    for w, t in zip(user_rows, tasks, strict=True):
        q = model.items[t.query_items]  # (Q, D + 1)
        out.append(np.clip(model.mu + w[dim] + q[:, dim] + q[:, :dim] @ w[:dim], *bounds))
    return out


def _mean_user_mse(preds: Sequence[np.ndarray], tasks: Sequence[Task]) -> float:
    """MSE per user, averaged over users (the selection criterion)."""
    return float(np.mean([mse(p, t.query_labels) for p, t in zip(preds, tasks, strict=True)]))


@dataclass
class MatrixFactorization:
    """ALS matrix factorisation on train users + per-new-user ridge fit on the support set.

    ``fit`` trains one ALS model per ``(dim, l2)`` of the config, fits the valid users with each
    ``ridge`` and keeps the combination with the lowest valid MSE (per user, then averaged).
    """

    config: MFConfig = field(default_factory=MFConfig)
    name: str = "MF + per-user ridge"
    model_: ALSModel | None = None
    selected_: dict[str, float] = field(default_factory=dict)
    bounds_: tuple[float, float] = (-np.inf, np.inf)

    def fit(self, split: EpisodeSplit) -> None:
        if not split.valid:
            raise ValueError(
                f"{self.name}: the split has no valid tasks to select hyperparameters on"
            )
        inter = _train_labels(split)
        users, items, labels = (inter[c].to_numpy() for c in ("user", "item", "label"))
        shape = (split.dataset.n_users, split.dataset.n_items)
        self.bounds_ = split.dataset.rating_range
        cfg = self.config
        best = np.inf
        grid = list(product(cfg.dims, cfg.l2s))
        for dim, l2 in tqdm(grid, desc="MF grid", disable=not cfg.progress):
            rng = np.random.default_rng(cfg.seed)
            model = fit_als(users, items, labels, shape, dim, l2, cfg.sweeps, rng, cfg.init_std)
            for ridge in cfg.ridges:
                preds = predict_queries(
                    model, fit_new_users(model, split.valid, ridge), split.valid, self.bounds_
                )
                score = _mean_user_mse(preds, split.valid)
                if score < best:
                    best, self.model_ = score, model
                    self.selected_ = {"dim": dim, "l2": l2, "ridge": ridge, "valid_MSE": score}

    def predict(self, tasks: Sequence[Task]) -> list[np.ndarray]:
        if self.model_ is None:
            raise _unfitted(self.name)
        if not tasks:
            return []
        rows = fit_new_users(self.model_, tasks, self.selected_["ridge"])
        return predict_queries(self.model_, rows, tasks, self.bounds_)


def default_baselines(binary: bool, seed: int = 0, progress: bool = False) -> list[Predictor]:
    """The baselines the ``coldstart baselines`` command reports, in table order.

    Args:
        binary: labels are 0/1 (adds ``Constant(0.5)``).
        seed: seeds the MF initialisation.
        progress: progress bar over the MF grid.
    """
    constants: list[Predictor] = [Constant(0.5)] if binary else []
    return [
        *constants,
        GlobalMean(),
        ItemPopularity("none"),
        ItemPopularity("beta"),
        MatrixFactorization(MFConfig(seed=seed, progress=progress)),
    ]
