"""The demo's quick preset: what ``make demo`` trains and serves, as code.

A person off the street has no MovieLens demographics, so the served ColdNAS model is trained
with ``user_features="off"``: the support set alone describes the user (the cost of that, on
validation users, is in docs/demo.md). Everything is small enough to train on one CPU thread in
a few minutes; the outputs are cached under a key of these settings, so a second ``make demo``
starts serving in seconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any

from warmstart.coldstart.baselines import MFConfig
from warmstart.coldstart.knn_inference import TOPK_KNN, KNNConfig
from warmstart.coldstart.model import ColdNASConfig
from warmstart.coldstart.training import TrainConfig

BUILD_VERSION = 2
"""Part of every cache key: bumped when what a build writes changes (e.g. an artifact format)."""

CANDIDATE_KINDS = ("mf", "knn")


@dataclass(frozen=True)
class ServedChoice:
    """A fixed served recommender (instead of the validation choice).

    Attributes:
        candidates: ``"mf"`` (MF + ridge, the serving pipeline's default) or ``"knn"``.
        n_candidates: candidates per request.
        rank: ColdNAS reorders the candidates (else the candidate order is the answer).
    """

    candidates: str = "mf"
    n_candidates: int = 500
    rank: bool = True

    def __post_init__(self) -> None:
        if self.candidates not in CANDIDATE_KINDS:
            raise ValueError(
                f"ServedChoice.candidates={self.candidates!r}, allowed {CANDIDATE_KINDS}"
            )
        if self.n_candidates < 1:
            raise ValueError(f"ServedChoice.n_candidates must be >= 1, got {self.n_candidates}")


@dataclass(frozen=True)
class DemoPreset:
    """Everything the demo trains, in one place.

    Attributes:
        dataset / protocol / seed: the cold-start split the models train on (train users), and
            whose validation users select epochs and MF settings.
        structure: the ColdNAS modulation structure (fixed: no search in the quick preset).
        model: the ColdNAS architecture; ``user_features="off"`` for anonymous web users.
        train: ColdNAS training (few epochs; best validation epoch kept).
        mf: the candidate generator's grid (small: one ALS fit per (dim, l2)).
        knn: the item-kNN configuration (``coldstart.knn_inference``) whose ``alpha`` is
            tried at each of ``knn_alphas`` (0.5 is the plain cosine; with the default base
            each is a row of the top-k table, ``knn_inference.KNN_ROWS``).
        n_candidates: N values tried for every candidate generator.
        max_overlap: most top-10 items two contrasting probe users may share for a
            configuration to be served (issue 13's personalisation bar: below 3 of 10).
        served: ``None``: serve the validation choice; else this fixed configuration.
        retrieval_backbone: the zero-shot search encoder (a package name, found offline).
    """

    name: str = "quick"
    dataset: str = "movielens-1m"
    protocol: str = "melu"
    seed: int = 0
    structure: str = "film"
    model: ColdNASConfig = field(
        # smaller than the paper's widths: a few epochs on one thread, < 1 ms scoring
        default_factory=lambda: ColdNASConfig(
            hidden_sizes=(64, 32, 16), adaptation_dim=128, user_features="off"
        )
    )
    train: TrainConfig = field(
        # lr 1e-3: the best validation epoch comes early (docs/coldstart.md); 128 tasks a step
        default_factory=lambda: TrainConfig(
            epochs=8, batch_size=128, lr=1e-3, eval_every=1, checkpoint_every=2
        )
    )
    mf: MFConfig = field(
        # one ALS fit; the ridge is cheap to select on validation users
        default_factory=lambda: MFConfig(dims=(16,), l2s=(10.0,), ridges=(2.0, 5.0, 10.0, 20.0))
    )
    knn_alphas: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8)
    knn: KNNConfig = TOPK_KNN
    n_candidates: tuple[int, ...] = (20, 100, 500)
    max_overlap: int = 2
    served: ServedChoice | None = None
    retrieval_backbone: str = "all-MiniLM-L6-v2"

    def with_user_features(self) -> DemoPreset:
        """The same preset with MovieLens demographics as user features (the comparison)."""
        return replace(self, model=replace(self.model, user_features="on"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self, part: str) -> str:
        """Cache key of one trained part (``coldnas``, ``mf``, ``search``): its own settings."""
        parts = {
            "coldnas": (
                self.dataset,
                self.protocol,
                self.seed,
                self.structure,
                self.model,
                self.train,
            ),
            "mf": (self.dataset, self.protocol, self.seed, self.mf),
            "knn": (
                self.dataset,
                self.protocol,
                self.seed,
                self.structure,
                self.model,
                self.train,
                self.mf,
                self.knn_alphas,
                self.knn,
                self.n_candidates,
                self.max_overlap,
                self.served,
            ),
            "search": (self.retrieval_backbone,),
        }[part]
        text = json.dumps([BUILD_VERSION, *map(_plain, parts)], sort_keys=True, default=str)
        return f"{part}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


PRESETS: dict[str, DemoPreset] = {
    "quick": DemoPreset(),
    # CI/browser-test sized: tiny widths, two epochs (only checks that the plumbing works)
    "tiny": DemoPreset(
        name="tiny",
        model=ColdNASConfig(
            embedding_dim=8, hidden_sizes=(16, 8, 8), adaptation_dim=32, user_features="off"
        ),
        train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, eval_every=1, checkpoint_every=1),
        mf=MFConfig(dims=(8,), l2s=(10.0,), ridges=(10.0,), sweeps=5),
        knn_alphas=(0.5, 0.7),
        n_candidates=(20, 100),
    ),
}
