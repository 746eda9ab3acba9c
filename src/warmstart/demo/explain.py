"""The page's "why" hint: for each recommended item, the rated item most similar to it.

Similarity is the cosine between item embeddings (the candidate generator's item factors
``q_i``: items that the same users rate alike point the same way). Only the ratings a user liked
explain a recommendation; a user who liked nothing gets the hint from their best-rated items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Why:
    """``rated[j]`` explains item ``i`` with cosine ``similarity``."""

    rated_row: int
    similarity: float


class ItemSimilarity:
    """Cosine similarity over fixed item embeddings (immutable, thread safe).

    Args:
        vectors: ``(I, D)`` item embeddings in dense row order.
    """

    def __init__(self, vectors: np.ndarray) -> None:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or not len(v):
            raise ValueError(f"ItemSimilarity: vectors must be (I, D) with I >= 1, got {v.shape}")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        self._unit = v / np.maximum(norms, 1e-12)  # (I, D); an all-zero row has similarity 0

    @property
    def n_items(self) -> int:
        return int(self._unit.shape[0])

    def why(self, rated: np.ndarray, ratings: np.ndarray, items: np.ndarray) -> list[Why | None]:
        """The explaining rated item of each of ``items`` (None when nothing was rated).

        Args:
            rated: ``(S,)`` dense rows the user rated; ``ratings``: ``(S,)`` their ratings.
            items: ``(K,)`` dense rows to explain.
        """
        rated = np.asarray(rated, dtype=np.int64)
        ratings = np.asarray(ratings, dtype=np.float64)
        items = np.asarray(items, dtype=np.int64)
        if rated.shape != ratings.shape:
            raise ValueError(f"why: {rated.size} rated items but {ratings.size} ratings")
        if not rated.size:
            return [None] * items.size
        liked = rated[ratings >= min(4.0, ratings.max())]  # (L,)
        sims = self._unit[items] @ self._unit[liked].T  # (K, L)
        best = sims.argmax(axis=1)
        return [Why(int(liked[b]), float(sims[k, b])) for k, b in enumerate(best)]
