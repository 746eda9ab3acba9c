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
from typing import Any, Protocol

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


class CandidateOrderRanker(ColdNASRanker):
    """The rank stage without a second model: a candidate's score is the generator's score.

    Serves a candidate generator on its own (item-kNN, the measured best of the top-k table,
    ``docs/coldstart.md``). The user state holds the generator's user row (``params``:
    item-kNN's ``(I,)`` catalogue scores, MF's ``[p_u, b_u]``), so a stored record serves a
    returning user without refitting; ``generator.predict(row, items)`` scores the candidates.
    The ColdNAS recommender still provides the item id map, display info and rating range.
    """

    def __init__(self, rec: ColdStartRecommender, generator: Any) -> None:
        super().__init__(rec)
        self.generator = generator

    def adapt_many(self, supports: Sequence[Support]) -> list[UserState]:
        rows = self.generator.fit_users(supports)
        return [UserState(_NO_USER, r) for r in rows]

    def score_many(
        self, states: Sequence[UserState], candidates: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        return [
            np.asarray(self.generator.predict(s.params, np.asarray(c, dtype=np.int64)))
            for s, c in zip(states, candidates, strict=True)
        ]


_NO_USER = np.zeros(0, dtype=np.float32)
RECOMMENDERS = ("auto", "knn", "coldnas")


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


def load_recommend_models(
    coldnas_dir: Path | str, mf_dir: Path | str, precision: str = "float32"
) -> RecommendModels:
    """Load the ranking (ColdNAS, scoring in ``precision``) and candidate (MF) models; their
    item rows must agree."""
    rec = load_recommender(coldnas_dir, precision=precision)
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


def resolve_recommender(recommender: str, knn_dir: Path | str | None) -> str:
    """``auto`` → ``knn`` when an item-kNN artifact exists at ``knn_dir``, else ``coldnas``."""
    if recommender not in RECOMMENDERS:
        raise ValueError(f"recommend.recommender={recommender!r}: allowed values {RECOMMENDERS}")
    if recommender != "auto":
        return recommender
    return "knn" if knn_dir is not None and (Path(knn_dir) / "knn.json").is_file() else "coldnas"


def load_models(
    coldnas_dir: Path | str,
    mf_dir: Path | str | None,
    knn_dir: Path | str | None,
    recommender: str = "auto",
    precision: str = "float32",
) -> RecommendModels:
    """The recommend pipeline's models for ``recommender`` (see :func:`resolve_recommender`):

    - ``knn``: item-kNN candidates ranked by their own item-kNN score (the top-k table's best);
    - ``coldnas``: MF top-N candidates ranked by ColdNAS (the issue's two-stage shape), its
      scoring in ``precision``.
    """
    choice = resolve_recommender(recommender, knn_dir)
    if choice == "coldnas":
        if mf_dir is None:
            raise ValueError("recommend.recommender=coldnas needs models.mf (an MF artifact)")
        return load_recommend_models(coldnas_dir, mf_dir, precision)
    if knn_dir is None:
        raise ValueError("recommend.recommender=knn needs models.knn (an item-kNN artifact)")
    from warmstart.coldstart.knn_inference import load_knn

    rec = load_recommender(coldnas_dir)
    knn = load_knn(knn_dir)
    if knn.item_ids != rec.item_ids:
        raise ValueError(f"{knn_dir}: item-kNN item ids differ from the ColdNAS model's")
    digest = hashlib.sha1(b"knn")
    for path in (Path(coldnas_dir) / "config.json", Path(knn_dir) / "knn.json"):
        digest.update(path.read_bytes())
    source = {"coldnas": str(coldnas_dir), "knn": str(knn_dir)}
    ranker = CandidateOrderRanker(rec, knn)
    return RecommendModels(ranker, knn, source, digest.hexdigest()[:12])  # type: ignore[arg-type]
