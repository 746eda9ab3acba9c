"""Building ``FeatureField`` index matrices from raw string values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from warmstart.data.types import PAD, FeatureField

UNKNOWN = "<unknown>"
"""Value given to rows with no known value, so every row has at least one valid entry."""


def categorical_field(name: str, values: Sequence[str]) -> FeatureField:
    """One value per row; vocabulary = sorted distinct values. Shape of index: ``(N, 1)``."""
    vocab, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    index = inverse.reshape(-1, 1).astype(np.int64)
    return FeatureField(name, len(vocab), index, tuple(str(v) for v in vocab))


def multi_hot_field(name: str, lists: Sequence[Sequence[str]]) -> FeatureField:
    """Several values per row, padded with ``PAD``; empty rows get ``UNKNOWN``.

    Returns:
        A field whose index is ``(N, L)`` with ``L`` the longest list (duplicates removed).
    """
    rows = [list(dict.fromkeys(v)) or [UNKNOWN] for v in lists]
    vocab = sorted({v for row in rows for v in row})
    position = {v: i for i, v in enumerate(vocab)}
    width = max((len(r) for r in rows), default=1)
    index = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, row in enumerate(rows):
        index[i, : len(row)] = [position[v] for v in row]
    return FeatureField(name, len(vocab), index, tuple(vocab))


def split_list(text: str, sep: str) -> list[str]:
    """``"a, b, N/A"`` → ``["a", "b"]``: stripped, without empty or ``N/A`` entries."""
    return [p.strip() for p in text.split(sep) if p.strip() and p.strip() != "N/A"]
