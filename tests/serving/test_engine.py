"""Stage engine: micro-batching, errors, deadlines, bounded queues (events, never sleeps)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from warmstart.serving.engine import (
    MIN_SAMPLES,
    BatchSizeMismatch,
    ComputePool,
    DeadlineExceeded,
    LoopLag,
    Overloaded,
    PauseHistogram,
    PoolCall,
    Stage,
    StageConfig,
)

TIMEOUT = 10.0  # safety net only: every wait below ends on an event long before this


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), TIMEOUT))


@pytest.fixture
def pool():
    p = ComputePool(workers=2, intra_op_threads=None)
    yield p
    p.shutdown()


class Gate:
    """A batch function that blocks its first call until released, recording every batch."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]] = lambda xs: [2 * x for x in xs]):
        self.fn = fn
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[Any]] = []

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(TIMEOUT)
        return self.fn(items)

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, TIMEOUT)

    async def blocked(self, name: str, pool: ComputePool, first: Any) -> tuple[Stage, Any]:
        """A started stage (max batch 8) whose worker is held in its first batch ``[first]``."""
        stage = Stage(name, self, StageConfig(max_batch=8), pool)
        await stage.start()
        task = asyncio.create_task(stage.submit(first))
        await self.wait_entered()
        return stage, task


def test_batched_results_equal_unbatched(pool):
    async def main():
        stage = Stage("double", lambda xs: [2 * x for x in xs], StageConfig(8, 0.001, 256), pool)
        await stage.start()
        out = await asyncio.gather(*(stage.submit(i) for i in range(100)))
        await stage.stop()
        return out, stage.metrics

    out, metrics = run(main)
    assert out == [2 * i for i in range(100)]
    assert sum(size * n for size, n in metrics.batch_sizes.items()) == 100
    assert max(metrics.batch_sizes) <= 8
    assert metrics.completed == 100 and metrics.failed == 0


def test_queued_items_form_one_batch_while_the_worker_is_busy(pool):
    gate = Gate()

    async def main():
        stage = Stage("g", gate, StageConfig(max_batch=16, max_wait_s=0.0), pool)
        await stage.start()
        first = asyncio.create_task(stage.submit(0))
        await gate.wait_entered()
        rest = [asyncio.create_task(stage.submit(i)) for i in range(1, 6)]
        while stage.depth < 5:  # let the tasks enqueue (no sleep: yield to the loop)
            await asyncio.sleep(0)
        gate.release.set()
        out = [await first, *(await asyncio.gather(*rest))]
        await stage.stop()
        return out

    assert run(main) == [0, 2, 4, 6, 8, 10]
    assert gate.batches == [[0], [1, 2, 3, 4, 5]]


def test_full_batch_does_not_wait_for_max_wait(pool):
    async def main():
        stage = Stage("b", lambda xs: xs, StageConfig(max_batch=4, max_wait_s=9.0), pool)
        await stage.start()
        # would take 9 s if the batcher waited for max_wait after the batch was full
        out = await asyncio.wait_for(asyncio.gather(*(stage.submit(i) for i in range(4))), 5)
        await stage.stop()
        return out, stage.metrics.batch_sizes

    out, sizes = run(main)
    assert out == [0, 1, 2, 3] and sizes == {4: 1}


def test_a_batch_filling_one_item_at_a_time_goes_once_full(pool):
    """Items that arrive while the worker already waits for more wake it when the batch is
    full, not at the end of ``max_wait_s``; and the worker waits with no task per item."""

    async def main():
        stage = Stage("f", lambda xs: xs, StageConfig(max_batch=4, max_wait_s=9.0), pool)
        await stage.start()
        first = asyncio.ensure_future(stage.submit(0))
        while not stage._filling:  # the worker took item 0 and now waits for more
            await asyncio.sleep(0)
        getters = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Queue.get"]
        rest = []
        for i in (1, 2, 3):
            rest.append(asyncio.ensure_future(stage.submit(i)))
            await asyncio.sleep(0)
        out = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
        await stage.stop()
        return out, stage.metrics.batch_sizes, getters

    out, sizes, getters = run(main)
    assert out == [0, 1, 2, 3] and sizes == {4: 1}
    assert getters == []  # the worker waits on its future, not in a task per queue.get()


def test_a_partial_batch_goes_at_the_end_of_the_wait(pool):
    async def main():
        stage = Stage("p", lambda xs: xs, StageConfig(max_batch=8, max_wait_s=0.05), pool)
        await stage.start()
        out = await asyncio.wait_for(asyncio.gather(stage.submit(1), stage.submit(2)), 5)
        await stage.stop()
        return out, stage.metrics.batch_sizes, stage._filling

    out, sizes, filling = run(main)
    assert out == [1, 2] and sizes == {2: 1} and filling == []


def test_an_error_reaches_every_waiter_of_the_batch(pool):
    def fn(xs):
        if "bad" in xs:
            raise ValueError("bad item in batch")
        return xs

    gate = Gate(fn)

    async def main():
        stage = Stage("e", gate, StageConfig(max_batch=8), pool)
        await stage.start()
        first = asyncio.create_task(stage.submit("ok"))
        await gate.wait_entered()
        batch = [asyncio.create_task(stage.submit(x)) for x in ("a", "bad", "c")]
        while stage.depth < 3:
            await asyncio.sleep(0)
        gate.release.set()
        results = await asyncio.gather(first, *batch, return_exceptions=True)
        after = await stage.submit("later")  # the stage keeps working
        await stage.stop()
        return results, after

    results, after = run(main)
    assert results[0] == "ok" and after == "later"
    assert all(isinstance(r, ValueError) for r in results[1:])


def test_wrong_result_count_fails_every_waiter(pool):
    async def main():
        stage = Stage("m", lambda xs: xs[:-1], StageConfig(max_batch=4, max_wait_s=1.0), pool)
        await stage.start()
        results = await asyncio.gather(*(stage.submit(i) for i in range(4)), return_exceptions=True)
        await stage.stop()
        return results

    assert all(isinstance(r, BatchSizeMismatch) for r in run(main))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_expired_request_is_dropped_at_the_stage_boundary(pool):
    gate, clock = Gate(), FakeClock()

    async def main():
        stage = Stage("d", gate, StageConfig(max_batch=8), pool, clock=clock)
        await stage.start()
        first = asyncio.create_task(stage.submit(1))
        await gate.wait_entered()
        late = asyncio.create_task(stage.submit(2, deadline=clock.now + 0.05))
        fine = asyncio.create_task(stage.submit(3, deadline=clock.now + 10))
        while stage.depth < 2:
            await asyncio.sleep(0)
        clock.now += 1.0  # the first deadline passes while the item waits in the queue
        gate.release.set()
        results = await asyncio.gather(first, late, fine, return_exceptions=True)
        with pytest.raises(DeadlineExceeded):  # already late at submission: refused at once
            await stage.submit(4, deadline=clock.now - 1)
        await stage.stop()
        return results, stage.metrics.expired

    (r1, r2, r3), expired = run(main)
    assert r1 == 2 and r3 == 6 and isinstance(r2, DeadlineExceeded)
    assert gate.batches == [[1], [3]]  # the expired item never reached the function
    assert expired == 2


def test_request_expiring_in_the_queue_is_answered_at_its_deadline(pool):
    gate = Gate()

    async def main():
        stage, first = await gate.blocked("e", pool, 1)
        # the worker is stuck in the first batch: the queued item fails when its deadline
        # passes, not when a worker would reach it
        with pytest.raises(DeadlineExceeded, match="in the queue"):
            await stage.submit(2, deadline=time.monotonic() + 0.02)
        assert not gate.release.is_set()
        gate.release.set()
        assert await first == 2
        await stage.stop()
        return gate.batches, stage.metrics.expired

    batches, expired = run(main)
    assert batches == [[1]] and expired == 1


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priority here")
def test_compute_threads_run_below_the_event_loop_priority():
    pool = ComputePool(workers=1, intra_op_threads=None, nice=5)
    try:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = pool.executor.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result(TIMEOUT)
    finally:
        pool.shutdown()
    assert theirs == min(19, mine + 5)
    with pytest.raises(ValueError, match="nice"):
        ComputePool(nice=20)


def test_full_queue_rejects_at_once_and_loses_no_future(pool):
    gate = Gate()

    async def main():
        stage = Stage("q", gate, StageConfig(max_batch=1, queue_size=2), pool)
        await stage.start()
        tasks = [asyncio.create_task(stage.submit(0))]
        await gate.wait_entered()
        tasks += [asyncio.create_task(stage.submit(i)) for i in (1, 2)]
        while stage.depth < 2:
            await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await stage.submit(3)
        gate.release.set()
        out = await asyncio.gather(*tasks)
        await stage.stop()
        return out, info.value, stage.metrics

    out, err, metrics = run(main)
    assert out == [0, 2, 4]
    assert err.retry_after_s >= 1.0 and metrics.rejected == 1 and metrics.completed == 3


def test_cancelled_caller_is_skipped(pool):
    gate = Gate()

    async def main():
        stage, first = await gate.blocked("c", pool, 0)
        gone = asyncio.create_task(stage.submit(1))
        kept = asyncio.create_task(stage.submit(2))
        while stage.depth < 2:
            await asyncio.sleep(0)
        gone.cancel()
        gate.release.set()
        out = await asyncio.gather(first, kept)
        await stage.stop()
        return out

    assert run(main) == [0, 4]
    assert gate.batches == [[0], [2]]


def test_coroutine_stage_runs_on_the_loop_and_blocking_needs_a_pool():
    async def fetch(xs):
        await asyncio.sleep(0)
        return [x + 1 for x in xs]

    async def main():
        stage = Stage("io", fetch, StageConfig(max_batch=4))
        await stage.start()
        out = await asyncio.gather(*(stage.submit(i) for i in range(6)))
        snap = stage.snapshot()
        await stage.stop()
        return out, snap

    out, snap = run(main)
    assert out == [1, 2, 3, 4, 5, 6]
    assert snap["completed"] == 6 and snap["name"] == "io"
    with pytest.raises(ValueError, match="ComputePool"):
        Stage("blocking", lambda xs: xs)


def test_stopped_stage_refuses_and_config_is_validated(pool):
    async def main():
        stage = Stage("s", lambda xs: xs, pool=pool)
        with pytest.raises(Overloaded, match="not running"):
            await stage.submit(1)

    run(main)
    with pytest.raises(ValueError, match="max_batch"):
        StageConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        StageConfig(max_wait_s=-1)


@pytest.mark.parametrize("seen_size", [2, 1])
def test_predicted_wait_grows_with_queue_depth(pool, seen_size):
    gate = Gate()

    now = [100.0]

    async def main():
        config = StageConfig(max_batch=2, queue_size=64)
        stage = Stage("p", gate, config, pool, clock=lambda: now[0])  # time moves by hand
        await stage.start()
        for _ in range(MIN_SAMPLES):  # as if the batches so far had taken 10 ms each
            stage.metrics.observe_service(0.010, seen_size, at=100.0)
        empty = stage.predicted_wait_s()
        first = asyncio.create_task(stage.submit(0))
        await gate.wait_entered()
        rest = [asyncio.create_task(stage.submit(i)) for i in range(1, 9)]
        while stage.depth < 8:
            await asyncio.sleep(0)
        loaded = stage.predicted_wait_s()
        now[0] += 0.004  # the batch in flight has run 4 ms: that much less of it is left
        later = stage.predicted_wait_s()
        gate.release.set()
        await asyncio.gather(first, *rest)
        await stage.stop()
        return empty, loaded, later

    empty, loaded, later = run(main)
    assert later == pytest.approx(loaded - 0.004)
    assert empty == pytest.approx(0.010)
    if seen_size == 2:  # 9 items in 2-item batches = 5 batches + the one in flight
        assert loaded == pytest.approx(6 * 0.010)
    else:  # only 1-item batches seen: a 2-item batch is predicted to take twice as long
        assert loaded == pytest.approx(5 * 0.020 + 0.010)


@pytest.mark.parametrize("light", [False, True])
def test_weighted_stage_predicts_the_work_queued_not_the_item_count(pool, light):
    gate = Gate()

    async def main():
        config = StageConfig(max_batch=2, queue_size=64)
        stage = Stage("w", gate, config, pool, clock=lambda: 100.0, weight=lambda x: x)
        await stage.start()
        for _ in range(MIN_SAMPLES):  # calls on 1.0 of work took 10 ms each
            stage.metrics.observe_service(0.010, 1.0, at=100.0)
        first = asyncio.create_task(stage.submit(1.0))
        await gate.wait_entered()
        rest = [asyncio.create_task(stage.submit(0.25 if light else 1.0)) for _ in range(8)]
        while stage.depth < 8:
            await asyncio.sleep(0)
        predicted = stage.predicted_wait_s()
        gate.release.set()
        await asyncio.gather(first, *rest)
        work_seen = list(stage.metrics.recent_sizes._values)[MIN_SAMPLES:]
        await stage.stop()
        return predicted, work_seen

    predicted, work_seen = run(main)
    # 8 queued + the new one (counted at 1.0) in 2-item batches: 5 batches + the one in flight
    if light:  # 3.0 of work in 9 items: batches of 2/3 cost no more than the 10-ms median
        assert predicted == pytest.approx(5 * 0.010 + 0.010)
        assert work_seen == [1.0, 0.5, 0.5, 0.5, 0.5]  # the calls are measured in work too
    else:  # as an unweighted stage: 2.0 of work a batch, twice the seen 1.0
        assert predicted == pytest.approx(5 * 0.020 + 0.010)
        assert work_seen == [1.0, 2.0, 2.0, 2.0, 2.0]


def test_loop_lag_is_the_worst_lateness_of_its_window():
    now = [0.0]
    lag = LoopLag(interval_s=0.005, window=3, clock=lambda: now[0])
    for due, fired in [(1.0, 1.001), (2.0, 2.030), (3.0, 3.002), (4.0, 3.999)]:
        now[0] = fired
        lag.tick(due)
    assert lag.value == pytest.approx(0.030)  # the window still holds the 30 ms tick
    now[0] = 5.0
    lag.tick(5.0)
    assert lag.value == pytest.approx(0.002)  # ... and now no longer


def test_loop_lag_ticks_on_the_running_loop_until_stopped():
    async def main():
        lag = LoopLag(interval_s=0.001, window=2)
        ticked = asyncio.Event()
        inner = lag.tick

        def tick(due):
            inner(due)
            ticked.set()

        lag.tick = tick
        lag.start()
        lag.start()  # idempotent
        await asyncio.wait_for(ticked.wait(), 30)
        lag.stop()
        ticked.clear()
        return lag

    lag = asyncio.run(main())
    assert lag._handle is None and lag.value >= 0.0


def test_pause_histogram_counts_by_length_and_keeps_the_longest():
    h = PauseHistogram()
    for seconds in (0.0005, 0.001, 0.015, 0.020, 0.021, 0.250):
        h.add(seconds)
    snap = h.snapshot()
    assert snap["counts"] == {"<=1ms": 2, "<=2ms": 0, "<=5ms": 0, "<=10ms": 0, "<=20ms": 2,
                              "<=50ms": 1, "<=100ms": 0, ">100ms": 1}  # fmt: skip
    assert snap["longest_ms"] == pytest.approx(250.0)


def test_loop_lag_histogram_counts_every_tick():
    now = [0.0]
    lag = LoopLag(interval_s=0.005, window=2, clock=lambda: now[0])
    for late in (0.0, 0.030, 0.0):
        now[0] += 0.005 + late
        lag.tick(now[0] - late)
    assert lag.value == pytest.approx(0.030)  # the worst of the last 2 ticks
    assert lag.histogram.counts[0] == 2 and lag.histogram.snapshot()["counts"]["<=50ms"] == 1


def test_a_compute_call_is_timed_from_its_pool_thread_and_the_pool_backlog_counted_once():
    """Two stages share a one-thread pool. A cheap call handed while a slow one holds the
    thread is timed from when the thread starts it (its own 2 ms, not the 50 ms it waited:
    summing the stages' waits would count that wait twice), and while the slow call runs a
    request through the cheap stage alone is predicted to wait for what is left of it
    (``ComputePool.backlog_s``, counted once by ``Admission.predict_s``)."""
    from warmstart.serving.admission import Admission

    now = [10.0]
    single = ComputePool(workers=1, intra_op_threads=None)

    def slow_fn(xs: list[Any]) -> list[Any]:
        now[0] += 0.050
        return xs

    def cheap_fn(xs: list[Any]) -> list[Any]:
        now[0] += 0.002
        return xs

    gate = Gate(slow_fn)
    slow = Stage("slow", gate, StageConfig(), single, clock=lambda: now[0])
    cheap = Stage("cheap", cheap_fn, StageConfig(), single, clock=lambda: now[0])
    for _ in range(MIN_SAMPLES):  # slow calls took 40 ms before
        slow.metrics.observe_service(0.040, 1, at=now[0])
    admission = Admission()

    async def main() -> float:
        await slow.start()
        await cheap.start()
        held = asyncio.create_task(slow.submit(1))
        await gate.wait_entered()  # the slow call holds the thread, started at 10.000
        queued = asyncio.create_task(cheap.submit(2))
        while len(single.calls) != 2:  # the cheap call is handed and waits
            await asyncio.sleep(0)
        now[0] += 0.010
        backlog = single.backlog_s(now[0], [cheap])
        assert backlog == pytest.approx(0.030)  # 40 ms predicted, 10 ms gone
        assert single.backlog_s(now[0], [slow, cheap]) == pytest.approx(0.0)
        predicted = admission.predict_s([cheap])
        gate.release.set()
        assert await held == 1 and await queued == 2
        await slow.stop()
        await cheap.stop()
        return predicted

    try:
        predicted = run(main)
    finally:
        single.shutdown()
    assert not single.calls  # both finished: none left in the ledger
    # the cheap stage: its own call in the pool (no timings yet: a probe, 0) and the backlog
    assert predicted == pytest.approx(0.030)
    assert list(cheap.metrics.service._values) == [pytest.approx(0.002)]
    assert cheap.metrics.wait._values[0] == pytest.approx(0.0)  # it left its queue at once


def test_the_loop_yields_the_core_only_while_the_pool_has_a_call(monkeypatch):
    """``yield_loop``: one sleep of ``loop_yield_s`` once the ready callbacks ran, only while
    a call of the pool is queued or running; at most one pending."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # recorded, not slept
    pool = ComputePool(1, None, loop_yield_s=0.004)

    async def main() -> None:
        pool.yield_loop()  # an idle pool: nothing to give the core to
        await asyncio.sleep(0)
        assert slept == [] and pool.loop_yields == 0
        pool.calls[1] = PoolCall(None, 0.01)  # a batch handed to the pool
        pool.yield_loop()
        pool.yield_loop()  # already pending: still one sleep
        assert slept == []  # not before the loop has run what is ready
        await asyncio.sleep(0)
        assert slept == [0.004] and pool.loop_yields == 1
        pool.yield_loop()
        await asyncio.sleep(0)
        assert slept == [0.004, 0.004]
        del pool.calls[1]
        pool.yield_loop()
        await asyncio.sleep(0)
        assert pool.loop_yields == 2

    try:
        run(main)
    finally:
        pool.shutdown()
    off = ComputePool(1, None)  # the default: never
    try:
        off.calls[1] = PoolCall(None, 0.01)
        run(lambda: _yield_once(off))
        assert off.loop_yields == 0
    finally:
        off.shutdown()
    with pytest.raises(ValueError, match="loop_yield_s"):
        ComputePool(1, None, loop_yield_s=1.0)


async def _yield_once(pool: ComputePool) -> None:
    pool.yield_loop()
    await asyncio.sleep(0)


def test_a_stage_yields_the_loop_after_handing_a_batch_to_its_pool(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    pool = ComputePool(1, None, loop_yield_s=0.002)
    started, release = threading.Event(), threading.Event()

    def fn(values: list[int]) -> list[int]:
        started.set()
        release.wait(TIMEOUT)
        return [v + 1 for v in values]

    stage: Stage[int, int] = Stage("s", fn, StageConfig(max_batch=4), pool)

    async def main() -> int:
        await stage.start()
        try:
            answer = asyncio.ensure_future(stage.submit(1))
            while not pool.calls:  # the worker hands the batch to the pool
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert slept == [0.002]  # the batch was running (or waiting for its thread)
            release.set()
            return await answer
        finally:
            release.set()
            await stage.stop()

    try:
        assert run(main) == 2
    finally:
        pool.shutdown()
