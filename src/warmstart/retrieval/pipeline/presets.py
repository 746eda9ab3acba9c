"""Presets of the RocketQA pipeline: the step list and ``PipelineConfig`` (tiny, SciFact on CPU)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from warmstart.retrieval.encoders import CrossEncoderConfig, DualEncoderConfig
from warmstart.retrieval.evaluation import EVAL_DEPTH
from warmstart.retrieval.mining import MiningConfig
from warmstart.retrieval.training import TrainConfig

__all__ = [
    "CE_DEV_DEPTH",
    "EVAL_DEPTH",
    "MIN_HEAD_SPREAD",
    "OPTIONAL_STEPS",
    "STEPS",
    "PipelineConfig",
    "with_steps",
]

STEPS = (
    "zero_shot",
    "md0",
    "md0_cross",
    "ce",
    "mine",
    "md1",
    "no_denoise",
    "augment",
    "md2",
    "rerank",
)
OPTIONAL_STEPS = ("md0_cross", "no_denoise", "rerank")
CE_DEV_DEPTH = 20  # the ce step reports how the CE reorders MD0's top 20 of the dev queries
MIN_HEAD_SPREAD = 0.01  # below this the CE head sees ~one vector for every pair (warned)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the four steps need besides data and the pre-trained backbone.

    Attributes:
        dual / cross: encoder settings.
        dual_train / cross_train: optimisation of each model.
        mining: candidate depth and the two probability thresholds.
        cross_layers: keep only the first N backbone layers in the cross-encoder (None = all).
        cross_negative_depth: MD0 candidates per train query whose non-positives are the CE's
            hard negatives (None = ``mining.top_k``, the candidates the md0 step stored).
        dev_fraction: share of train queries held out of CE training to calibrate its scores.
        workers: processes of the cross-batch step (gloo on 127.0.0.1).
        cross_batch_equal_steps: the cross-batch step runs ``workers`` times MD0's epochs, so it
            makes as many optimizer steps as MD0 (each step sees ``workers`` × the batch); with
            False it runs MD0's epochs, i.e. ``1 / workers`` of MD0's steps.
        rerank_depth: MD2 candidates the CE reorders.
        steps: steps to run, in pipeline order (optional ones may be left out).
        encode_batch_size / score_batch_size: inference batch sizes.
        bf16: bf16 autocast for inference (only faster on CPUs with native bf16).
        seed: dev split and all sampling.
    """

    dual: DualEncoderConfig = field(default_factory=DualEncoderConfig.minilm)
    cross: CrossEncoderConfig = field(default_factory=CrossEncoderConfig)
    dual_train: TrainConfig = field(default_factory=TrainConfig)
    cross_train: TrainConfig = field(default_factory=TrainConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    cross_layers: int | None = None
    cross_negative_depth: int | None = None
    dev_fraction: float = 0.1
    workers: int = 2
    cross_batch_equal_steps: bool = True
    rerank_depth: int = 50
    steps: tuple[str, ...] = STEPS
    encode_batch_size: int = 32
    score_batch_size: int = 32
    bf16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ValueError(f"steps={unknown}: allowed values are {', '.join(STEPS)}")
        missing = [s for s in STEPS if s not in OPTIONAL_STEPS and s not in self.steps]
        if missing:
            raise ValueError(f"steps: {missing} are required (optional: {OPTIONAL_STEPS})")
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction={self.dev_fraction}: must be in (0, 1)")
        if self.workers < 1 or self.rerank_depth < 1:
            raise ValueError(f"workers={self.workers}, rerank_depth={self.rerank_depth}: >= 1")
        if self.cross_layers is not None and self.cross_layers < 1:
            raise ValueError(f"cross_layers={self.cross_layers}: must be >= 1 or None")
        if self.cross_negative_depth is not None and self.cross_negative_depth < 2:
            raise ValueError(f"cross_negative_depth={self.cross_negative_depth}: >= 2 or None")

    @classmethod
    def tiny(cls) -> PipelineConfig:
        """Seconds on a tiny random BERT + ``synthetic_collection`` (tests)."""
        return cls(
            dual=DualEncoderConfig(
                pooling="mean", similarity="cosine", scale=20.0, passage_max_length=48
            ),
            cross=CrossEncoderConfig(max_length=64),
            dual_train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, checkpoint_every=2),
            cross_train=TrainConfig(epochs=1, batch_size=16, lr=1e-3, checkpoint_every=2),
            # pseudo_precision set so that the tests exercise the dev-chosen threshold
            mining=MiningConfig(top_k=5, pseudo_precision=0.5),
            rerank_depth=10,
            encode_batch_size=16,
            score_batch_size=16,
        )

    @classmethod
    def scifact_cpu(cls) -> PipelineConfig:
        """SciFact on a shared 2-core CPU (see docs/retrieval.md for the measured costs)."""
        return cls(
            dual=DualEncoderConfig.minilm(),
            cross=CrossEncoderConfig(max_length=128),  # query + title + ~90 abstract tokens
            # all 6 layers: after the first 3 the [CLS] state is the same for every pair (the
            # checkpoint was trained with mean pooling), so a 3-layer CE could not learn
            cross_layers=None,
            # negatives from MD0's whole top 50, the depth the CE later reranks: chosen on the
            # dev queries (top 10: CE alone on MD2's top 50 0.708, MD0's top 20 0.822; top 50:
            # 0.793 and 0.830)
            cross_negative_depth=50,
            dual_train=TrainConfig(
                epochs=2,  # query tower only, but ~4 min an epoch on the shared CPU
                batch_size=32,
                lr=5e-5,  # few steps (56): a higher peak rate
                negatives_per_query=1,
            ),
            cross_train=TrainConfig(
                epochs=3,  # 1 epoch: dev rerank 0.741 < MD0 0.790; 3 epochs: 0.822 > 0.793
                batch_size=4,  # queries a step: 4 x (1 positive + 7 negatives) = 32 pairs
                lr=1e-4,  # 4e-5: loss only fell late (2.08 -> 1.33), dev rerank 0.562 < MD0 0.790
                negatives_per_query=7,
                cross_loss="listwise",
            ),
            # CE-scores 6 MD0 candidates per train query; pseudo-label threshold chosen on the
            # dev queries (the fixed 0.9 let no SciFact question through: max P 0.888)
            mining=MiningConfig(top_k=6, pseudo_precision=0.85),
            rerank_depth=50,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def with_steps(config: PipelineConfig, steps: Sequence[str]) -> PipelineConfig:
    """The same config restricted to ``steps`` (kept in pipeline order)."""
    return replace(config, steps=tuple(s for s in STEPS if s in steps))
