from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.teacher_sim import SimBackend, SimTeacher, task_outputs
from warmstart.distill.data import BatchPlan, Task
from warmstart.distill.dispatch import Dispatcher, SampleLedger, StreamStats, stream


def run(
    plan: BatchPlan, teachers: dict[str, SimTeacher], **kw
) -> tuple[list, SimBackend, Dispatcher, list[str]]:
    backend = SimBackend(teachers)
    dispatcher = Dispatcher(
        max_in_flight=kw.pop("max_in_flight", 2),
        timeout_s=kw.pop("timeout_s", 30.0),
        buffer=kw.pop("buffer", 2),
        refill_at=kw.pop("refill_at", None),
    )
    lines: list[str] = []
    out = list(stream(plan.tasks(), backend, dispatcher, poll_s=0.5, say=lines.append, **kw))
    return out, backend, dispatcher, lines


def check_exactly_once(plan: BatchPlan, out: list) -> None:
    assert [t.step for t, _ in out] == list(range(1, plan.total_steps + 1))
    ledger = SampleLedger(plan.epochs, plan.n_samples)
    for task, outputs in out:
        np.testing.assert_array_equal(outputs, task_outputs(task))  # its own outputs
        ledger.record(task)
    ledger.check(plan.expected_counts(plan.total_steps))
    assert (ledger.counts == 1).all()


def test_plan_covers_every_sample_once_per_epoch() -> None:
    plan = BatchPlan(n_samples=10, batch_size=4, epochs=3, seed=1)
    assert plan.steps_per_epoch == 3
    assert (plan.expected_counts(plan.total_steps) == 1).all()
    assert [t.step for t in plan.tasks(after_step=4)] == list(range(5, 10))
    assert plan.expected_counts(4).sum() == 4 + 4 + 2 + 4


def test_results_come_back_in_order_from_teachers_of_different_speeds() -> None:
    plan = BatchPlan(40, 4, 2, seed=0)
    out, backend, _, _ = run(plan, {"slow": SimTeacher(3.0), "fast": SimTeacher(0.5)})
    check_exactly_once(plan, out)
    assert backend.sent["fast"] > 2 * backend.sent["slow"]  # faster teachers get more work


def test_in_flight_is_bounded_per_teacher() -> None:
    d = Dispatcher(max_in_flight=2)
    d.add_member("a")
    d.add_member("b")
    for s in range(1, 11):
        d.add_task(Task(s, 0, (s,)))
    sent = d.assignments(0.0)
    assert len(sent) == 4 and {m for _, m, _ in sent} == {"a", "b"}
    assert d.assignments(0.0) == []
    d.complete(sent[0][0], "x", 1.0)
    assert len(d.assignments(1.0)) == 1


def test_a_dead_teachers_work_is_resent_and_accepted_once() -> None:
    plan = BatchPlan(60, 3, 2, seed=2)
    teachers = {
        "a": SimTeacher(1.0, dies=7.0),
        "b": SimTeacher(1.5),
        "c": SimTeacher(0.7, join=4.0, leave=9.0),
    }
    out, _, d, lines = run(plan, teachers)
    check_exactly_once(plan, out)
    assert d.resent > 0
    assert any("teacher a failed" in line or "teacher left: a" in line for line in lines)
    assert any("teacher joined: c" in line for line in lines)
    assert any("teacher left: c" in line for line in lines)


def test_a_hung_teacher_times_out_and_is_dropped() -> None:
    plan = BatchPlan(90, 3, 1, seed=0)
    out, backend, _, lines = run(
        plan, {"hang": SimTeacher(0.5, hangs=2.0), "ok": SimTeacher(1.0)}, timeout_s=5.0
    )
    check_exactly_once(plan, out)
    assert backend.dropped == ["hang"]
    assert any("hang timed out" in line for line in lines)


def test_a_stalled_student_does_not_drop_a_teacher_whose_answers_are_ready() -> None:
    # the student is paused (SIGSTOP, a long step) for longer than the timeout between two
    # steps; the teacher answered meanwhile, so its answers count and it stays in the pool
    plan = BatchPlan(30, 3, 1, seed=0)
    backend = SimBackend({"t": SimTeacher(0.5)})
    dispatcher = Dispatcher(max_in_flight=2, timeout_s=5.0, buffer=2)

    def say(line: str) -> None:  # fails at once (a dropped only teacher would wait forever)
        assert "timed out" not in line, line

    out = []
    for i, item in enumerate(stream(plan.tasks(), backend, dispatcher, say=say)):
        out.append(item)
        if i == 2:
            backend.clock += 60.0  # the stall, far beyond timeout_s
    check_exactly_once(plan, out)
    assert backend.dropped == [] and dispatcher.resent == 0


def test_zero_teachers_waits_with_a_log_line_until_one_joins() -> None:
    plan = BatchPlan(12, 4, 1, seed=0)
    stats = StreamStats()
    out, _, _, lines = run(plan, {"late": SimTeacher(1.0, join=35.0)}, stats=stats, wait_log_s=10.0)
    check_exactly_once(plan, out)
    waits = [line for line in lines if line.startswith("waiting for teachers: none alive")]
    assert len(waits) >= 3 and stats.waits_without_teachers == len(waits)


def test_late_duplicate_results_are_dropped() -> None:
    d = Dispatcher(max_in_flight=1)
    d.add_member("a")
    d.add_member("b")
    d.add_task(Task(1, 0, (0,)))
    ((aid, member, _),) = d.assignments(0.0)
    d.fail(aid)  # re-queued...
    d.add_member(member)
    ((aid2, _, _),) = d.assignments(1.0)
    assert d.complete(aid2, "first", 2.0)
    assert not d.complete(aid, "late", 3.0)  # the failed attempt's answer does not count twice
    assert d.deliver() == [(Task(1, 0, (0,)), "first")]


teacher_strategy = st.builds(
    SimTeacher,
    seconds=st.floats(0.2, 4.0),
    join=st.sampled_from([0.0, 0.0, 3.0, 10.0]),
    leave=st.sampled_from([math.inf, math.inf, 6.0, 15.0]),
    dies=st.sampled_from([math.inf, math.inf, 2.0, 8.0, 20.0]),
    hangs=st.sampled_from([math.inf, math.inf, math.inf, 5.0]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    teachers=st.lists(teacher_strategy, min_size=0, max_size=4),
    n=st.integers(5, 40),
    batch=st.integers(1, 6),
    epochs=st.integers(1, 3),
    in_flight=st.integers(1, 3),
    refill_at=st.sampled_from([None, None, 0, 2]),
)
def test_exactly_once_under_random_failures(
    teachers, n, batch, epochs, in_flight, refill_at
) -> None:
    plan = BatchPlan(n, batch, epochs, seed=n)
    pool = {f"t{i}": t for i, t in enumerate(teachers)}
    pool["survivor"] = SimTeacher(2.0, join=12.0)  # someone finishes the work eventually
    out, _, d, _ = run(plan, pool, max_in_flight=in_flight, timeout_s=10.0, refill_at=refill_at)
    check_exactly_once(plan, out)
    assert d.outstanding == 0 and not d.attempts


def test_refill_at_adds_tasks_only_from_the_low_water_mark() -> None:
    d = Dispatcher(max_in_flight=1, buffer=2, refill_at=1)
    d.add_member("t")
    step = iter(range(1, 100))

    def fill() -> int:
        n = 0
        while d.wants_task():
            d.add_task(Task(next(step), 0, (0,)))
            n += 1
        return n

    def deliver_one() -> None:
        ((aid, _, _),) = d.assignments(0.0)
        d.complete(aid, "x", 1.0)
        assert len(d.deliver()) == 1

    assert fill() == 3  # capacity 1 + 2
    deliver_one()
    assert fill() == 0  # 2 undelivered > refill_at
    deliver_one()
    assert fill() == 2  # 1 undelivered: refilled to capacity
    plain = Dispatcher(max_in_flight=1, buffer=2)
    plain.add_member("t")
    assert plain.capacity() == 3 and plain.wants_task()


def test_with_refill_at_a_slow_student_sees_idle_teachers_between_bursts() -> None:
    # a serial 1 s teacher feeding a student that trains 2 s a step: bursts of 6 tasks (8 - 2)
    # take the teacher 6 s, 3 student steps; the other 3 steps of each 6 see it idle
    plan = BatchPlan(60, 2, 1, seed=0)
    backend = SimBackend({"t": SimTeacher(1.0, serial=True)})
    d = Dispatcher(max_in_flight=3, buffer=5, refill_at=2)
    busy: list[bool] = []
    out = []
    for item in stream(
        plan.tasks(), backend, d, poll_s=0.5, before_yield=lambda x: busy.append(x.teachers_busy())
    ):
        out.append(item)
        backend.clock += 2.0  # the student's step
    check_exactly_once(plan, out)
    assert len(busy) == len(out) == 30 and sum(busy) == 15
    assert backend.clock == pytest.approx(1.0 + 2.0 * 30)  # the student never waited after step 1


def test_ledger_names_the_first_wrong_sample() -> None:
    ledger = SampleLedger(1, 3)
    ledger.record(Task(1, 0, (0, 2)))
    ledger.record(Task(2, 0, (2,)))
    with pytest.raises(AssertionError, match="epoch 0 sample 1 got 0"):
        ledger.check(np.ones((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="twice"):
        ledger.record(Task(3, 0, (1, 1)))
