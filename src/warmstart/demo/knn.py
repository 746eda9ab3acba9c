"""Item-kNN candidate generation for the demo's two-stage recommender.

A new user who rates five horror films 5 stars and one who rates five children's films 5 stars
give a rating regression the same information: "rates high". What tells them apart is *which*
items they rated. Item-kNN (Sarwar et al., "Item-based collaborative filtering recommendation
algorithms", WWW 2001) scores every item by its similarity to the rated ones, the similarity
being the shrunk cosine between items' co-rating vectors over the train-split users (who rated
both), each rated item weighted by how much the user liked it (``rating - center``).

``ItemKNN`` has the candidate-stage interface of ``warmstart.coldstart.mf_inference
.MFRecommender`` (``fit_users`` -> per-user rows, ``candidates(rows, n)`` -> top-n item rows,
``n_items``, ``item_ids``), so the serving pipeline runs it in place of MF + ridge; its user
"row" is the user's score over the catalogue. An empty support set scores by popularity.

Artifact directory: ``knn.safetensors`` (neighbours ``(I, K)`` int64 + similarities ``(I, K)``
float32 + popularity ``(I,)``) and ``knn.json`` (settings, raw item ids).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from warmstart.checkpoint import read_versioned_json
from warmstart.coldstart.catalog import IdMap

FORMAT_VERSION = 1
CONFIG_FILE = "knn.json"
WEIGHTS_FILE = "knn.safetensors"

Support = tuple[np.ndarray | Sequence[int], np.ndarray | Sequence[float]]


def cooccurrence_knn(
    users: np.ndarray,
    items: np.ndarray,
    n_items: int,
    k: int = 100,
    shrink: float = 20.0,
    alpha: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every item by shrunk, asymmetric cosine over who rated them.

    Args:
        users / items: ``(N,)`` dense rows of the training interactions (each pair once).
        shrink: ``sim * n_ij / (n_ij + shrink)``: similarities resting on few common raters
            are pulled towards 0.
        alpha: ``sim(i, j) = n_ij / (n_i^(1 - alpha) n_j^alpha)``; 0.5 is the cosine, larger
            values discount popular neighbours ``j`` (which co-occur with everything).

    Returns:
        neighbours ``(I, K)`` int64 (best first, never the item itself) and similarities
        ``(I, K)`` float32.
    """
    from scipy.sparse import csr_matrix

    n_users = int(users.max()) + 1 if users.size else 0
    r = csr_matrix((np.ones(users.size, np.float32), (users, items)), shape=(n_users, n_items))
    common = (r.T @ r).toarray()  # (I, I) co-rating counts
    counts = np.diag(common).copy()
    n = np.maximum(counts, 1.0)
    sim = (
        common
        / (n[:, None] ** (1 - alpha) * n[None, :] ** alpha)
        * (common / np.maximum(common + shrink, 1e-12))
    )
    np.fill_diagonal(sim, -np.inf)
    k = min(k, n_items - 1)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (I, K)
    vals = np.take_along_axis(sim, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top, vals = np.take_along_axis(top, order, 1), np.take_along_axis(vals, order, 1)
    return top.astype(np.int64), np.maximum(vals, 0.0).astype(np.float32)


class ItemKNN:
    """Immutable item-kNN scorer (see the module docstring).

    Args:
        neighbours / similarities: ``(I, K)`` from :func:`cooccurrence_knn`.
        popularity: ``(I,)`` ratings count per item (the empty-support order).
        item_ids: raw ids of the item rows.
        center: a rating's weight is ``rating - center`` (below ``center`` pushes away).
    """

    def __init__(
        self,
        neighbours: np.ndarray,
        similarities: np.ndarray,
        popularity: np.ndarray,
        item_ids: IdMap,
        center: float = 2.5,
        config: dict[str, Any] | None = None,
    ) -> None:
        n = len(item_ids)
        if neighbours.shape != similarities.shape or neighbours.shape[0] != n:
            raise ValueError(
                f"ItemKNN: neighbours {neighbours.shape} / similarities {similarities.shape} "
                f"must both be ({n}, K)"
            )
        self.neighbours = neighbours
        self.similarities = similarities
        pop = np.asarray(popularity, dtype=np.float64)
        self.popularity = pop
        self._prior = (1e-3 * pop / max(pop.max(), 1.0)).astype(np.float32)  # tie-break only
        self.item_ids = item_ids
        self.center = center
        self.config = config or {}

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def fit_users(self, supports: Sequence[Support]) -> np.ndarray:
        """``(T, I)`` float32 scores: ``sum_j (r_j - center) * sim(j, i)`` + a popularity
        tie-break (so an empty support ranks by popularity)."""
        out = np.tile(self._prior, (len(supports), 1))
        for t, (rows, labels) in enumerate(supports):
            items = np.asarray(rows, dtype=np.int64).reshape(-1)
            weights = np.asarray(labels, dtype=np.float32).reshape(-1) - self.center
            if items.shape != weights.shape:
                raise ValueError(
                    f"fit_users: support {t} has {items.size} items but {weights.size} labels"
                )
            if items.size and (items.min() < 0 or items.max() >= self.n_items):
                raise ValueError(
                    f"fit_users: support {t} item rows must lie in [0, {self.n_items})"
                )
            contrib = self.similarities[items] * weights[:, None]  # (S, K)
            np.add.at(out[t], self.neighbours[items].ravel(), contrib.ravel())
        return out

    def candidates(self, users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item rows of each ``(I,)`` score row, best first: scores, rows."""
        scores = np.asarray(users, dtype=np.float32)
        if scores.ndim != 2 or scores.shape[1] != self.n_items:
            raise ValueError(f"candidates: users must be (T, {self.n_items}), got {scores.shape}")
        n = min(n, self.n_items)
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        vals = np.take_along_axis(scores, part, 1)
        order = np.argsort(-vals, axis=1, kind="stable")
        rows = np.take_along_axis(part, order, 1)
        return np.take_along_axis(scores, rows, 1), rows.astype(np.int64)

    def predict(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores of item ``rows`` for one ``(I,)`` user row from :meth:`fit_users`."""
        return np.asarray(user, dtype=np.float32)[np.asarray(rows, dtype=np.int64)]

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(len(a), len(b))`` kNN similarities (0 where ``b`` is not among ``a``'s neighbours)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        out = np.zeros((a.size, b.size), dtype=np.float32)
        for i, row in enumerate(a):
            hit = np.isin(self.neighbours[row], b)
            for col, s in zip(self.neighbours[row][hit], self.similarities[row][hit], strict=True):
                out[i, np.flatnonzero(b == col)] = s
        return out


def fit_knn(
    split: Any, k: int = 100, shrink: float = 20.0, alpha: float = 0.5, center: float = 2.5
) -> ItemKNN:
    """Fit on the train-split users' interactions of an ``EpisodeSplit`` (never valid/test)."""
    inter = split.train_interactions()
    users, items = inter["user"].to_numpy(), inter["item"].to_numpy()
    n = split.dataset.n_items
    neighbours, sims = cooccurrence_knn(users, items, n, k, shrink, alpha)
    popularity = np.bincount(items, minlength=n)
    ids = IdMap(np.asarray(split.dataset.items.ids).tolist(), "item")
    config = {"k": k, "shrink": shrink, "alpha": alpha, "center": center}
    return ItemKNN(neighbours, sims, popularity, ids, center, config)


def export_knn(directory: Path, knn: ItemKNN, meta: dict[str, Any] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    popularity = knn.popularity.astype(np.float32)
    save_file(
        {
            "neighbours": torch.as_tensor(knn.neighbours),
            "similarities": torch.as_tensor(knn.similarities),
            "popularity": torch.as_tensor(popularity),
        },
        str(directory / WEIGHTS_FILE),
    )
    config = {
        "format_version": FORMAT_VERSION,
        "center": knn.center,
        "item_ids": knn.item_ids.to_json(),
        **knn.config,
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
    return ItemKNN(
        t["neighbours"].numpy(),
        t["similarities"].numpy(),
        t["popularity"].numpy(),
        ids,
        float(config["center"]),
        config,
    )
