"""Stage engine: bounded queues, per-stage workers, micro-batching and deadlines.

Implements the Staged Event-Driven Pipeline of JIZHI (Liu et al., KDD 2021, arXiv 2106.01674),
after SEDA: a request's work is a chain of stages; each stage has its own bounded input queue,
its own number of workers and its own executor (the event loop for I/O written as coroutines,
a bounded thread pool for torch/numpy work, so no model ever runs on the event loop).

Every stage micro-batches: a worker takes the first queued item, then keeps collecting until
``max_batch`` items or ``max_wait_s`` have passed, and calls the stage function once on the
list. Each caller awaits its own future; the function must return one result per item (checked),
and an exception reaches every waiter of the batch. A stage with ``max_batch=1`` is a plain
per-request stage. Requests carry an absolute deadline (``time.monotonic()`` seconds); a request
whose deadline has passed is dropped when it reaches a stage, before any compute is spent on it.

Usage::

    pool = ComputePool(workers=2, intra_op_threads=1)
    stage = Stage("rank", rank_batch, StageConfig(max_batch=32, max_wait_s=0.002), pool)
    await stage.start()
    scores = await stage.submit(item, deadline=time.monotonic() + 0.1)
    await stage.stop()
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MIN_SAMPLES = 3  # measured batches before a stage's service time is used for prediction
STALE_AFTER_S = 1.0  # an idle stage whose last call ended this long ago re-measures itself

BatchFn = Callable[[list[Any]], Sequence[Any]] | Callable[[list[Any]], Awaitable[Sequence[Any]]]


class Overloaded(Exception):
    """The request was refused at admission (queue full or predicted wait over the deadline).

    Attributes:
        retry_after_s: a hint for the client's ``Retry-After``.
    """

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before a stage could start its work."""


class BatchSizeMismatch(RuntimeError):
    """A stage function returned a different number of results than items it was given."""


@dataclass
class PoolCall:
    """A call handed to a compute pool and not finished: its stage, its predicted seconds and
    when a pool thread started it (on the stage's clock; None while it waits for a thread)."""

    stage: Any
    predicted_s: float
    started: float | None = None


def calls_backlog_s(
    calls: Iterable[PoolCall], now: float, skip: Collection[Any], workers: int
) -> float:
    """Seconds of work a pool's ``workers`` threads have ahead of a call handed now, from the
    ``calls`` of stages not in ``skip`` (a stage predicts its own calls itself): what is left of
    those running (predicted less elapsed) and all of those waiting for a thread, shared by the
    workers (the engine's ``ComputePool.backlog_s`` and the planner's simulator)."""
    total = 0.0
    for call in calls:
        if call.stage not in skip:
            left = (
                call.predicted_s
                if call.started is None
                else call.predicted_s - (now - call.started)
            )
            total += max(0.0, left)
    return total / workers


class ComputePool:
    """A bounded thread pool for model work with a fixed intra-op thread count.

    torch's intra-op thread count is a process-wide setting, so it is applied once here, when
    the server builds its pool at start-up, never inside a request.

    Each thread may run at a lower CPU priority than the event loop (``nice``, Linux per-thread
    niceness): when the server shares a core with its model threads, the loop then keeps
    parsing, admitting and refusing requests at once instead of waiting for the core behind a
    batch, so refusals stay fast and admission sees requests when they arrive.

    Args:
        workers: threads running model calls concurrently (each call is one batch).
        intra_op_threads: torch threads each call may use (``None`` leaves torch's setting).
        nice: niceness added to each pool thread (0 = the loop's priority; ignored where the
            platform has no per-thread priority).
        name: thread name prefix.
        loop_yield_s: after the event loop hands this pool a call or takes in a request, it
            sleeps this long once it has run what is ready, if a call of the pool is still
            queued or running (:meth:`yield_loop`); 0 never. For a server whose loop shares
            a core with the pool's threads: see ``ComputeConfig.loop_yield_ms``.
    """

    def __init__(
        self,
        workers: int = 1,
        intra_op_threads: int | None = 1,
        nice: int = 0,
        name: str = "ws-compute",
        loop_yield_s: float = 0.0,
    ) -> None:
        if not 0 <= loop_yield_s <= 0.1:
            raise ValueError(f"ComputePool.loop_yield_s must lie in [0, 0.1], got {loop_yield_s}")
        if not 0 <= nice <= 19:
            raise ValueError(f"ComputePool.nice must lie in [0, 19], got {nice}")
        if workers < 1:
            raise ValueError(f"ComputePool.workers must be >= 1, got {workers}")
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(
                    f"ComputePool.intra_op_threads must be >= 1 or None, got {intra_op_threads}"
                )
            import torch

            torch.set_num_threads(intra_op_threads)
        self.workers = workers
        self.intra_op_threads = intra_op_threads
        self.nice = nice
        self.executor = ThreadPoolExecutor(
            workers, thread_name_prefix=name, initializer=_lower_priority, initargs=(nice,)
        )
        self.calls: dict[int, PoolCall] = {}  # handed to the executor and not finished
        self.loop_yield_s = loop_yield_s
        self.loop_yields = 0  # how often the loop slept for this pool (``yield_loop``)
        self._yield_pending = False

    def yield_loop(self) -> None:
        """Called on the event loop after it handed this pool a call or took in a request:
        once the loop has run the callbacks now ready, it sleeps ``loop_yield_s`` if a call of
        the pool is still queued or running (else nothing; at most one sleep is pending).

        Why: where the loop and a model thread share one core, each request the loop woke
        for took the core from the batch in progress: at ~900 requests/s the loop woke about
        once per request (voluntary context switches per answer, from ``/proc``). Sleeping lets the batch run
        for a slice, and the loop then reads every request that arrived meanwhile in one
        pass; the model's next batch is fuller too. Requests wait up to one slice more.
        """
        if self.loop_yield_s > 0 and not self._yield_pending:
            self._yield_pending = True
            asyncio.get_running_loop().call_soon(self._yield)

    def _yield(self) -> None:
        self._yield_pending = False
        if self.calls:
            self.loop_yields += 1
            time.sleep(self.loop_yield_s)  # the GIL is free meanwhile: the batch runs

    def backlog_s(self, now: float, skip: Collection[Any] = ()) -> float:
        """:func:`calls_backlog_s` of this pool's calls."""
        return calls_backlog_s(list(self.calls.values()), now, skip, self.workers)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux: threads have their own)."""
    if nice and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


PAUSE_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100)  # upper bounds of PauseHistogram's buckets


class PauseHistogram:
    """Counts of pauses (seconds) by length: up to each of ``PAUSE_BUCKETS_MS``, then longer;
    and the longest. Cumulative, so the difference of two snapshots is what happened between
    them (the benchmark's flood)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(PAUSE_BUCKETS_MS) + 1)
        self.longest = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(PAUSE_BUCKETS_MS, 1e3 * seconds)] += 1
        self.longest = max(self.longest, seconds)

    def snapshot(self) -> dict[str, Any]:
        labels = [f"<={b}ms" for b in PAUSE_BUCKETS_MS] + [f">{PAUSE_BUCKETS_MS[-1]}ms"]
        return {
            "counts": dict(zip(labels, self.counts, strict=True)),
            "longest_ms": 1e3 * self.longest,
        }


class LoopLag:
    """How late the event loop runs: a timer every ``interval_s``; :attr:`value` is the most
    it fired late over the last ``window`` ticks (seconds); :attr:`histogram` counts every
    tick's lateness since the start (``PauseHistogram``: how often, and how long, the loop
    stalled).

    A request waiting in its socket while the loop is busy is invisible to the stage queues;
    the loop's lateness is that wait, so admission counts it as time already spent (on one core
    the loop shares the CPU and the GIL with the model threads and with any other process).

    Args:
        interval_s: seconds between ticks.
        window: ticks the maximum runs over (``interval_s * window`` seconds of memory).
        clock: monotonic clock (injectable for tests, which may call :meth:`tick` themselves).
    """

    def __init__(
        self,
        interval_s: float = 0.005,
        window: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or window < 1:
            raise ValueError(
                f"LoopLag: need interval_s > 0 and window >= 1, got {interval_s}, {window}"
            )
        self.interval_s = interval_s
        self.clock = clock
        self.value = 0.0
        self.histogram = PauseHistogram()
        self._recent: deque[float] = deque(maxlen=window)
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start ticking on the running loop (idempotent)."""
        if self._handle is None:
            self._arm(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self, due: float) -> None:
        """One tick, due at ``due``: record how late it ran."""
        late = max(0.0, self.clock() - due)
        self._recent.append(late)
        self.value = max(self._recent)
        self.histogram.add(late)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = self.clock() + self.interval_s
        self._handle = loop.call_later(self.interval_s, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tick(self._due)
        self._arm(loop)


@dataclass(frozen=True)
class StageConfig:
    """How one stage queues, batches and runs.

    Attributes:
        max_batch: most items per call of the stage function (1 = no batching).
        max_wait_s: longest a worker waits for more items after the first one.
        queue_size: bound of the input queue; a full queue refuses new items at once.
        concurrency: workers (batches in flight at once).
    """

    max_batch: int = 1
    max_wait_s: float = 0.0
    queue_size: int = 1024
    concurrency: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"StageConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_s < 10:
            raise ValueError(f"StageConfig.max_wait_s must lie in [0, 10), got {self.max_wait_s}")


class Window:
    """The last ``size`` observations, for quantiles and a mean (bounded memory)."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def mean(self) -> float:
        return sum(self._values) / len(self._values) if self._values else 0.0

    def quantile(self, q: float) -> float:
        if not self._values:
            return 0.0
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def predicted_wait(
    queued: int,
    config: StageConfig,
    batch_seconds: Callable[[float], float],
    busy: int,
    busy_items: float,
    elapsed: float = 0.0,
    work: float | None = None,
) -> float:
    """Seconds until the last of ``queued`` items is done at a stage (``Stage.predicted_wait_s``;
    the planner's simulator predicts with the same function): ``ceil(queued / max_batch)``
    batches shared by ``concurrency`` workers, each ``batch_seconds`` of its size, plus what is
    left of the ``busy`` calls in flight on ``busy_items`` (their predicted time less the
    ``elapsed`` seconds since the latest of them started), plus ``max_wait_s`` for a batch
    that won't fill.

    ``work``: for a stage whose items differ in cost (``Stage(weight=...)``), the ``queued``
    items' total work in the units ``batch_seconds`` takes; a batch then weighs its share of it,
    and ``busy_items`` is the work in flight. ``None``: one unit per item."""
    rounds = math.ceil(math.ceil(queued / config.max_batch) / config.concurrency)
    wait = config.max_wait_s if queued < config.max_batch else 0.0
    in_flight = max(0.0, batch_seconds(busy_items / busy) - max(0.0, elapsed)) if busy else 0.0
    per_item = 1.0 if work is None or queued <= 0 else work / queued
    return rounds * batch_seconds(per_item * min(queued, config.max_batch)) + in_flight + wait


def pool_backlog_s(stages: Sequence[Stage[Any, Any]]) -> float:
    """``ComputePool.backlog_s`` of every compute pool ``stages`` use, of the calls of the
    other stages: the work a request through ``stages`` finds ahead of it in the pools."""
    pools = {id(p): p for p in (getattr(s, "pool", None) for s in stages) if p is not None}
    if not pools:
        return 0.0
    now = stages[0].clock()
    return sum(pool.backlog_s(now, stages) for pool in pools.values())


@dataclass
class StageMetrics:
    """Counters and windows of one stage (read by /metrics and /v1/stats).

    ``service`` holds seconds per batch call (a compute call's from when a pool thread starts
    it: the wait for the thread is the pool's backlog, ``ComputePool.backlog_s``), ``wait``
    seconds from submission to the start of the item's batch; ``batch_sizes`` counts calls by batch size. ``recent`` holds the last few
    service times, whose median predicts the next (robust to a slow first call or a stall), and
    ``recent_sizes`` their batch sizes; ``last_at`` is when the latest call ended.
    ``restart_window`` starts them afresh (a stage that sat idle: its old timings may come from
    a slower moment) while the last medians stay in use until ``MIN_SAMPLES`` new calls
    replace them.
    """

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    service: Window = field(default_factory=Window)
    wait: Window = field(default_factory=Window)
    recent: Window = field(default_factory=lambda: Window(32))
    recent_sizes: Window = field(default_factory=lambda: Window(32))
    # medians of ``recent`` and ``recent_sizes``, kept per call so a prediction (per request) sorts
    # nothing; 0 s until ``MIN_SAMPLES`` calls
    _median_s: float = field(default=0.0, repr=False)
    _typical: float = field(default=1.0, repr=False)
    _per_item: float = field(default=0.0, repr=False)  # seconds per item past ``_typical``
    _cap: float = field(default=0.0, repr=False)  # ... past the largest recent batch
    _largest: float = field(default=1.0, repr=False)
    last_at: float = -math.inf

    def observe_service(self, seconds: float, items: float = 1, at: float | None = None) -> None:
        """One call of ``seconds`` on ``items`` (or their work, for a weighted stage), ended at
        ``at`` (the stage's clock; default ``time.monotonic()``)."""
        self.last_at = time.monotonic() if at is None else at
        self.service.add(seconds)
        self.recent.add(seconds)
        self.recent_sizes.add(items)
        if len(self.recent) >= MIN_SAMPLES:
            self._median_s = self.recent.quantile(0.5)
            self._typical = max(1.0, self.recent_sizes.quantile(0.5))
            self._cap = self._per_item = self._median_s / self._typical
            self._largest = self.recent_sizes.quantile(1.0)
            slope = _size_slope(self.recent, self.recent_sizes)
            if slope is not None:  # a noisy window may show no slope: no batch is free
                self._per_item = min(self._cap, max(self._cap / 4, slope))

    def restart_window(self) -> None:
        self.recent.clear()
        self.recent_sizes.clear()

    def call_started(self, now: float, busy: int) -> None:
        """A call starts at ``now`` with ``busy`` calls in flight (itself included): after an
        idle spell of over ``STALE_AFTER_S`` the window starts afresh (``restart_window``)."""
        if busy == 1 and now - self.last_at > STALE_AFTER_S:
            self.restart_window()

    def probing(self, now: float, extra: int, load: int) -> bool:
        """Whether one more request (``extra`` <= 1) at a stage with no ``load`` is a probe that
        predicts 0: its last call ended over ``STALE_AFTER_S`` ago, or fewer than
        ``MIN_SAMPLES`` calls were measured since the window (re)started."""
        return (
            extra <= 1
            and load == 0
            and (now - self.last_at > STALE_AFTER_S or len(self.recent) < MIN_SAMPLES)
        )

    def batch_seconds(self, items: float) -> float:
        """Predicted seconds of one call on ``items``: the median recent call, plus a cost per
        item for the items past the median recent batch size (0 before ``MIN_SAMPLES`` calls).

        Up to the largest recent batch, the cost per item is the slope measured across the
        recent batch sizes (the median of the slopes between the median times of each size
        seen: robust to a slow call), at most the median call's own cost per item and at least
        a quarter of it; past it, and when only one size was seen, it is that cap: the time
        scales in proportion, an upper bound of a fixed cost plus a cost per item, so a queue
        that grows past the batches seen so far (the start of a flood) is not predicted at
        small-batch speed. A model whose
        batches amortise a fixed cost (the search encoder: ~4.5 ms + ~2.6 ms a query on one
        core) is then not predicted at ~7 ms a query within the batch sizes it has run."""
        seen = max(0.0, min(items, self._largest) - self._typical)
        beyond = max(0.0, items - max(self._largest, self._typical))
        return self._median_s + self._per_item * seen + self._cap * beyond

    def snapshot(self, queue_depth: int, busy: int) -> dict[str, Any]:
        return {
            "queue_depth": queue_depth,
            "busy_workers": busy,
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "expired": self.expired,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "service_ms": _ms(self.service),
            "wait_ms": _ms(self.wait),
        }


def _size_slope(seconds: Window, sizes: Window) -> float | None:
    """Median slope (seconds per item) between the median times of the batch sizes in the
    windows (paired newest first), or ``None`` when fewer than two sizes were seen."""
    by_size: dict[float, list[float]] = {}
    for n, s in zip(reversed(sizes._values), reversed(seconds._values), strict=False):
        by_size.setdefault(n, []).append(s)
    if len(by_size) < 2:
        return None
    points = sorted((n, sorted(v)[(len(v) - 1) // 2]) for n, v in by_size.items())
    slopes = sorted(
        (t2 - t1) / (n2 - n1) for i, (n1, t1) in enumerate(points) for n2, t2 in points[i + 1 :]
    )
    return slopes[(len(slopes) - 1) // 2]


def _ms(window: Window) -> dict[str, float]:
    return {
        "mean": 1e3 * window.mean(),
        "p50": 1e3 * window.quantile(0.5),
        "p99": 1e3 * window.quantile(0.99),
    }


@dataclass
class _Item:
    value: Any
    future: asyncio.Future[Any]
    deadline: float | None
    enqueued: float
    timer: asyncio.TimerHandle | None = None
    weight: float = 1.0


class Stage(Generic[T, R]):
    """One pipeline stage: a bounded queue, ``concurrency`` workers, a batch function.

    Args:
        name: shown in metrics and errors.
        fn: ``fn(items) -> results`` with ``len(results) == len(items)``; a coroutine function
            runs on the event loop (I/O), a plain function in ``pool`` (compute).
        config: batching and queueing.
        pool: where plain functions run; required for them (never the event loop).
        clock: monotonic clock (injectable for tests).
        weight: for items that differ in cost, ``weight(value)``: an item's work relative to a
            typical one (1.0; e.g. a recommend request ranking fewer candidates weighs less).
            The stage then measures its calls per unit of work and predicts a queue from the
            work in it, not its length, so a queue whose mix of cheap and costly items changes
            is not mispredicted. ``None``: every item weighs 1.
    """

    def __init__(
        self,
        name: str,
        fn: BatchFn,
        config: StageConfig | None = None,
        pool: ComputePool | None = None,
        clock: Callable[[], float] = time.monotonic,
        weight: Callable[[Any], float] | None = None,
    ) -> None:
        self.name = name
        self.weight = weight
        self.fn = fn
        self.config = config or StageConfig()
        self._is_async = inspect.iscoroutinefunction(fn)
        if not self._is_async and pool is None:
            raise ValueError(f"stage {name!r}: a blocking function needs a ComputePool")
        self.pool = pool
        self.clock = clock
        self.metrics = StageMetrics()
        self._queue: asyncio.Queue[_Item] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self._busy_items = 0
        self._queued_work = 0.0  # the weights of the items queued (``weight``)
        self._busy_work = 0.0  # ... and of the items being computed
        self._last_start = -math.inf  # the latest call's start (clock seconds)
        # the workers waiting for their batch to fill (``_collect``): a future that ``submit``
        # completes once that many items are queued
        self._filling: list[tuple[asyncio.Future[bool], int]] = []
        # traffic log hook (serving.trafficlog.StageRecorder): called with (items, start, end)
        self.recorder: Callable[[list[_Item], float, float], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._workers:
            return
        self._queue = asyncio.Queue(self.config.queue_size)
        self._workers = [
            asyncio.create_task(self._work(), name=f"stage-{self.name}-{i}")
            for i in range(self.config.concurrency)
        ]

    async def stop(self) -> None:
        """Cancel the workers; items still queued fail with ``Overloaded``."""
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            _fail(item.future, Overloaded(f"stage {self.name!r} stopped"))

    # ------------------------------------------------------------------ submission

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def load(self) -> int:
        """Items queued or being computed here."""
        return self.depth + self._busy_items

    def predicted_wait_s(self, extra: int = 1) -> float:
        """Expected seconds until ``extra`` newly submitted items are done at this stage
        (``extra`` may include items that upstream stages will hand over first).

        Queued items form ``ceil((depth + extra) / max_batch)`` batches of up to ``max_batch``
        shared by the workers; each takes ``StageMetrics.batch_seconds`` of its size (0 until
        ``MIN_SAMPLES`` batches were measured: a cold stage's first calls are slow and say
        little). A busy stage adds what is left of its batches in flight. A weighted stage
        (``weight``) counts the queued and in-flight items' work instead of their number, the
        ``extra`` items at 1.0 each (a typical item: the new request may be a costly one).

        An idle stage (nothing queued, in flight or on its way: ``extra`` <= 1) predicts 0 when
        its last call ended over ``STALE_AFTER_S`` ago, and until ``MIN_SAMPLES`` calls since
        then re-measured it (``StageMetrics.restart_window``): a stage that admission refuses
        or skips gets no new timings, so a median from a slow moment would otherwise refuse
        for ever. Such a request is a probe, one at a time.
        """
        now = self.clock()
        if self.metrics.probing(now, extra, self.load):
            return 0.0
        weighted = self.weight is not None
        return predicted_wait(
            self.depth + extra,
            self.config,
            self.metrics.batch_seconds,
            self._busy,
            self._busy_work if weighted else self._busy_items,
            now - self._last_start,
            self._queued_work + extra if weighted else None,
        )

    async def submit(self, value: T, deadline: float | None = None) -> R:
        """Queue ``value`` and await its result.

        Raises:
            Overloaded: the queue is full (or the stage is not running).
            DeadlineExceeded: the deadline passed before the stage started on it.
        """
        if self._queue is None or not self._workers:
            raise Overloaded(f"stage {self.name!r} is not running")
        if deadline is not None and self.clock() >= deadline:
            self.metrics.expired += 1
            raise DeadlineExceeded(f"deadline passed before stage {self.name!r}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        weight = 1.0 if self.weight is None else self.weight(value)
        item = _Item(value, future, deadline, self.clock(), weight=weight)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.rejected += 1
            raise Overloaded(
                f"stage {self.name!r} queue is full ({self.config.queue_size})",
                retry_after_s=max(1.0, self.predicted_wait_s(0)),
            ) from None
        self.metrics.submitted += 1
        self._queued_work += weight
        for filling, wanted in self._filling:  # a waiting worker whose batch is now full
            if self._queue.qsize() >= wanted:  # goes at once
                _finish(filling, False)
        if deadline is not None:  # answer a request that expires in the queue at its deadline
            item.timer = loop.call_later(deadline - item.enqueued, self._expire, item)
        return await future

    def _expire(self, item: _Item) -> None:
        if not item.future.done():
            self.metrics.expired += 1
            _fail(item.future, DeadlineExceeded(f"deadline passed in the queue of {self.name!r}"))

    # ------------------------------------------------------------------ workers

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect(self._queue)
            if batch:
                await self._run(batch)

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        """The next batch: the first item, then whatever arrives within ``max_wait_s``.

        While it waits, the worker sleeps on one future that ``submit`` completes once the
        batch could be full, or a timer at the end of the wait: no task or timeout per
        arriving item (``asyncio.wait_for`` on ``queue.get()`` cost both, on the event loop,
        for every item of a batch that was still filling)."""
        items = [self._taken(await queue.get())]
        end = self.clock() + self.config.max_wait_s
        loop, timed_out = asyncio.get_running_loop(), False
        while len(items) < self.config.max_batch:
            if not queue.empty():
                items.append(self._taken(queue.get_nowait()))
                continue
            remaining = end - self.clock()
            if timed_out or remaining <= 0:
                break
            waiter = (loop.create_future(), self.config.max_batch - len(items))
            self._filling.append(waiter)
            timer = loop.call_later(remaining, _finish, waiter[0], True)
            try:
                timed_out = await waiter[0]
            finally:
                timer.cancel()
                self._filling.remove(waiter)
        return self._live(items)

    def _taken(self, item: _Item) -> _Item:
        """``item`` left the queue: its work no longer counts as queued."""
        self._queued_work = max(0.0, self._queued_work - item.weight)
        return item

    def _live(self, items: list[_Item]) -> list[_Item]:
        """Drop items whose caller went away or whose deadline passed (at the boundary)."""
        now, live = self.clock(), []
        for item in items:
            if item.timer is not None:
                item.timer.cancel()
            if item.future.done():  # cancelled by its caller, or expired in the queue
                continue
            if item.deadline is not None and now >= item.deadline:
                self.metrics.expired += 1
                _fail(item.future, DeadlineExceeded(f"deadline passed before {self.name!r}"))
                continue
            self.metrics.wait.add(now - item.enqueued)
            live.append(item)
        return live

    async def _run(self, batch: list[_Item]) -> None:
        values = [item.value for item in batch]
        work = sum(item.weight for item in batch)
        self._busy += 1
        self._busy_items += len(batch)
        self._busy_work += work
        start = self.clock()
        self.metrics.call_started(start, self._busy)  # idle for a while: measure afresh
        self._last_start = start
        call: PoolCall | None = None
        if not self._is_async:  # a compute call: timed from when a pool thread starts it
            assert self.pool is not None
            call = PoolCall(self, self.metrics.batch_seconds(work))
            self.pool.calls[id(call)] = call
            self._last_start = math.inf  # not started yet: nothing of it has elapsed
        try:
            results = await self._call(values, call)
            if len(results) != len(values):
                raise BatchSizeMismatch(
                    f"stage {self.name!r}: {len(results)} results for {len(values)} items"
                )
        except Exception as err:  # every waiter of the batch gets the error
            self.metrics.failed += len(batch)
            for item in batch:
                _fail(item.future, err)
            return
        finally:
            self._busy -= 1
            self._busy_items -= len(batch)
            self._busy_work -= work
            end = self.clock()
            if call is not None:
                assert self.pool is not None
                self.pool.calls.pop(id(call), None)
                start = end if call.started is None else call.started
            self.metrics.observe_service(end - start, work, end)
            size = len(batch)
            self.metrics.batch_sizes[size] = self.metrics.batch_sizes.get(size, 0) + 1
            if self.recorder is not None:
                self.recorder(batch, start, end)
        self.metrics.completed += len(batch)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _call(self, values: list[Any], call: PoolCall | None = None) -> Sequence[Any]:
        if self._is_async:
            return await self.fn(values)  # type: ignore[misc]
        assert self.pool is not None and call is not None
        fn = self.fn

        def started(values: list[Any]) -> Sequence[Any]:
            # on the pool thread: the call starts now (its wait for the thread is not its
            # service time: the pool's backlog predicts that, ``ComputePool.backlog_s``)
            call.started = self._last_start = self.clock()
            return fn(values)  # type: ignore[return-value]

        loop = asyncio.get_running_loop()
        result = loop.run_in_executor(self.pool.executor, started, values)
        self.pool.yield_loop()
        return await result

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.name, **self.metrics.snapshot(self.depth, self._busy)}


def _finish(future: asyncio.Future[bool], timed_out: bool) -> None:
    if not future.done():
        future.set_result(timed_out)


def _fail(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
