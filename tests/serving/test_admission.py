"""Admission's wait prediction: stale timings recover, batch cost by size, calls in flight
(a fake clock and events, never sleeps)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from warmstart.serving.admission import Admission, AdmissionConfig
from warmstart.serving.engine import (
    MIN_SAMPLES,
    STALE_AFTER_S,
    ComputePool,
    Overloaded,
    Stage,
    StageConfig,
    StageMetrics,
    predicted_wait,
)

from .test_engine import Gate, run


class Fixed:
    """A stage stand-in whose predicted wait is fixed."""

    load = 0

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predicted_wait_s(self, extra: int = 1) -> float:
        return self.seconds


@pytest.fixture
def pool():
    p = ComputePool(workers=1, intra_op_threads=None)
    yield p
    p.shutdown()


def test_a_stage_refused_on_stale_timings_is_probed_and_recovers(pool):
    """Timings from a slow moment (1 s a call) refuse every 100 ms request, and a refused
    request adds no timing: without re-measuring, the stage would refuse for ever."""
    now = [1000.0]

    def fast(items):  # each call takes 5 ms of the fake clock
        now[0] += 0.005
        return items

    gate = Gate(fast)
    admission = Admission(AdmissionConfig(deadline_ms=100, degrade_at=1.0, reject_at=1.0))

    async def main():
        stage = Stage("s", gate, StageConfig(max_batch=4), pool, clock=lambda: now[0])
        await stage.start()
        for _ in range(MIN_SAMPLES):
            stage.metrics.observe_service(1.0, 1, at=now[0])

        def admit():
            return admission.admit([stage], [stage], 0.1)

        for _ in range(3):  # the old median refuses, and keeps refusing while nothing runs
            with pytest.raises(Overloaded):
                admit()
        now[0] += STALE_AFTER_S + 0.1  # idle for a while: the next request is a probe
        assert not admit().degrade
        probe = asyncio.create_task(stage.submit(0))
        await gate.wait_entered()
        with pytest.raises(Overloaded):  # one probe at a time: the rest still see 1 s
            admit()
        gate.release.set()
        await probe
        for i in range(MIN_SAMPLES - 1):  # idle and still re-measuring: probes, one by one
            admit()
            await stage.submit(i)
        admit()  # now predicted from the fresh timings
        recovered = stage.metrics.batch_seconds(1)
        await stage.stop()
        return recovered

    assert run(main) == pytest.approx(0.005)
    assert admission.rejected == 4 and admission.admitted == MIN_SAMPLES + 1


def test_a_busy_stage_is_not_probed_and_fresh_stages_predict_from_their_timings(pool):
    now = [50.0]

    async def main():
        stage = Stage("s", lambda xs: xs, StageConfig(max_batch=4), pool, clock=lambda: now[0])
        await stage.start()
        for _ in range(MIN_SAMPLES):
            stage.metrics.observe_service(0.2, 1, at=now[0])
        fresh = stage.predicted_wait_s()
        upstream = stage.predicted_wait_s(extra=2)  # a request on its way: not idle
        now[0] += STALE_AFTER_S + 1
        stale_idle, stale_upstream = stage.predicted_wait_s(), stage.predicted_wait_s(extra=2)
        await stage.stop()
        return fresh, upstream, stale_idle, stale_upstream

    fresh, upstream, stale_idle, stale_upstream = run(main)
    assert fresh == pytest.approx(0.2) and upstream == pytest.approx(0.4)
    assert stale_idle == 0.0 and stale_upstream == pytest.approx(0.4)


def test_batch_cost_follows_the_sizes_seen_and_scales_in_proportion_past_them():
    m = StageMetrics()
    for _ in range(MIN_SAMPLES):  # one size seen: proportional (an upper bound)
        m.observe_service(0.007, 1)
    assert m.batch_seconds(4) == pytest.approx(0.028)
    for _ in range(3):  # a fixed 4.5 ms + 2.5 ms per item, seen at sizes 1, 2 and 4
        m.observe_service(0.0095, 2)
        m.observe_service(0.0145, 4)
        m.observe_service(0.007, 1)
    # the median call is still a 7 ms batch of 1; sizes 2 and 4 follow the 2.5 ms slope
    assert m.batch_seconds(1) == pytest.approx(0.007)
    assert m.batch_seconds(2) == pytest.approx(0.0095)
    assert m.batch_seconds(4) == pytest.approx(0.0145)  # not 4 x 7 ms
    # past the largest batch seen: the median call's own cost per item (7 ms)
    assert m.batch_seconds(6) == pytest.approx(0.0145 + 2 * 0.007)
    m.observe_service(0.5, 3)  # one slow call moves neither the median nor the slope much
    assert m.batch_seconds(4) == pytest.approx(0.0145, rel=0.2)


def test_a_call_in_flight_counts_what_is_left_of_it():
    config = StageConfig(max_batch=8)

    def cost(n):
        return 0.04

    assert predicted_wait(1, config, cost, 1, 1, elapsed=0.0) == pytest.approx(0.08)
    assert predicted_wait(1, config, cost, 1, 1, elapsed=0.01) == pytest.approx(0.07)
    assert predicted_wait(1, config, cost, 1, 1, elapsed=0.5) == pytest.approx(0.04)
    assert predicted_wait(1, config, cost, 0, 0, elapsed=0.5) == pytest.approx(0.04)


def test_a_noisy_window_without_a_slope_still_charges_each_item():
    m = StageMetrics()
    for size, seconds in [(1, 0.010), (4, 0.009), (1, 0.010), (4, 0.009), (1, 0.010)]:
        m.observe_service(seconds, size)  # bigger batches measured faster: noise
    assert m.batch_seconds(4) == pytest.approx(0.010 + 3 * 0.010 / 4)


def test_a_flood_absorbed_by_degrading_is_an_overload_and_applies_the_margin():
    """Degradations shed load too: a stream of requests admitted degraded, with hardly any
    refused, makes admission overloaded (so the learnt margin applies); full admissions
    alone do not."""

    admission = Admission(AdmissionConfig(deadline_ms=100, degrade_at=0.5, reject_at=0.8))
    admission.margin = 1.5  # as if learnt in an earlier overload
    for _ in range(512):
        assert not admission.admit([Fixed(0.030)], [Fixed(0.030)], 0.1).degrade
    assert not admission.overloaded and admission.applied_margin == 1.0
    for _ in range(64):
        ticket = admission.admit([Fixed(0.052)], [Fixed(0.052)], 0.1)
        assert ticket.degrade  # no refusal: 52 ms x the margin stays below 80 ms
    assert admission.rejected == 0 and admission.refusing == 0.0
    assert admission.overloaded and admission.applied_margin == 1.5
    before = admission.with_margin
    assert admission.admit([Fixed(0.030)], [Fixed(0.030)], 0.1).margin == 1.5
    assert admission.refusal([Fixed(1.0)], 0.1) is not None
    assert admission.with_margin == before + 2  # both decisions took the margin
    assert admission.snapshot()["shedding"] == pytest.approx(admission.shedding)


def test_a_request_with_no_lesser_form_is_not_degraded_nor_counted_as_shedding():
    """``degraded=None`` (a search without rerank: degrading would change nothing): above
    ``degrade_at`` it is admitted as it is, not counted as degraded, and its admissions do not
    make admission overloaded (the margin stays off); above ``reject_at`` it is refused."""
    admission = Admission(AdmissionConfig(deadline_ms=100, degrade_at=0.5, reject_at=0.8))
    admission.margin = 1.5
    for _ in range(64):
        ticket = admission.admit([Fixed(0.052)], None, 0.1)
        assert not ticket.degrade and ticket.predicted_s == pytest.approx(0.052)
    assert admission.degraded == 0 and admission.shedding == 0.0
    assert not admission.overloaded and admission.applied_margin == 1.0
    with pytest.raises(Overloaded):
        admission.admit([Fixed(0.085)], None, 0.1)
    assert admission.rejected == 1


def test_a_learnt_margin_does_not_keep_itself_on_below_the_overload():
    """Shedding is judged on the prediction without the margin: after a flood (margin 2.0,
    admission overloaded) requests predicted at 30 ms are degraded while the margin applies
    (60 ms > 50), but those degradations do not count as shedding, so the overload ends and
    the margin stops applying."""
    admission = Admission(AdmissionConfig(deadline_ms=100, degrade_at=0.5, reject_at=0.8))
    admission.margin, admission.shedding = 2.0, 0.5  # just after a flood
    assert admission.overloaded
    first = admission.admit([Fixed(0.030)], [Fixed(0.030)], 0.1)
    assert first.degrade and first.margin == 2.0
    for _ in range(2048):
        admission.admit([Fixed(0.030)], [Fixed(0.030)], 0.1)
    assert not admission.overloaded and admission.applied_margin == 1.0
    assert not admission.admit([Fixed(0.030)], [Fixed(0.030)], 0.1).degrade
    # an overload itself (without the margin above the threshold) still counts
    for _ in range(64):
        with contextlib.suppress(Overloaded):  # once overloaded, 52 ms x 2.0 is refused
            admission.admit([Fixed(0.052)], [Fixed(0.052)], 0.1)
    assert admission.overloaded and admission.rejected > 0


def test_a_quiet_pause_after_a_flood_ends_the_overload():
    """The shed shares average ~256 decisions *or* the last ~0.25 s, whichever is shorter:
    after a flood, a request arriving a second later is not judged overloaded (it was, by
    the decisions taken seconds earlier, until 256 new ones had diluted them)."""
    now = [0.0]
    admission = Admission(AdmissionConfig(deadline_ms=100), clock=lambda: now[0])
    for _ in range(256):  # a flood: every decision refuses, 1 ms apart
        now[0] += 0.001
        admission.refusal([Fixed(1.0)], 0.1)
    assert admission.overloaded and admission.shedding > 0.5
    now[0] += 0.001  # the next decision at once: still the flood's state
    admission.admit([Fixed(0.010)], [Fixed(0.010)], 0.1)
    assert admission.overloaded
    now[0] += 2.0  # a quiet pause of 2 s (8 time constants)
    admission.admit([Fixed(0.010)], [Fixed(0.010)], 0.1)
    assert not admission.overloaded and admission.shedding < 0.01
    # decisions close together still average ~256 of them: one refusal 1 ms later barely moves it
    now[0] += 0.001
    admission.refusal([Fixed(1.0)], 0.1)
    assert admission.shedding < 0.01 + 1 / 200


class Counted(Fixed):
    """A fixed stage stand-in that counts its predictions."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.calls = 0

    def predicted_wait_s(self, extra: int = 1) -> float:
        self.calls += 1
        return self.seconds


def test_admit_reuses_the_refusal_checks_prediction_once_for_the_same_path():
    """The front asks ``refusal`` before parsing and ``admit`` right after: for the same
    stages within ``REUSE_S`` the prediction is made once; another path, a later admit, a
    stale check or a refusal that refused all predict afresh."""
    from warmstart.serving.admission import REUSE_S

    now = [50.0]
    admission = Admission(AdmissionConfig(deadline_ms=100), clock=lambda: now[0])
    stage, other = Counted(0.010), Counted(0.010)
    path = [stage]
    assert admission.refusal(path, 0.1) is None and stage.calls == 1
    ticket = admission.admit([stage], [stage], 0.1)  # the same stage objects, a new list
    assert stage.calls == 1 and ticket.predicted_s == 0.010
    admission.admit(path, path, 0.1)  # used once: the next admit predicts
    assert stage.calls == 2
    admission.refusal(path, 0.1)
    admission.admit([other], [other], 0.1)  # another path
    assert (stage.calls, other.calls) == (3, 1)
    admission.refusal(path, 0.1)
    now[0] += 2 * REUSE_S  # too long ago
    admission.admit(path, path, 0.1)
    assert stage.calls == 5
    stage.seconds = 0.2  # refused: nothing kept for the admit that follows
    assert admission.refusal(path, 0.1) is not None and stage.calls == 6
    with pytest.raises(Overloaded):
        admission.admit(path, path, 0.1)
    assert stage.calls == 7
