from __future__ import annotations

import math

import pytest
import torch

from warmstart.distill.losses import KDLossConfig, hard_loss, kd_loss, score_mse, soft_kl

S = torch.tensor([[1.0, 0.0]])
T = torch.tensor([[0.0, 0.0]])


def test_soft_kl_matches_hand_computation() -> None:
    # p_t = (1/2, 1/2); KL(p_t || softmax(s)) = ln((1 + e)/2) - 1/2 at T = 1
    assert float(soft_kl(S, T, 1.0)) == pytest.approx(math.log((1 + math.e) / 2) - 0.5, rel=1e-6)
    # at T = 2: s/T = (0.5, 0), times T^2 = 4
    expected = 4 * (math.log((1 + math.exp(0.5)) / 2) - 0.25)
    assert float(soft_kl(S, T, 2.0)) == pytest.approx(expected, rel=1e-6)
    assert float(soft_kl(S, S, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_score_mse_and_weighted_sum() -> None:
    assert float(score_mse(S, T)) == pytest.approx(0.5)
    config = KDLossConfig(soft_weight=0.5, mse_weight=2.0, hard_weight=3.0, temperature=1.0)
    total, parts = kd_loss(S, T, config)
    hard = math.log(1 + math.exp(-1.0))  # -log softmax(s)[0]
    soft = math.log((1 + math.e) / 2) - 0.5
    assert parts["hard"] == pytest.approx(hard, rel=1e-6)
    assert float(total) == pytest.approx(3.0 * hard + 0.5 * soft + 2.0 * 0.5, rel=1e-6)


def test_no_kd_needs_no_teacher_and_kd_does() -> None:
    total, parts = kd_loss(S, None, KDLossConfig.no_kd())
    assert set(parts) == {"hard"} and float(total) == pytest.approx(math.log(1 + math.exp(-1)))
    with pytest.raises(ValueError, match="no teacher scores"):
        kd_loss(S, None, KDLossConfig())
    with pytest.raises(ValueError, match="temperature"):
        KDLossConfig(temperature=0)
    with pytest.raises(ValueError, match="all 0"):
        KDLossConfig(soft_weight=0, mse_weight=0, hard_weight=0)


def test_soft_gradient_points_the_student_at_the_teacher() -> None:
    s = torch.zeros(1, 3, requires_grad=True)
    soft_kl(s, torch.tensor([[2.0, 0.0, -2.0]]), 2.0).backward()
    assert s.grad is not None and s.grad[0, 0] < 0 < s.grad[0, 2]


def test_hard_loss_skips_unlabelled_rows_and_teacher_terms_do_not() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    labelled = torch.tensor([True, False])
    config = KDLossConfig(soft_weight=0.0, mse_weight=1.0, hard_weight=1.0)
    total, parts = kd_loss(s, t, config, labelled)
    hard = math.log(1 + math.exp(-1.0))  # row 0 only; row 1 (-log softmax = 3.05) skipped
    assert parts["hard"] == pytest.approx(hard, rel=1e-6)
    assert parts["mse"] == pytest.approx((1 + 9) / 4)  # both rows
    assert float(total) == pytest.approx(hard + 2.5, rel=1e-6)
    assert kd_loss(s, t, config)[1]["hard"] == pytest.approx(
        (hard + math.log(1 + math.exp(3.0))) / 2, rel=1e-6
    )


def test_hard_loss_of_no_labelled_row_is_zero_with_a_gradient_path() -> None:
    s = torch.zeros(2, 3, requires_grad=True)
    value = hard_loss(s, torch.tensor([False, False]))
    assert float(value.detach()) == 0.0
    value.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0
