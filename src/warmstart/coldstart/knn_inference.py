"""Item-kNN: the one implementation behind the top-k table's item-kNN rows, the demo and serving.

Item-based collaborative filtering (Sarwar et al., "Item-based collaborative filtering
recommendation algorithms", WWW 2001): items are similar when the same train-split users liked
both; a new user's score of a candidate item is the sum of its similarities to the items they
liked in their support set. It knows *which* items a user liked, which a rating regression does
not (a user who rates everything 5 stars tells MF + ridge only "rates high"), and an empty
support set falls back to popularity (a vanishing popularity term that also breaks ties).

One fitted model is an immutable sparse ``(I, I)`` matrix ``S`` whose row ``j`` holds what a
liked item ``j`` adds to each candidate, and the popularity prior::

    score(c) = prior * pop(c) / max(pop) + sum_{j liked} S[j, c]

``KNNConfig`` says how ``S`` is fitted; ``KNN_ROWS`` names the configurations that are rows of
the top-k table (``item-kNN`` = ``TOPK_KNN``, and popularity discounts ``item-kNN (alpha a)``),
which are also what the demo chooses from. The model has the candidate-stage interface of ``mf_inference.MFRecommender``
(``fit_users`` -> per-user rows, ``candidates(rows, n)``, ``predict(row, items)``, ``n_items``,
``item_ids``); its user "row" is the ``(I,)`` score over the catalogue.

Artifact directory::

    knn.safetensors   S as CSR (indptr (I + 1,) int64, indices (nnz,) int64, data (nnz,)
                      float32), popularity (I,) float32 (train-split likes per item)
    knn.json          format version, the KNNConfig, the like threshold, raw item ids (IdMap),
                      anything the exporter records

This module imports numpy, scipy, safetensors and the id map only: no trainer or dataset loader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.sparse import csr_matrix

from warmstart.checkpoint import read_versioned_json
from warmstart.coldstart.catalog import IdMap, support_rows

FORMAT_VERSION = 2
CONFIG_FILE = "knn.json"
WEIGHTS_FILE = "knn.safetensors"

Support = tuple[np.ndarray | Sequence[int], np.ndarray | Sequence[float]]


@dataclass(frozen=True)
class KNNConfig:
    """How the item-item matrix is fitted.

    Attributes:
        alpha: ``sim(c, j) = n_cj / (n_c^(1 - alpha) n_j^alpha + shrink)`` for candidate ``c``
            and liked item ``j`` (``n``: likes); 0.5 is the cosine; towards 1 it becomes
            ``n_cj / n_j``, the share of ``j``'s fans who like ``c`` (the asymmetric cosine of
            Aiolli, RecSys 2013): a popular liked item counts less, a popular candidate more.
        shrink: damps pairs seen by few users (a small ``n_cj`` over a small norm).
        neighbours: each candidate keeps its largest similarities (ties at the cut kept);
            None: all.
        prior: scale of the popularity tie-break (the whole order of an empty support set).
    """

    alpha: float = 0.5
    shrink: float = 10.0
    neighbours: int | None = 100
    prior: float = 1e-6

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"KNNConfig.alpha must lie in [0, 1], got {self.alpha}")
        if self.shrink < 0:
            raise ValueError(f"KNNConfig.shrink must be >= 0, got {self.shrink}")
        if self.neighbours is not None and self.neighbours < 1:
            raise ValueError(f"KNNConfig.neighbours must be >= 1 or None, got {self.neighbours}")
        if self.prior < 0:
            raise ValueError(f"KNNConfig.prior must be >= 0, got {self.prior}")


TOPK_KNN = KNNConfig()
"""The top-k table's ``item-kNN`` row (docs/coldstart.md): cosine over likes, ``+ 10`` in the
denominator, each candidate's top-100 neighbours."""

KNN_ROWS = {
    "item-kNN": TOPK_KNN,
    # popularity discounts: the demo chooses among these on validation users (docs/demo.md)
    **{f"item-kNN (alpha {a:g})": replace(TOPK_KNN, alpha=a) for a in (0.6, 0.7, 0.8)},
}
"""The item-kNN rows of the top-k table (``coldstart topk``), by row name."""


def item_matrix(
    users: np.ndarray, items: np.ndarray, n_items: int, config: KNNConfig
) -> tuple[csr_matrix, np.ndarray]:
    """The fitted ``(I, I)`` contribution matrix ``S`` (row = liked item) and popularity.

    Args:
        users / items: ``(N,)`` dense rows of the train-split likes (each pair once).

    Returns:
        ``S`` (CSR, float32, no self-similarity, only positive entries) and ``(I,)`` counts.
    """
    n_users = int(users.max()) + 1 if users.size else 0
    x = csr_matrix((np.ones(users.size, np.float32), (users, items)), shape=(n_users, n_items))
    co = (x.T @ x).toarray().astype(np.float32)  # (I, I) co-likes
    counts = np.diag(co).copy()
    n = np.maximum(counts, 1.0)
    if config.alpha == 0.5:  # the cosine, as sqrt: exact in float32
        norm = np.sqrt(n[:, None] * n[None, :])
    else:
        norm = (n[:, None] ** (1 - config.alpha) * n[None, :] ** config.alpha).astype(np.float32)
    sim = co / (norm + np.float32(config.shrink))  # (candidate c, liked j)
    np.fill_diagonal(sim, 0.0)
    sim = _keep_top(sim, config.neighbours)  # each candidate's own neighbours
    return csr_matrix(np.ascontiguousarray(sim.T, dtype=np.float32)), counts


def _keep_top(sim: np.ndarray, k: int | None) -> np.ndarray:
    """Each row's ``k`` largest positive entries (ties at the cut kept), the rest 0."""
    if k is not None and k < sim.shape[1]:
        cut = np.partition(sim, sim.shape[1] - k, axis=1)[:, -k]  # k-th largest per row
        sim = np.where(sim >= cut[:, None], sim, 0.0)
    return np.where(sim > 0, sim, 0.0)


class ItemKNN:
    """Immutable item-kNN scorer (see the module docstring); safe to share between threads.

    Args:
        matrix: ``(I, I)`` CSR, row ``j`` = what a liked item ``j`` adds to each candidate.
        popularity: ``(I,)`` like counts (the empty-support order).
        item_ids: raw ids of the item rows.
        config: the fitted configuration (``prior`` is read here).
        like: the support label at or above which an item is liked (4 of 1..5, 1 of 0/1).
    """

    def __init__(
        self,
        matrix: csr_matrix,
        popularity: np.ndarray,
        item_ids: IdMap,
        config: KNNConfig,
        like: float,
        meta: dict[str, Any] | None = None,
    ) -> None:
        n = len(item_ids)
        if matrix.shape != (n, n) or np.shape(popularity) != (n,):
            raise ValueError(
                f"ItemKNN: matrix {matrix.shape} / popularity {np.shape(popularity)} must be "
                f"({n}, {n}) / ({n},) for {n} item ids"
            )
        self.matrix = matrix
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self._prior = config.prior * self.popularity / max(self.popularity.max(initial=0), 1.0)
        self.item_ids = item_ids
        self.config = config
        self.like = float(like)
        self.meta = meta or {}

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def fit_users(self, supports: Sequence[Support]) -> np.ndarray:
        """``(T, I)`` float64 catalogue scores of each support set, in one sparse product."""
        t_idx, cols, vals = [], [], []
        for t, (rows, labels) in enumerate(supports):
            items, y = support_rows(t, rows, labels, self.n_items)
            t_idx.append(np.full(items.size, t, np.int64))
            cols.append(items)
            vals.append((y >= self.like).astype(np.float32))  # only likes count
        w = csr_matrix(
            (_cat(vals, np.float32), (_cat(t_idx, np.int64), _cat(cols, np.int64))),
            shape=(len(supports), self.n_items),
        )  # (T, I) 0/1; a repeated item adds up
        return self._prior[None, :] + (w @ self.matrix).toarray().astype(np.float64)

    def candidates(
        self, users: np.ndarray, n: int, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item rows of each ``(I,)`` score row, best first (any order unless
        ``ordered``): scores, rows."""
        scores = np.asarray(users, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != self.n_items:
            raise ValueError(f"candidates: users must be (T, {self.n_items}), got {scores.shape}")
        if n < 1:
            raise ValueError(f"candidates: n must be >= 1, got {n}")
        n = min(n, self.n_items)
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        vals = np.take_along_axis(scores, part, 1)
        if not ordered:
            return vals, part.astype(np.int64)
        order = np.argsort(-vals, axis=1, kind="stable")
        rows = np.take_along_axis(part, order, 1)
        return np.take_along_axis(scores, rows, 1), rows.astype(np.int64)

    def predict(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores of item ``rows`` for one ``(I,)`` user row from :meth:`fit_users`."""
        return np.asarray(user, dtype=np.float64)[np.asarray(rows, dtype=np.int64)]

    def similarity(self, rated: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(len(rated), len(items))``: what each rated item, if liked, adds to each item."""
        rated, items = np.asarray(rated, np.int64), np.asarray(items, np.int64)
        return self.matrix[rated][:, items].toarray()


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def fit_knn(split: Any, config: KNNConfig = TOPK_KNN, like: float = 4.0) -> ItemKNN:
    """Fit on the train-split users' likes of an ``EpisodeSplit`` (never valid/test).

    Args:
        like: the like threshold (``topk.like_threshold`` of the rating range).
    """
    inter = split.train_interactions()
    inter = inter[inter["label"].to_numpy() >= like]
    users = np.unique(inter["user"].to_numpy(np.int64), return_inverse=True)[1]
    items = inter["item"].to_numpy(np.int64)
    matrix, counts = item_matrix(users.astype(np.int64), items, split.dataset.n_items, config)
    ids = IdMap(np.asarray(split.dataset.items.ids).tolist(), "item")
    return ItemKNN(matrix, counts, ids, config, like)


def export_knn(directory: Path | str, knn: ItemKNN, meta: dict[str, Any] | None = None) -> None:
    """Write ``knn`` (safetensors + JSON) for :func:`load_knn`; ``meta``: provenance."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    m = knn.matrix
    save_file(
        {
            "indptr": torch.as_tensor(m.indptr.astype(np.int64)),
            "indices": torch.as_tensor(m.indices.astype(np.int64)),
            "data": torch.as_tensor(m.data.astype(np.float32)),
            "popularity": torch.as_tensor(knn.popularity.astype(np.float32)),
        },
        str(directory / WEIGHTS_FILE),
    )
    config = {
        "format_version": FORMAT_VERSION,
        "config": asdict(knn.config),
        "like": knn.like,
        "item_ids": knn.item_ids.to_json(),
        **knn.meta,
        **(meta or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, default=str) + "\n")


def load_knn(directory: Path | str) -> ItemKNN:
    """Load :func:`export_knn` output (safetensors + JSON, nothing unpickled)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    config = read_versioned_json(
        path, FORMAT_VERSION, f"{path}: no item-kNN artifact (expected {CONFIG_FILE})"
    )
    t = load_file(str(directory / WEIGHTS_FILE))
    ids = IdMap.from_json(config["item_ids"])
    n = len(ids)
    matrix = csr_matrix(
        (t["data"].numpy(), t["indices"].numpy(), t["indptr"].numpy()), shape=(n, n)
    )
    meta = {k: v for k, v in config.items() if k not in ("config", "like", "item_ids")}
    return ItemKNN(
        matrix, t["popularity"].numpy(), ids, KNNConfig(**config["config"]), config["like"], meta
    )
