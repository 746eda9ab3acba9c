"""Serving-side matrix factorisation: ALS item factors, a per-user ridge fit, top-N candidates.

The MF baseline of ``warmstart.coldstart.baselines`` (``y ≈ mu + b_u + b_i + p_u · q_i``, new
users fitted in closed form on their support set with the item factors frozen) doubles as the
candidate generator of the two-stage recommend pipeline: a new user's ``[p_u, b_u]`` comes from
the same ridge fit, and the top-N items by predicted rating are an inner-product search of
``[p_u, 1]`` over the rows ``[q_i, b_i]`` (``mu + b_u`` is the same for every item), done with
the project's exact index.

An MF artifact directory holds::

    mf.safetensors   items (I, D + 1) float32 rows [q_i, b_i], user_prior (D + 1,)
    mf.json          format version, mu, ridge, rating bounds, dim, the item id map (raw ids in
                     row order, ``catalog.IdMap`` JSON), anything the exporter records

This module imports the ridge fit and the index only: no trainer, optimiser or dataset loader.
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
from warmstart.coldstart.baselines import ALSModel, fit_new_users
from warmstart.coldstart.catalog import IdMap, support_rows
from warmstart.data.types import Task
from warmstart.retrieval.index import ExactIndex, build_index

FORMAT_VERSION = 1
CONFIG_FILE = "mf.json"
WEIGHTS_FILE = "mf.safetensors"

Support = tuple[np.ndarray | Sequence[int], np.ndarray | Sequence[float]]
_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float32)


def export_mf(
    directory: Path | str,
    model: ALSModel,
    ridge: float,
    item_ids: IdMap | Sequence[Any] | np.ndarray,
    bounds: tuple[float, float],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a fitted ALS model's item side and the ridge setting for serving.

    Args:
        model: the fitted factors (the train users' rows are not needed and not written).
        ridge: the per-new-user ridge penalty (shrinkage toward ``model.user_prior``).
        item_ids: the raw dataset ids of the item rows, in row order (an ``IdMap`` or a list).
        bounds: ``(low, high)`` rating range predictions are clipped to.
        meta: extra JSON-serialisable provenance (dataset, seed, selected grid values, git SHA).
    """
    ids = item_ids if isinstance(item_ids, IdMap) else IdMap(item_ids, "item")
    if len(ids) != model.items.shape[0]:
        raise ValueError(f"export_mf: {len(ids)} item ids for {model.items.shape[0]} item rows")
    if ridge <= 0:
        raise ValueError(f"export_mf: ridge must be > 0, got {ridge}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "items": torch.as_tensor(model.items.astype(np.float32)),
        "user_prior": torch.as_tensor(model.user_prior.astype(np.float32)),
    }
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {
        "format_version": FORMAT_VERSION,
        "mu": float(model.mu),
        "ridge": float(ridge),
        "bounds": [float(bounds[0]), float(bounds[1])],
        "dim": int(model.items.shape[1] - 1),
        **(meta or {}),
        "item_ids": ids.to_json(),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")


class MFRecommender:
    """Item factors + ridge fit + exact top-N index, immutable after construction.

    Args:
        model: ALS factors (only ``mu``, ``items`` and ``user_prior`` are used).
        ridge: per-new-user ridge penalty.
        item_ids: raw ids of the item rows.
        bounds: rating range for :meth:`predict`.
        config: the artifact's ``mf.json`` contents.
    """

    def __init__(
        self,
        model: ALSModel,
        ridge: float,
        item_ids: IdMap,
        bounds: tuple[float, float],
        config: dict[str, Any] | None = None,
    ) -> None:
        if len(item_ids) != model.items.shape[0]:
            raise ValueError(
                f"MFRecommender: {len(item_ids)} item ids for {model.items.shape[0]} item rows"
            )
        self.model = model
        self.ridge = ridge
        self.item_ids = item_ids
        self.bounds = bounds
        self.config = config or {}
        self._index: ExactIndex = build_index("exact", self.dim + 1)  # type: ignore[assignment]
        self._index.add(model.items.astype(np.float32))  # rows [q_i, b_i]

    @property
    def dim(self) -> int:
        return int(self.model.items.shape[1] - 1)

    @property
    def n_items(self) -> int:
        return int(self.model.items.shape[0])

    def fit_users(self, supports: Sequence[Support]) -> np.ndarray:
        """Ridge-fit ``[p_u, b_u]`` for each ``(rows, labels)`` support set, in one padded pass.

        An empty support gives the prior (the mean train user).

        Returns:
            ``(T, D + 1)`` float32 user rows.
        """
        if not supports:
            return np.zeros((0, self.dim + 1), dtype=np.float32)
        tasks = [self._task(i, rows, labels) for i, (rows, labels) in enumerate(supports)]
        return fit_new_users(self.model, tasks, self.ridge).astype(np.float32)

    def _task(self, i: int, rows: Any, labels: Any) -> Task:
        items, values = support_rows(i, rows, labels, self.n_items)
        return Task(-1, items, values, _EMPTY_I, _EMPTY_F)

    def candidates(
        self, users: np.ndarray, n: int, ordered: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item rows by predicted rating for each user row.

        Args:
            users: ``(T, D + 1)`` rows from :meth:`fit_users`.
            n: candidates per user (clipped to the number of items).
            ordered: ``False`` returns the same top-``n`` in no particular order (for a ranking
                stage that re-scores them; saves the index's final sort).

        Returns:
            scores ``(T, n')`` float32 (``p_u · q_i + b_i``, without ``mu + b_u``) and item rows
            ``(T, n')`` int64, best first (when ``ordered``).
        """
        users = np.asarray(users, dtype=np.float32)
        if users.ndim != 2 or users.shape[1] != self.dim + 1:
            raise ValueError(f"candidates: users must be (T, {self.dim + 1}), got {users.shape}")
        queries = np.concatenate([users[:, : self.dim], np.ones((len(users), 1), np.float32)], 1)
        return self._index.search(queries, n, ordered)

    def predict(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``mu + b_u + b_i + p_u · q_i`` for one ``(D + 1,)`` user row, clipped to the bounds."""
        q = self.model.items[np.asarray(rows, dtype=np.int64)]  # (I, D + 1)
        raw = self.model.mu + user[self.dim] + q[:, self.dim] + q[:, : self.dim] @ user[: self.dim]
        return np.clip(raw, *self.bounds).astype(np.float32)


def load_mf(directory: Path | str) -> MFRecommender:
    """Load an artifact written by :func:`export_mf` (safetensors + JSON; nothing unpickled)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    config = read_versioned_json(
        path, FORMAT_VERSION, f"{path}: no MF artifact (expected {CONFIG_FILE})"
    )
    tensors = load_file(str(directory / WEIGHTS_FILE))
    items = tensors["items"].numpy().astype(np.float64)
    model = ALSModel(
        mu=float(config["mu"]),
        users=np.zeros((0, items.shape[1])),
        items=items,
        user_prior=tensors["user_prior"].numpy().astype(np.float64),
    )
    low, high = config["bounds"]
    ids = IdMap.from_json(config["item_ids"])
    return MFRecommender(model, float(config["ridge"]), ids, (low, high), config)
