"""The models behind the serving stages, as small batch interfaces.

Each stage calls a list-in, list-out method (the ``*_many`` form of the inference contract), so
a micro-batch is one call. Where a loaded model does not yet offer the batch form, the adapter
loops over the single form; either way the results are the same, in the same order.

``UserRecord`` is what the tiered store keeps per user: the ColdNAS state and the MF user row.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from warmstart.coldstart.inference import ColdStartRecommender, UserState, load_recommender
from warmstart.coldstart.mf_inference import MFRecommender, Support, load_mf

_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class UserRecord:
    """A user's adapted state for both stages of the recommend pipeline.

    Attributes:
        state: the ColdNAS modulation state (ranking).
        mf_row: ``(D + 1,)`` the MF ``[p_u, b_u]`` from the ridge fit (candidates).
        rated: ``(S,)`` dense rows of the items the state was adapted on (excluded from results).
    """

    state: UserState
    mf_row: np.ndarray
    rated: np.ndarray

    def to_bytes(self) -> bytes:
        state = self.state.to_bytes("float32")
        row = self.mf_row.astype("<f4").tobytes()
        return (
            _LEN.pack(len(state))
            + state
            + _LEN.pack(len(row))
            + row
            + self.rated.astype("<i8").tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UserRecord:
        """Decode :meth:`to_bytes`; raises ValueError on a malformed buffer."""
        try:
            (n,) = _LEN.unpack_from(data)
            state = UserState.from_bytes(data[_LEN.size : _LEN.size + n])
            at = _LEN.size + n
            (m,) = _LEN.unpack_from(data, at)
            row = np.frombuffer(data[at + _LEN.size : at + _LEN.size + m], dtype="<f4")
            rated = np.frombuffer(data[at + _LEN.size + m :], dtype="<i8")
        except struct.error as err:
            raise ValueError(f"UserRecord.from_bytes: malformed record ({err})") from err
        return cls(state, row.astype(np.float32), rated.astype(np.int64))


class Ranker(Protocol):
    """What the adapt and rank stages need from a cold-start model."""

    def adapt_many(self, supports: Sequence[Support]) -> list[UserState]: ...

    def score_many(
        self, states: Sequence[UserState], candidates: Sequence[np.ndarray]
    ) -> list[np.ndarray]: ...


class ColdNASRanker:
    """A ColdNAS recommender behind the batch interface (its own ``*_many`` when it has them).

    Args:
        rec: a loaded recommender (immutable, shared by every worker thread).
    """

    def __init__(self, rec: ColdStartRecommender) -> None:
        self.rec = rec

    @property
    def n_items(self) -> int:
        return self.rec.n_items

    def adapt_many(self, supports: Sequence[Support]) -> list[UserState]:
        many = getattr(self.rec, "adapt_many", None)
        if many is not None:
            return list(many(supports))
        return [self.rec.adapt(rows, labels) for rows, labels in supports]

    def score_many(
        self, states: Sequence[UserState], candidates: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        many = getattr(self.rec, "score_many", None)
        if many is not None:
            return list(many(states, candidates))
        return [np.asarray(self.rec.score(s, c)) for s, c in zip(states, candidates, strict=True)]


class ItemIds:
    """Raw item ids at the edge ↔ dense rows inside.

    Args:
        raw: ``(I,)`` raw ids in row order (distinct).
    """

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = np.asarray(raw)
        self._rows = {int(r): i for i, r in enumerate(self.raw.tolist())}
        if len(self._rows) != len(self.raw):
            raise ValueError("ItemIds: raw item ids are not distinct")

    def __len__(self) -> int:
        return len(self.raw)

    def unknown(self, raw_ids: Sequence[int]) -> list[int]:
        return [r for r in raw_ids if int(r) not in self._rows]

    def to_rows(self, raw_ids: Sequence[int], field: str = "items") -> np.ndarray:
        """Dense rows of ``raw_ids``; raises ValueError naming ``field`` and the unknown ids."""
        bad = self.unknown(raw_ids)
        if bad:
            raise ValueError(f"{field}: unknown item ids {bad[:10]}")
        return np.fromiter((self._rows[int(r)] for r in raw_ids), np.int64, len(raw_ids))

    def to_raw(self, rows: np.ndarray) -> list[int]:
        return [int(x) for x in self.raw[np.asarray(rows, dtype=np.int64)]]


@dataclass(frozen=True)
class RecommendModels:
    """Everything the recommend pipeline loads from artifact directories."""

    ranker: ColdNASRanker
    candidates: MFRecommender
    item_ids: ItemIds
    source: dict[str, str]


def load_recommend_models(coldnas_dir: Path | str, mf_dir: Path | str) -> RecommendModels:
    """Load the ranking (ColdNAS) and candidate (MF) models; their item rows must agree."""
    rec = load_recommender(coldnas_dir)
    mf = load_mf(mf_dir)
    if mf.n_items != rec.n_items:
        raise ValueError(
            f"{mf_dir}: MF artifact has {mf.n_items} items, ColdNAS model {coldnas_dir} has {rec.n_items}"
        )
    ids = getattr(rec, "item_ids", None)
    raw = np.asarray(ids.to_raw(np.arange(rec.n_items))) if ids is not None else mf.item_ids
    if not np.array_equal(raw, mf.item_ids):
        raise ValueError(f"{mf_dir}: MF item ids differ from the ColdNAS model's {coldnas_dir}")
    return RecommendModels(
        ColdNASRanker(rec),
        mf,
        ItemIds(raw),
        {"coldnas": str(coldnas_dir), "mf": str(mf_dir)},
    )
