"""How fast EDL-Dist can be against online KD, from the figures of one benchmark run
(``benchmarks/bench_distill.py``): the ceilings that hold on the cores the run had, and the
projections for teachers on other devices (Liu et al., CCPE 2022, arXiv 2207.06667).

Per student batch, ``t_teacher`` is the teacher's forward pass and ``t_student`` the student's
training step, both at 1 thread (the cheapest in CPU time: intra-op threads never scale
super-linearly). Online KD pays ``t_teacher + t_student`` per batch, lock-step. Then:

- **no KD** (measured): training without any teacher on the same cores, at its best thread count
  (all cores, or 1 thread when the cores are contended). Training with a teacher on those cores
  cannot be faster, whatever the schedule.
- **work-conserving**: every core busy all the time with the 1-thread work of a step,
  ``cores / (t_teacher + t_student)`` batches/s (cross-check: ``cores`` x the 1-thread online-KD
  row, the same CPU work measured end to end).
- **best mix** (not a hard bound, a target): the student trains on 1 thread while the teachers
  run on the other cores and on all cores while they idle (``ray_pool.PoolConfig.refill_at`` /
  ``student_threads_idle``); with ``t_student_all`` its step on all cores the best such mix takes
  ``t_student_all + a (1 - t_student_all / t_student)`` per batch, ``a = t_teacher / (cores - 1)``
  the time the teachers need (at least ``t_teacher / (cores - 1)`` when that exceeds
  ``t_student``).
- **separate devices** (the issue's bound): teachers elsewhere, the student's thread only
  trains: ``(t_teacher + t_student) / max(t_teacher, t_student)`` x online KD *at 1 thread*.
  It does not bound a run where teachers share the student's cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SpeedBounds:
    """Upper bounds of EDL-Dist's student samples/s, as multiples of the best online-KD row."""

    no_kd: float
    work_conserving: float
    work_conserving_check: float
    best_mix: float
    separate_devices_vs_online_1_thread: float

    @property
    def ceiling(self) -> float:
        """The tighter of the two bounds that hold on these cores (the work-conserving one from
        the more generous of its two measurements)."""
        return min(self.no_kd, max(self.work_conserving, self.work_conserving_check))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ceiling": self.ceiling}


def speed_bounds(
    *,
    batch: int,
    cores: int,
    t_teacher: float,
    t_student: float,
    no_kd: float,
    no_kd_all_cores: float,
    online_1_thread: float,
    best_online: float,
) -> SpeedBounds:
    """The bounds of one run (times in s per batch of ``batch`` samples, rates in samples/s;
    ``no_kd`` the best no-KD row, ``no_kd_all_cores`` the one on all cores)."""
    if min(batch, cores) < 1 or min(t_teacher, t_student, best_online, no_kd_all_cores) <= 0:
        raise ValueError("batch, cores >= 1; times and rates > 0")
    work = cores * batch / (t_teacher + t_student)
    return SpeedBounds(
        no_kd=no_kd / best_online,
        work_conserving=work / best_online,
        work_conserving_check=cores * online_1_thread / best_online,
        best_mix=batch
        / best_mix_seconds(t_teacher, t_student, batch / no_kd_all_cores, cores)
        / best_online,
        separate_devices_vs_online_1_thread=(t_teacher + t_student) / max(t_teacher, t_student),
    )


def best_mix_seconds(t_teacher: float, t_student: float, t_student_all: float, cores: int) -> float:
    """Seconds per batch of the best mix of a 1-thread student while 1-thread teachers run on
    the other ``cores - 1`` cores and an all-core student while they idle."""
    if cores < 2:
        return t_teacher + t_student  # nothing to share: lock-step
    a = t_teacher / (cores - 1)
    if a >= t_student:
        return a
    return (
        t_student_all + a * (1 - t_student_all / t_student)
        if t_student_all < t_student
        else t_student
    )


def project_threads(t_teacher: float, t_student: float, n: int) -> float:
    """x online KD (1 thread) with ``n`` teacher devices, each a 1-thread teacher, the student
    on its own thread: ``(t_teacher + t_student) / max(t_student, t_teacher / n)``."""
    return (t_teacher + t_student) / max(t_student, t_teacher / n)


def project_devices(
    no_kd_device: float, t_teacher_device: float, batch: int, online_device: float, n: int
) -> float:
    """x online KD on one device with ``n`` teacher devices like it: the student alone on its
    device (at most ``no_kd_device`` samples/s) fed by ``n`` teachers of ``batch / t_teacher_device``
    samples/s each; online KD runs on the student's device only."""
    return min(no_kd_device, n * batch / t_teacher_device) / online_device
