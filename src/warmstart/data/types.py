"""Typed containers shared by every loader, episode builder and model.

Everything a model sees is a dense integer index: users are rows ``0..n_users-1`` of the user
feature table, items are rows ``0..n_items-1`` of the item feature table. Original dataset ids are
kept beside the indices (``FeatureTable.ids``) so results can be mapped back.

Feature fields are uniform: a ``(N, L)`` int64 matrix of value indices, padded with ``-1``.
A categorical field has ``L == 1``; a multi-hot field (genres, actors) has ``L`` = the longest list.
Datasets with no side features get a single ``id`` field (one-hot id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

PAD = -1
"""Padding value inside feature index matrices."""

INTERACTION_COLUMNS = ("user", "item", "label")
"""Required columns of ``RecDataset.interactions`` (dense indices + float32 label)."""


@dataclass(frozen=True)
class FeatureField:
    """One categorical or multi-hot feature of users or items.

    Attributes:
        name: field name, e.g. ``"gender"`` or ``"genre"``.
        cardinality: number of distinct values; valid entries of ``index`` are in ``[0, cardinality)``.
        index: ``(N, L)`` int64 value indices per row, padded with ``PAD`` (-1).
        vocabulary: optional value names, ``len == cardinality``.
    """

    name: str
    cardinality: int
    index: np.ndarray
    vocabulary: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.index.ndim != 2:
            raise ValueError(
                f"field {self.name!r}: index must be (N, L), got shape {self.index.shape}"
            )
        valid = self.index[self.index != PAD]
        if valid.size and (valid.min() < 0 or valid.max() >= self.cardinality):
            raise ValueError(
                f"field {self.name!r}: values must lie in [0, {self.cardinality}), "
                f"got [{valid.min()}, {valid.max()}]"
            )

    @property
    def multi_hot(self) -> bool:
        return self.index.shape[1] > 1


@dataclass(frozen=True)
class FeatureTable:
    """Side features of one entity type (users or items); row i describes dense index i.

    Attributes:
        ids: ``(N,)`` original dataset ids, row order = dense index order.
        fields: the feature fields, each with ``index.shape[0] == N``.
    """

    ids: np.ndarray
    fields: tuple[FeatureField, ...]

    def __post_init__(self) -> None:
        for f in self.fields:
            if f.index.shape[0] != len(self.ids):
                raise ValueError(
                    f"field {f.name!r} has {f.index.shape[0]} rows, table has {len(self.ids)} ids"
                )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def one_hot_ids(cls, ids: np.ndarray) -> FeatureTable:
        """A table whose only feature is the entity's own id (for datasets without features)."""
        n = len(ids)
        return cls(ids=np.asarray(ids), fields=(FeatureField("id", n, np.arange(n).reshape(n, 1)),))

    def with_id_field(self) -> FeatureTable:
        """This table plus a one-hot ``id`` field (each row its own value), so a model that
        embeds features also learns a free vector per entity. For warm items in user cold start
        (every test item was rated by train users) this is what MF's item factors are; side
        features alone may not tell two items apart. Unchanged if an ``id`` field exists."""
        if any(f.name == "id" for f in self.fields):
            return self
        (id_field,) = FeatureTable.one_hot_ids(self.ids).fields
        return FeatureTable(ids=self.ids, fields=(*self.fields, id_field))


@dataclass(frozen=True)
class RecDataset:
    """A recommendation dataset in dense-index form.

    Attributes:
        name: dataset name (``"movielens-1m"``, ``"lastfm-coldnas"``, ...).
        interactions: DataFrame with int64 ``user``, ``item``, float32 ``label`` and optionally an
            int64 ``timestamp`` column (seconds since epoch).
        users: user feature table (``len == n_users``).
        items: item feature table (``len == n_items``).
        rating_range: ``(low, high)`` of labels, e.g. ``(1, 5)`` or ``(0, 1)``.
    """

    name: str
    interactions: pd.DataFrame
    users: FeatureTable
    items: FeatureTable
    rating_range: tuple[float, float]

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Task:
    """One cold-start episode: a user's support set (seen) and query set (to predict).

    Attributes:
        user: dense user index.
        support_items / support_labels: ``(S,)`` int64 item indices / float32 labels.
        query_items / query_labels: ``(Q,)`` int64 item indices / float32 labels.
    """

    user: int
    support_items: np.ndarray
    support_labels: np.ndarray
    query_items: np.ndarray
    query_labels: np.ndarray


@dataclass(frozen=True)
class EpisodeSplit:
    """Train/valid/test tasks over disjoint users, plus what baselines may learn from.

    Attributes:
        train / valid / test: the tasks of each split.
        train_users / valid_users / test_users: ``(n,)`` int64 dense user indices of each split
            (a split's users may outnumber its tasks when some users are not eligible as tasks).
        dataset: the dataset the tasks index into.
    """

    train: list[Task]
    valid: list[Task]
    test: list[Task]
    train_users: np.ndarray
    valid_users: np.ndarray
    test_users: np.ndarray
    dataset: RecDataset
    meta: dict[str, object] = field(default_factory=dict)

    def train_interactions(self) -> pd.DataFrame:
        """All interactions of train-split users (what popularity/MF baselines may fit on)."""
        inter = self.dataset.interactions
        return inter[inter["user"].isin(self.train_users)]


@dataclass
class TaskBatch:
    """Padded tensors for many tasks, so a model processes all users in one forward pass.

    Shapes: B tasks, S = longest support set, Q = longest query set in the batch.
    Padded positions have item index 0, label 0 and mask False.
    """

    users: torch.Tensor  # (B,) int64
    support_items: torch.Tensor  # (B, S) int64
    support_labels: torch.Tensor  # (B, S) float32
    support_mask: torch.Tensor  # (B, S) bool
    query_items: torch.Tensor  # (B, Q) int64
    query_labels: torch.Tensor  # (B, Q) float32
    query_mask: torch.Tensor  # (B, Q) bool

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(**{k: v.to(device) for k, v in vars(self).items()})


def _pad(rows: Sequence[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D arrays into ``(B, max_len)`` with a validity mask."""
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros((len(rows), width), dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(np.asarray(r), dtype=dtype)
        mask[i, : len(r)] = True
    return out, mask


def collate_tasks(tasks: Sequence[Task]) -> TaskBatch:
    """Pad a list of tasks into one ``TaskBatch``."""
    if not tasks:
        raise ValueError("collate_tasks: got no tasks")
    s_items, s_mask = _pad([t.support_items for t in tasks], torch.int64)
    s_labels, _ = _pad([t.support_labels for t in tasks], torch.float32)
    q_items, q_mask = _pad([t.query_items for t in tasks], torch.int64)
    q_labels, _ = _pad([t.query_labels for t in tasks], torch.float32)
    users = torch.tensor([t.user for t in tasks], dtype=torch.int64)
    return TaskBatch(users, s_items, s_labels, s_mask, q_items, q_labels, q_mask)
