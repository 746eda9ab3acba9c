"""Offline MPP (Zhao et al., arXiv 1912.04108) as a catalogue ranker of the top-k protocol.

Trained exactly as ``mpp compare``'s offline MPP condition (``mpp_compare.run_seed``): click labels
(``mpp_train.click_split``, rating >= 4), a one-hot item id field (``--item-ids``), a fresh seeded
``MetaLearner`` meta-trained by ``mpp_train.train_offline`` and selected on valid users' AUC, at the
documented settings (``docs/mpp.md``: rule ``film``, outer Adam 1e-2, 300 steps of 32 users,
3 inner steps of 0.5, learned step sizes). A new user is adapted on the support set only
(``MetaLearner.query_logits``) and every catalogue item is scored by its click logit (a float32
sigmoid could tie the best items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from warmstart.coldstart.compare import with_item_ids
from warmstart.coldstart.mpp import PartitionRule
from warmstart.coldstart.mpp_compare import OFFLINE, CompareConfig
from warmstart.coldstart.mpp_train import (
    MetaConfig,
    MetaLearner,
    TrainResult,
    click_split,
    new_learner,
)
from warmstart.coldstart.mpp_train import train_offline as meta_train
from warmstart.data.types import EpisodeSplit, Task, collate_tasks

CLICK_THRESHOLD = 4.0
"""``click_split``'s default: the rating at or above which a support row is a click."""


def documented_config() -> CompareConfig:
    """``mpp compare``'s settings of the docs' tables (``--rule film --lr 1e-2 --steps 300``)."""
    return CompareConfig(
        meta=MetaConfig(lr=1e-2, steps=300, eval_every=25), rule=PartitionRule.parse("film")
    )


@dataclass
class MPPRanker:
    """Offline MPP ranking the whole catalogue for new users (``topk.CatalogueRanker``).

    Attributes:
        config: the comparison settings (model, meta-training, partition rule).
        seed: init and batch order of meta-training.
        item_ids: add the one-hot item id field, as the docs' ``mpp compare`` runs.
        checkpoint: folder for ``train_steps``'s resumable checkpoint (None: none).
        chunk: users scored per adapted pass over the catalogue.
        progress: show meta-training progress bars.
    """

    config: CompareConfig = field(default_factory=documented_config)
    seed: int = 0
    item_ids: bool = True
    checkpoint: Path | None = None
    chunk: int = 32
    progress: bool = False
    name: str = OFFLINE
    learner_: MetaLearner | None = None
    result_: TrainResult | None = None
    clicks_: bool = False
    n_items_: int = 0

    def fit(self, split: EpisodeSplit) -> None:
        self.clicks_ = tuple(split.dataset.rating_range) != (0.0, 1.0)
        self.n_items_ = split.dataset.n_items
        clicked = click_split(with_item_ids(split) if self.item_ids else split, CLICK_THRESHOLD)
        meta = replace(self.config.meta, seed=self.seed)
        learner = new_learner(clicked, self.config.model, self.config.rule, meta)
        self.result_ = meta_train(learner, clicked, self.progress, self.checkpoint)
        self.learner_ = learner

    def score_catalogue(self, tasks: Sequence[Task]) -> np.ndarray:
        if self.learner_ is None:
            raise ValueError(f"{self.name}: call fit(split) before score_catalogue(tasks)")
        every = np.arange(self.n_items_, dtype=np.int64)
        zeros = np.zeros(every.size, dtype=np.float32)
        out = np.zeros((len(tasks), self.n_items_), dtype=np.float32)
        for start in range(0, len(tasks), self.chunk):
            chunk = tasks[start : start + self.chunk]
            # support rows only (as clicks); the query is the whole catalogue with no labels
            full = [
                replace(
                    t,
                    support_labels=self._clicks(t.support_labels),
                    query_items=every,
                    query_labels=zeros,
                )
                for t in chunk
            ]
            with torch.no_grad():
                logits = self.learner_.query_logits(collate_tasks(full), first_order=True)
            out[start : start + len(chunk)] = logits.numpy()
        return out

    def _clicks(self, labels: np.ndarray) -> np.ndarray:
        if not self.clicks_:
            return labels.astype(np.float32)
        return (labels >= CLICK_THRESHOLD).astype(np.float32)
