"""The models behind the serving stages, as small batch interfaces.

Each stage calls a list-in, list-out method (the ``*_many`` form of the inference contract), so
a micro-batch is one padded pass. ``Ranker`` is the interface the adapt and rank stages need, so
another cold-start model (MPP, a ranking-trained model) can stand behind them.

``UserRecord`` is what the tiered store keeps per user: the ColdNAS state and the MF user row.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from warmstart.coldstart.catalog import IdMap
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
    """A ColdNAS recommender behind the ``Ranker`` interface.

    Args:
        rec: a loaded recommender (immutable, shared by every worker thread).
    """

    def __init__(self, rec: ColdStartRecommender) -> None:
        self.rec = rec

    @property
    def n_items(self) -> int:
        return self.rec.n_items

    def adapt_many(self, supports: Sequence[Support]) -> list[UserState]:
        return self.rec.adapt_many(supports)

    def score_many(
        self, states: Sequence[UserState], candidates: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        return self.rec.score_many(states, candidates)


@dataclass(frozen=True)
class RecommendModels:
    """Everything the recommend pipeline loads from artifact directories."""

    ranker: ColdNASRanker
    candidates: MFRecommender
    source: dict[str, str]
    version: str = (
        ""  # fingerprint of the artifacts: keys user records, so a reload never reads stale ones
    )

    @property
    def item_ids(self) -> IdMap:
        return self.ranker.rec.item_ids


def load_recommend_models(coldnas_dir: Path | str, mf_dir: Path | str) -> RecommendModels:
    """Load the ranking (ColdNAS) and candidate (MF) models; their item rows must agree."""
    rec = load_recommender(coldnas_dir)
    mf = load_mf(mf_dir)
    if mf.n_items != rec.n_items:
        raise ValueError(
            f"{mf_dir}: MF artifact has {mf.n_items} items, ColdNAS model {coldnas_dir} has {rec.n_items}"
        )
    if mf.item_ids != rec.item_ids:
        raise ValueError(f"{mf_dir}: MF item ids differ from the ColdNAS model's ({coldnas_dir})")
    digest = hashlib.sha1()
    for path in (Path(coldnas_dir) / "config.json", Path(mf_dir) / "mf.json"):
        digest.update(path.read_bytes())
    source = {"coldnas": str(coldnas_dir), "mf": str(mf_dir)}
    return RecommendModels(ColdNASRanker(rec), mf, source, digest.hexdigest()[:12])
