from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.retrieval.calibration import (
    PlattScaler,
    calibration_report,
    expected_calibration_error,
    fit_platt,
    negative_log_likelihood,
)


def sample(a: float, b: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=n)
    labels = (rng.random(n) < PlattScaler(a, b)(logits)).astype(np.int64)
    return logits, labels


def test_platt_recovers_the_generating_parameters() -> None:
    logits, labels = sample(0.5, -1.0, 20000, 0)
    fit = fit_platt(logits, labels)
    assert fit.a == pytest.approx(0.5, abs=0.05)
    assert fit.b == pytest.approx(-1.0, abs=0.1)


def test_calibration_lowers_nll_and_ece_of_overconfident_scores() -> None:
    logits, labels = sample(0.3, 0.0, 5000, 1)  # the raw sigmoid is overconfident
    report = calibration_report(logits, labels, fit_platt(logits, labels))
    assert report["nll_calibrated"] < report["nll_raw"]
    assert report["ece_calibrated"] < report["ece_raw"]


def test_temperature_only_keeps_b_zero() -> None:
    logits, labels = sample(0.5, 0.0, 2000, 2)
    assert fit_platt(logits, labels, temperature_only=True).b == 0.0


def test_one_class_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="both 0 and 1"):
        fit_platt(np.zeros(4), np.zeros(4))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.integers(0, 10**6))
def test_ece_bounds_and_perfect_case(probs: list[float], seed: int) -> None:
    p = np.asarray(probs)
    y = (np.random.default_rng(seed).random(p.size) < 0.5).astype(int)
    assert 0.0 <= expected_calibration_error(p, y) <= 1.0
    assert expected_calibration_error(y.astype(float), y) == pytest.approx(0.0)
    assert negative_log_likelihood(np.full(p.size, 0.5), y) == pytest.approx(np.log(2))
