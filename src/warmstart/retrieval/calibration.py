"""Calibrating cross-encoder logits into probabilities of relevance.

RocketQA (Qu et al., NAACL 2021, arXiv 2010.08191) keeps a retrieved passage as a negative when
the cross-encoder's P(relevant) < 0.1 and as a pseudo-positive when P > 0.9. Those thresholds only
mean something if the scores are calibrated probabilities, so a Platt scaling
``P = sigmoid(a · logit + b)`` (Platt 1999; ``b = 0`` gives temperature scaling) is fitted on
labelled candidates and reported with its negative log-likelihood and expected calibration error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PlattScaler:
    """``P(relevant) = sigmoid(a · logit + b)``."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """(...) logits -> (...) probabilities."""
        z = self.a * np.asarray(logits, dtype=np.float64) + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary NLL of (N,) probabilities against (N,) 0/1 labels."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Equal-width-bin ECE: Σ_bins (n_bin / N) · |mean label − mean probability|."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.size == 0:
        raise ValueError("expected_calibration_error: no predictions")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() / p.size * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def fit_platt(
    logits: np.ndarray, labels: np.ndarray, *, temperature_only: bool = False, steps: int = 200
) -> PlattScaler:
    """Fit ``a`` (and ``b``) by minimising the binary NLL with L-BFGS.

    Args:
        logits: (N,) raw cross-encoder logits.
        labels: (N,) 0/1 relevance labels; both classes must occur.
        temperature_only: fit ``a`` alone (``b = 0``).
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if y.numel() == 0 or y.min() == y.max():
        raise ValueError("fit_platt: labels must contain both 0 and 1")
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    a = torch.ones((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=not temperature_only)
    params = [a] if temperature_only else [a, b]
    opt = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * x + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return PlattScaler(float(a.detach()), float(b.detach()))


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, scaler: PlattScaler
) -> dict[str, float]:
    """NLL and ECE before (plain sigmoid) and after calibration, with the fitted parameters."""
    raw = PlattScaler()(logits)
    cal = scaler(logits)
    return {
        "a": scaler.a,
        "b": scaler.b,
        "pairs": float(len(labels)),
        "positive_rate": float(np.mean(labels)),
        "nll_raw": negative_log_likelihood(raw, labels),
        "ece_raw": expected_calibration_error(raw, labels),
        "nll_calibrated": negative_log_likelihood(cal, labels),
        "ece_calibrated": expected_calibration_error(cal, labels),
    }
