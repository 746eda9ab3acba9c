"""``distill.bounds``: the ceilings and projections bench_distill prints, against hand arithmetic
(the figures of the 2026-12-01 14:02 idle run)."""

from __future__ import annotations

import pytest

from warmstart.distill.bounds import (
    best_mix_seconds,
    project_devices,
    project_threads,
    speed_bounds,
)


def test_speed_bounds_by_hand() -> None:
    b = speed_bounds(
        batch=8,
        cores=2,
        t_teacher=0.4,
        t_student=0.6,
        no_kd=18.0,
        no_kd_all_cores=18.0,
        online_1_thread=8.0,
        best_online=12.0,
    )
    assert b.no_kd == pytest.approx(1.5)  # 18 / 12
    assert b.work_conserving == pytest.approx(2 * 8 / 1.0 / 12)  # 16 samples/s
    assert b.work_conserving_check == pytest.approx(16 / 12)
    assert b.separate_devices_vs_online_1_thread == pytest.approx(1.0 / 0.6)
    assert b.ceiling == pytest.approx(16 / 12)
    # best mix: the student alone on 2 cores takes 8 / 18 s; the teacher needs 0.4 s of one core
    # while the student trains on the other at 1 thread: 0.4 / 0.6 of a step, the rest at 2
    t_all = 8 / 18
    assert b.best_mix == pytest.approx(8 / (t_all + 0.4 * (1 - t_all / 0.6)) / 12)
    assert best_mix_seconds(0.4, 0.6, t_all, 1) == pytest.approx(1.0)  # 1 core: lock-step
    assert best_mix_seconds(0.9, 0.6, t_all, 2) == pytest.approx(0.9)  # teacher-bound
    assert b.to_json()["ceiling"] == b.ceiling


def test_speed_bounds_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        speed_bounds(
            batch=8,
            cores=0,
            t_teacher=1,
            t_student=1,
            no_kd=1,
            no_kd_all_cores=1,
            online_1_thread=1,
            best_online=1,
        )


def test_projections_by_hand() -> None:
    # the student is the slower side: one teacher device already keeps it busy
    assert project_threads(0.4, 0.6, 1) == pytest.approx(1.0 / 0.6)
    assert project_threads(0.4, 0.6, 8) == pytest.approx(1.0 / 0.6)
    # a teacher 3x slower than the student needs 3 devices for (1 + 3)x
    assert project_threads(3.0, 1.0, 1) == pytest.approx(4.0 / 3.0)
    assert project_threads(3.0, 1.0, 3) == pytest.approx(4.0)
    # devices like this one: capped by the student alone on its device
    assert project_devices(18.0, 0.8, 8, 12.0, 1) == pytest.approx(10.0 / 12.0)
    assert project_devices(18.0, 0.8, 8, 12.0, 4) == pytest.approx(18.0 / 12.0)
