"""A top-k objective for the ColdNAS hypernetwork + predictor (and fixed FiLM), issue 13.

The regression loss of ColdNAS (Wu et al., WWW 2023, arXiv 2306.03387) only sees items a user
rated, so it learns each user's mean rating and happily ranks rarely rated items with high mean
ratings first when asked to rank the whole catalogue. This objective trains the same networks,
on the same batched episodes (``training.fit`` with ``objective=``), to put the items a user liked
above the rest of the catalogue:

- **sampled softmax with logQ correction** (Yi et al., "Sampling-Bias-Corrected Neural Modeling
  for Large Corpus Item Recommendations", RecSys 2019; Bengio & Senecal 2008): per training
  episode, every liked query item is a positive; ``negatives`` items are drawn from the catalogue
  with probability ``Q(i) ∝ (likes_i + 1)^power`` (shared by the batch); each logit is corrected
  by ``-log Q(i)`` so the sampled loss estimates the full-catalogue softmax; negatives that the
  user rated (support or query) are masked (accidental hits).
- or **BPR** (Rendle et al., UAI 2009): ``-log sigmoid(s_pos - s_neg)`` over the same negatives.
- optionally mixed with the query MSE (``rating_weight``) so the output stays a rating.
- epochs are selected on validation users by full-catalogue nDCG@10 (``valid_score``).

The model's logits are the scores (``ColdNAS.logits_embedded``); serving ranks by the sigmoid of
the same logits, which is the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from warmstart.coldstart.model import ColdNAS
from warmstart.coldstart.topk import batch_catalogue_logits, like_threshold, popularity_counts
from warmstart.coldstart.training import ObjectiveFactory, per_task_mse
from warmstart.data.types import EpisodeSplit, TaskBatch

LOSSES = ("softmax", "bpr")
PROPOSALS = ("popularity", "uniform")


@dataclass(frozen=True)
class RankingConfig:
    """Settings of the ranking objective.

    Attributes:
        loss: ``"softmax"`` (sampled softmax with logQ correction) or ``"bpr"``.
        negatives: catalogue items sampled per step (shared by the batch's users).
        proposal: ``"popularity"``: ``Q(i) ∝ (likes_i + 1)^power`` over train-split users'
            likes; ``"uniform"``.
        power: exponent of the popularity proposal.
        rating_weight: ``(1 - w) * ranking loss + w * query MSE`` (0: ranking only).
        valid_k: cut-off of the validation nDCG that selects the epoch.
    """

    loss: str = "softmax"
    negatives: int = 256
    proposal: str = "popularity"
    power: float = 1.0
    rating_weight: float = 0.0
    valid_k: int = 10

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"RankingConfig.loss={self.loss!r}, allowed {LOSSES}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"RankingConfig.proposal={self.proposal!r}, allowed {PROPOSALS}")
        if self.negatives < 1:
            raise ValueError(f"RankingConfig.negatives must be >= 1, got {self.negatives}")
        if not 0.0 <= self.rating_weight < 1.0:
            raise ValueError(
                f"RankingConfig.rating_weight must be in [0, 1), got {self.rating_weight}"
            )
        if self.valid_k < 1:
            raise ValueError(f"RankingConfig.valid_k must be >= 1, got {self.valid_k}")

    @property
    def name(self) -> str:
        mix = f"+mse{self.rating_weight:g}" if self.rating_weight else ""
        return f"{self.loss}-n{self.negatives}-{self.proposal}{self.power:g}{mix}"

    def factory(self) -> ObjectiveFactory:
        """What ``ColdNASPredictor`` / ``FixedStructurePredictor`` take as ``objective``."""
        return lambda split: RankingObjective.for_split(self, split)


class RankingObjective:
    """A ``training.Objective``: ranking loss on liked query items against catalogue negatives.

    Args:
        config: the settings.
        log_q: ``(n_items,)`` log proposal probabilities (sum of ``exp`` = 1).
        threshold: label at or above which a query item is a positive.
        rating_range: the model's output range (for the MSE part).
    """

    def __init__(
        self,
        config: RankingConfig,
        log_q: torch.Tensor,
        threshold: float,
        rating_range: tuple[float, float],
    ) -> None:
        self.config = config
        self.log_q = log_q
        self.probs = log_q.exp()
        self.threshold = threshold
        self.rating_range = rating_range
        self.name = config.name

    @classmethod
    def for_split(cls, config: RankingConfig, split: EpisodeSplit) -> RankingObjective:
        """Proposal from the likes of ``split``'s train users (never valid or test users)."""
        threshold = like_threshold(split.dataset.rating_range)
        counts = popularity_counts(split, threshold)
        weights = (
            (counts + 1.0) ** config.power
            if config.proposal == "popularity"
            else np.ones_like(counts)
        )
        log_q = torch.as_tensor(np.log(weights / weights.sum()), dtype=torch.float32)
        return cls(config, log_q, threshold, split.dataset.rating_range)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """``(M,)`` negatives drawn from the proposal (with replacement)."""
        return torch.multinomial(self.probs, self.config.negatives, True, generator=gen)

    def loss(self, model: ColdNAS, batch: TaskBatch, gen: torch.Generator) -> torch.Tensor:
        """Mean over users with a liked query item of their mean per-positive loss (+ MSE)."""
        neg = self.sample(gen)  # (M,)
        b, q = batch.query_items.shape
        user_vec = model.embed_users(batch.users)
        params = model.adapt_embedded(
            user_vec, batch.support_items, batch.support_labels, batch.support_mask
        )
        items = torch.cat([batch.query_items, neg.expand(b, -1)], dim=1)  # (B, Q + M)
        logits = model.logits_embedded(params, user_vec, items)  # (B, Q + M)
        z_pos, z_neg = logits[:, :q], logits[:, q:]
        rated = accidental_hits(neg, batch)  # (B, M)
        per = self._per_positive(z_pos, z_neg, rated, neg, batch.query_items)  # (B, Q)
        pos = (batch.query_mask & (batch.query_labels >= self.threshold)).to(per.dtype)
        n_pos = pos.sum(1)
        has = n_pos > 0
        rank = ((per * pos).sum(1)[has] / n_pos[has]).mean() if bool(has.any()) else per.sum() * 0
        w = self.config.rating_weight
        if w == 0.0:
            return rank
        low, high = self.rating_range
        mse = per_task_mse(low + (high - low) * torch.sigmoid(z_pos), batch).mean()
        return (1.0 - w) * rank + w * mse

    def _per_positive(
        self,
        z_pos: torch.Tensor,
        z_neg: torch.Tensor,
        rated: torch.Tensor,
        neg: torch.Tensor,
        query_items: torch.Tensor,
    ) -> torch.Tensor:
        """``(B, Q)`` loss of each query item as the positive (masked by the caller)."""
        if self.config.loss == "bpr":
            diff = z_pos[:, :, None] - z_neg[:, None, :]  # (B, Q, M)
            keep = (~rated).to(diff.dtype)[:, None, :]
            return (nn.functional.softplus(-diff) * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)
        # logQ correction on every logit of the sampled softmax (positive and negatives)
        neg_c = (z_neg - self.log_q[neg]).masked_fill(rated, -math.inf)  # (B, M)
        pos_c = z_pos - self.log_q[query_items]  # (B, Q)
        lse = torch.logsumexp(neg_c, dim=1, keepdim=True)  # (B, 1)
        return torch.logaddexp(pos_c, lse) - pos_c  # -log softmax of the positive

    def valid_score(self, model: ColdNAS, batch: TaskBatch) -> float:
        """Minus the full-catalogue nDCG@k of the valid users (lower is better)."""
        return -catalogue_ndcg(model, batch, self.threshold, self.config.valid_k)


def accidental_hits(neg: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """``(B, M)`` True where a sampled negative is one of the user's rated items."""
    in_support = (neg[None, :, None] == batch.support_items[:, None, :]) & batch.support_mask[
        :, None, :
    ]
    in_query = (neg[None, :, None] == batch.query_items[:, None, :]) & batch.query_mask[:, None, :]
    return in_support.any(-1) | in_query.any(-1)


@torch.no_grad()
def catalogue_ndcg(model: ColdNAS, batch: TaskBatch, threshold: float, k: int = 10) -> float:
    """Mean full-catalogue nDCG@k (binary gain) over the users of ``batch`` with a liked query
    item not in their support set; support items are not candidates (as in ``topk``)."""
    logits = batch_catalogue_logits(model, batch)  # (B, I)
    rows = torch.arange(len(batch))[:, None]
    support = torch.where(batch.support_mask, batch.support_items, -1)
    logits[rows.expand_as(support)[support >= 0], support[support >= 0]] = -math.inf
    target = torch.zeros_like(logits, dtype=torch.bool)
    liked = batch.query_mask & (batch.query_labels >= threshold)
    target[rows.expand_as(liked)[liked], batch.query_items[liked]] = True
    target[rows.expand_as(support)[support >= 0], support[support >= 0]] = False
    n_t = target.sum(1)
    top = torch.topk(logits, k, dim=1).indices  # (B, k)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))  # (k,)
    dcg = (target.gather(1, top).float() * disc).sum(1)
    ideal = torch.cumsum(disc, 0)[(n_t.clamp(1, k) - 1)]
    has = n_t > 0
    return float((dcg[has] / ideal[has]).mean()) if bool(has.any()) else 0.0
