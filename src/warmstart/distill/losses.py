"""Knowledge-distillation losses for a listwise reranker (Hinton et al. 2015 soft targets; used by
EDL-Dist, Liu et al., CCPE 2022, arXiv 2207.06667).

Student and teacher each give a (B, G) matrix of relevance scores, one row per query over its
group of G passages (column 0 = the labelled positive). Pure tensor maths, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from warmstart.retrieval.training import listwise_loss


@dataclass(frozen=True)
class KDLossConfig:
    """Weights of the three terms and the softmax temperature.

    Attributes:
        soft_weight: weight of ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton's T² keeps its
            gradient scale independent of T).
        mse_weight: weight of the mean squared difference of raw scores.
        hard_weight: weight of the listwise cross-entropy against the labelled positive.
        temperature: T of the soft term.
    """

    soft_weight: float = 1.0
    mse_weight: float = 0.0
    hard_weight: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        for name in ("soft_weight", "mse_weight", "hard_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")
        if self.soft_weight + self.mse_weight + self.hard_weight == 0:
            raise ValueError("soft_weight, mse_weight and hard_weight are all 0")

    @property
    def needs_teacher(self) -> bool:
        return self.soft_weight > 0 or self.mse_weight > 0

    @classmethod
    def no_kd(cls) -> KDLossConfig:
        """The baseline: hard labels only."""
        return cls(soft_weight=0.0, mse_weight=0.0, hard_weight=1.0)


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · mean_b KL(p_t ‖ p_s)`` with ``p = softmax(scores / T)`` over each row of (B, G)."""
    log_s = nn.functional.log_softmax(student / temperature, dim=-1)  # (B, G)
    log_t = nn.functional.log_softmax(teacher / temperature, dim=-1)  # (B, G)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B,)
    return kl.mean() * temperature**2


def score_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over all (B, G) entries of ``(s - t)²``."""
    return (student - teacher).pow(2).mean()


def hard_loss(student: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """The listwise hard-label loss over the rows whose column 0 is a labelled positive
    (``labelled``, (B,) bool; None = every row); 0 (with a gradient path) when no row is."""
    if labelled is None:
        return listwise_loss(student)
    if not bool(labelled.any()):
        return student.sum() * 0.0
    return listwise_loss(student[labelled])


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    config: KDLossConfig,
    labelled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the configured terms and each term's value.

    Args:
        student: (B, G) student scores, column 0 the positive.
        teacher: (B, G) teacher scores (no gradient), or None when ``config`` needs none.
        labelled: (B,) bool, the rows with a labelled positive (the hard term's rows; the
            teacher terms use every row); None = every row.
    """
    if teacher is None and config.needs_teacher:
        raise ValueError("kd_loss: this config weights teacher terms but no teacher scores given")
    if teacher is not None and teacher.shape != student.shape:
        raise ValueError(f"kd_loss: teacher {tuple(teacher.shape)} vs student {student.shape}")
    target = student.detach() if teacher is None else teacher  # unused when None
    total = student.new_zeros(())
    parts: dict[str, float] = {}
    terms = (
        ("hard", config.hard_weight, lambda: hard_loss(student, labelled)),
        ("soft", config.soft_weight, lambda: soft_kl(student, target, config.temperature)),
        ("mse", config.mse_weight, lambda: score_mse(student, target)),
    )
    for name, weight, term in terms:
        if weight > 0:
            value = term()
            total = total + weight * value
            parts[name] = float(value.detach())
    return total, parts
