"""Discrete-event simulation of the staged pipeline on a few cores (the planner's predictor).

What is simulated, after ``serving.engine`` and ``serving.admission``:

- Poisson arrivals; each request costs ``overhead_s`` of event-loop CPU (``ingress`` share
  before admission, the rest after its last stage), on one event-loop thread (FIFO); the loop
  also spends ``idle_cpu`` seconds per second with no request (timers, polling), in slices.
- Admission: the engine's predicted wait (queue depth, ``max_batch``, ``concurrency``, the
  median of the last 32 service times scaled past the median of the last 32 batch sizes,
  ``max_wait_s``) against the deadline less the loop's recent lateness (the most a 5-ms
  timer tick ran late over the last 0.1 s, ``engine.LoopLag``): degrade (fewer
  work units, or skip a stage) above ``degrade_at``, reject (503) when even the degraded path
  is predicted above ``reject_at``, else admit; ``max_in_flight`` caps requests.
- Stages: bounded queue, ``concurrency`` workers that take the first item, then collect until
  ``max_batch`` items or ``max_wait_s``; a request past its deadline is dropped at the boundary.
- Compute: one pool of ``workers`` threads shared by the stages (FIFO); a call's CPU demand
  comes from the fitted ``ServiceModel`` (with its noise) and uses ``threads`` cores. As in the
  engine, a call is timed from when a pool thread starts it, and admission adds the other
  stages' calls handed to the pool once (``engine.ComputePool.backlog_s``).
- Cores: every running call and the event loop share ``cores`` by processor sharing (each
  progresses at ``min(1, cores / demand)``), which is how one core is split among threads;
  ``background`` adds the runnable threads of other processes seen in the logs.

Not simulated: the GIL (Python parts of a model call block the event loop on more than one
core), memory bandwidth, the client's own overhead, changes of the other processes' load.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warmstart.serving.engine import (
    PoolCall,
    StageConfig,
    StageMetrics,
    calls_backlog_s,
    predicted_wait,
)
from warmstart.serving.planner.fit import RequestClass, TrafficModel

INGRESS = 0.6  # share of the per-request overhead before admission (parse, validate, map ids)
IDLE_PERIOD_S = 0.005  # the loop's per-second CPU (``idle_cpu``) comes in slices this far apart
# (or farther: at most one slice per simulated request), each a tick of the loop's lateness
LAG_MEMORY_S = 0.1  # ``engine.LoopLag``: the most a tick ran late over 20 ticks of 5 ms
CLIENT_TIMEOUT_S = 2.0  # the load generator gives up after this (an error)


# A stage the config leaves out runs with these knobs (the server's model-stage defaults).
DEFAULT_STAGE = StageConfig(max_batch=32, max_wait_s=0.001, queue_size=2048)


@dataclass(frozen=True)
class SimConfig:
    """The knobs the planner searches (and what the simulator runs).

    Attributes:
        stages: knobs per stage name.
        workers / threads: compute pool threads and torch intra-op threads per call.
        cores: cores the server process may use.
        deadline_s / degrade_at / max_in_flight / shed: admission (``AdmissionConfig``).
        background: runnable threads of other processes sharing the cores (not a knob).
        precision: ``recommend.precision`` (the model stage's costs at it: ``TrafficModel.service``).
    """

    stages: dict[str, StageConfig]
    workers: int = 1
    threads: int = 1
    cores: float = 1.0
    deadline_s: float = 0.1
    degrade_at: float = 0.5
    max_in_flight: int = 512
    shed: bool = True
    background: float = 0.0
    reject_at: float = 0.8
    precision: str = "float32"

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(self.stages.items())),
            self.workers,
            self.threads,
            self.cores,
            self.deadline_s,
            self.degrade_at,
            self.max_in_flight,
            self.shed,
            self.background,
            self.reject_at,
            self.precision,
        )


@dataclass
class SimResult:
    rate: float
    latencies_s: np.ndarray
    errors: int
    degraded: int
    requests: int
    cpu_busy: float = 0.0
    loop_cpu_s: float = 0.0  # event-loop CPU seconds of the run (overhead), all requests
    stage_cpu_s: float = 0.0  # stage calls' CPU seconds of the run

    @property
    def error_rate(self) -> float:
        return self.errors / max(self.requests, 1)

    def p99_s(self) -> float:
        return self._quantile(99)

    def p50_s(self) -> float:
        return self._quantile(50)

    def _quantile(self, q: float) -> float:
        lat = self.latencies_s
        if not lat.size or not np.isfinite(lat).all():  # an abandoned run: infinite
            return math.inf
        return float(np.percentile(lat, q))

    @property
    def degraded_fraction(self) -> float:
        return self.degraded / max(self.requests, 1)


@dataclass
class _Req:
    i: int
    arrival: float
    cls: RequestClass
    visits: list[tuple[str, float]] = field(default_factory=list)  # (stage, units), in order
    deadline: float = math.inf
    degraded: bool = False
    failed: bool = False


class _Stage:
    def __init__(
        self, name: str, knobs: StageConfig, weight: Callable[[float], float] | None = None
    ) -> None:
        self.name, self.k = name, knobs
        # ``engine.Stage(weight=...)``: an item's work from its units (None: every item 1)
        self.weight = weight
        self.queued_work = 0.0  # the weights of the queued items, and of those in flight
        self.busy_work = 0.0
        self.queue: deque[tuple[_Req, float]] = deque()
        self.idle = knobs.concurrency
        self.collecting: list[tuple[_Req, float]] | None = None
        self.collect_token = 0
        self.busy = 0
        self.busy_items = 0
        self.last_start = -math.inf  # the latest call's start on a pool thread (inf: waiting)
        self.metrics = StageMetrics()  # the engine's service window and its medians

    def observe(self, seconds: float, items: float, at: float) -> None:
        self.metrics.observe_service(seconds, items, at)

    def started(self, now: float) -> None:
        """A call is handed to the pool (``engine.Stage``: after an idle spell the window starts
        afresh); it is timed from when a pool thread starts it."""
        self.metrics.call_started(now, self.busy)
        self.last_start = math.inf

    def batch_seconds(self, items: float) -> float:
        """``engine.StageMetrics.batch_seconds``: the median recent call, scaled up past the
        median recent batch size."""
        return self.metrics.batch_seconds(items)

    @property
    def load(self) -> int:
        return len(self.queue) + self.busy_items + len(self.collecting or ())

    def predicted_wait(self, extra: int, now: float) -> float:
        """``engine.Stage.predicted_wait_s`` at ``now`` (an idle stage with stale or too few
        timings predicts 0: a probe)."""
        if self.metrics.probing(now, extra, self.load):
            return 0.0
        weighted = self.weight is not None
        return predicted_wait(
            len(self.queue) + extra,
            self.k,
            self.batch_seconds,
            self.busy,
            self.busy_work if weighted else self.busy_items,
            now - self.last_start,  # -inf while its call waits for a thread: nothing elapsed
            self.queued_work + extra if weighted else None,
        )

    def work(self, items: list[tuple[_Req, float]]) -> float:
        """The items' work as the engine weighs it (their number for an unweighted stage)."""
        return len(items) if self.weight is None else sum(self.weight(u) for _, u in items)


class Simulator:
    """One run of ``n`` requests at ``rate`` through ``config`` with the fitted ``model``."""

    def __init__(self, model: TrafficModel, config: SimConfig, seed: int = 0) -> None:
        self.model, self.config = model, config
        self.rng = np.random.default_rng(seed)
        self.stages = {
            v.stage: _Stage(
                v.stage, config.stages.get(v.stage, DEFAULT_STAGE), stage_weight(v.stage, model)
            )
            for c in model.classes
            for v in c.visits
        }
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        # processor sharing: job id -> [remaining work (s), cores demanded, on_done]
        self._jobs: dict[int, list[Any]] = {}
        self._job_id = 0
        self._demand = 0.0  # cores demanded by the running jobs
        self._cpu_version = 0
        self._last = 0.0
        # (CPU seconds, then, due): ``due`` for a timer tick, whose lateness is measured
        self._loop: deque[tuple[float, Callable[[], None], float | None]] = deque()
        self._lateness: deque[float] = deque([0.0], maxlen=1)
        self.loop_lag = 0.0  # ``engine.LoopLag.value``: the most a recent tick ran late
        self._loop_busy = False
        # calls waiting for a pool thread; every call handed and not finished, as the engine's
        # ``ComputePool.calls``
        self._pool: deque[tuple[_Stage, list[tuple[_Req, float]], PoolCall]] = deque()
        self._calls: dict[int, PoolCall] = {}
        self._pool_free = config.workers
        self.in_flight = 0
        self.cpu_busy = 0.0
        self.loop_cpu = 0.0
        self.stage_cpu = 0.0
        self._routing: list[_Stage] | None = None

    # ------------------------------------------------------------------ event plumbing

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn))

    def _speed(self) -> float:
        demand = self._demand + self.config.background
        return min(1.0, self.config.cores / demand) if self._demand > 0 else 1.0

    def _advance(self) -> None:
        dt = self.now - self._last
        if dt > 0 and self._jobs:
            speed = self._speed()
            for j in self._jobs.values():
                j[0] -= dt * speed
            self.cpu_busy += dt * min(self.config.cores, self._demand)
        self._last = self.now

    def _reschedule(self) -> None:
        self._cpu_version += 1
        if not self._jobs:
            return
        version, speed = self._cpu_version, self._speed()
        soonest = min(j[0] for j in self._jobs.values())
        self._at(self.now + max(0.0, soonest) / speed, lambda: self._cpu_done(version))

    def _cpu_done(self, version: int) -> None:
        if version != self._cpu_version:
            return
        self._advance()
        done = [k for k, j in self._jobs.items() if j[0] <= 1e-12]
        finished = [self._jobs.pop(k) for k in done]
        self._demand = sum(j[1] for j in self._jobs.values())
        callbacks = [j[2] for j in finished]
        for cb in callbacks:
            cb()
        self._reschedule()

    def _run_cpu(self, work: float, cores: float, on_done: Callable[[], None]) -> None:
        self._advance()
        self._job_id += 1
        self._jobs[self._job_id] = [work, cores, on_done]
        self._demand += cores
        self._reschedule()

    # ------------------------------------------------------------------ the event loop

    def _loop_submit(self, work: float, then: Callable[[], None], due: float | None = None) -> None:
        self._loop.append((work, then, due))
        if not self._loop_busy:
            self._loop_next()

    def _loop_next(self) -> None:
        if not self._loop:
            self._loop_busy = False
            return
        self._loop_busy = True
        work, then, due = self._loop.popleft()
        if due is not None:  # a timer tick runs: how late (``engine.LoopLag.tick``)
            self._lateness.append(self.now - due)
            self.loop_lag = max(self._lateness)
        self.loop_cpu += work

        def done() -> None:
            then()
            self._loop_next()

        self._run_cpu(work, 1.0, done)

    # ------------------------------------------------------------------ requests

    def run(
        self, rate: float, n: int, warmup: float = 0.1, give_up: tuple[float, float] | None = None
    ) -> SimResult:
        """Simulate; ``give_up=(p99_s, max_error_rate)`` stops as soon as the run must fail
        them (more than 1% of the kept requests slower than ``p99_s``, or too many errors):
        then the result's p99 is infinite."""
        self._first = int(warmup * n)
        kept = n - self._first
        self._limits = (
            None if give_up is None else (give_up[0], 0.01 * kept + 1, give_up[1] * kept + 1)
        )
        self._slow = self._failed = 0
        self._stop = False
        classes = self.model.classes
        shares = np.array([c.share for c in classes])
        picks = self.rng.choice(len(classes), n, p=shares / shares.sum())
        times = np.cumsum(self.rng.exponential(1.0 / rate, n))
        reqs = []
        for i, (t, c) in enumerate(zip(times, picks, strict=True)):
            req = _Req(i, float(t), classes[c])
            reqs.append(req)
            self._at(float(t), functools.partial(self._arrive, req))
        # timers, polling, ticks: CPU per second on the loop, in slices; each is also a tick
        # of the loop's lateness, which admission counts as time already spent (``LoopLag``)
        period = max(IDLE_PERIOD_S, float(times[-1]) / n)  # at most one slice per request
        slice_s = self.model.idle_cpu * period
        self._lateness = deque([0.0], maxlen=max(1, round(LAG_MEMORY_S / period)))
        for t in np.arange(period, float(times[-1]), period):
            tick = functools.partial(self._loop_submit, slice_s, _nothing, float(t))
            self._at(float(t), tick)
        self.latency = np.full(n, np.nan)
        self.errors = np.zeros(n, bool)
        self.degraded = np.zeros(n, bool)
        while self._events and not self._stop:
            t, _, fn = heapq.heappop(self._events)
            self.now = t
            fn()
        keep = slice(self._first, n)
        lat = self.latency[keep]
        return SimResult(
            rate,
            np.full(kept, np.inf) if self._stop else lat[~np.isnan(lat)],
            int(self.errors[keep].sum()),
            int(self.degraded[keep].sum()),
            int(n - int(warmup * n)),
            self.cpu_busy / max(self.now, 1e-9),
            self.loop_cpu,
            self.stage_cpu,
        )

    def _arrive(self, req: _Req) -> None:
        self._loop_submit(INGRESS * self.model.overhead_s, lambda: self._admit(req))

    def _path(self, req: _Req) -> list[_Stage]:
        return [self.stages[s] for s, _ in req.visits]

    def _admit(self, req: _Req) -> None:
        c = self.config
        for v in req.cls.visits:
            if self.rng.random() < v.prob:
                req.visits.append((v.stage, v.units))
        if self.in_flight >= c.max_in_flight:
            return self._fail(req)
        budget = c.deadline_s - self.loop_lag  # ``Admission.front_delay_s``
        predicted = self._predict(self._path(req))
        if c.shed and predicted > c.degrade_at * budget:
            by_name = {v.stage: v for v in req.cls.visits}
            degraded = [
                (s, by_name[s].degraded) for s, _ in req.visits if by_name[s].degraded is not None
            ]
            if self._predict([self.stages[s] for s, _ in degraded]) > c.reject_at * budget:
                return self._fail(req)
            # counted as degraded only when it loses work (fewer candidates, a skipped rerank)
            req.degraded = [s for s, _ in degraded] != [s for s, _ in req.visits] or any(
                u != by_name[s].units for s, u in degraded
            )
            req.visits = [(s, float(u)) for s, u in degraded if u is not None]
            self.degraded[req.i] = req.degraded
        self.in_flight += 1
        req.deadline = self.now + c.deadline_s
        self._next(req)

    def _predict(self, path: list[_Stage]) -> float:
        """``Admission.predict_s``: the stages' waits, then the other stages' calls in the
        pool (``ComputePool.backlog_s``)."""
        total, upstream = 0.0, 0
        for stage in path:
            total += stage.predicted_wait(upstream + 1, self.now)
            upstream += stage.load
        backlog = calls_backlog_s(self._calls.values(), self.now, path, self.config.workers)
        return total + backlog

    def _fail(self, req: _Req, admitted: bool = False) -> None:
        """A 503 (refused, queue full or deadline passed): answered through the event loop."""
        req.failed = True
        self.errors[req.i] = True
        if admitted:
            self.in_flight -= 1
        work = (1 - INGRESS) * 0.5 * self.model.overhead_s
        self._loop_submit(work, lambda: self._answer(req))

    def _answer(self, req: _Req) -> None:
        latency = self.now - req.arrival
        self.latency[req.i] = min(latency, CLIENT_TIMEOUT_S)
        if latency > CLIENT_TIMEOUT_S:
            self.errors[req.i] = True
        if self._limits is not None and req.i >= self._first:
            p99_s, max_slow, max_failed = self._limits
            self._slow += latency > p99_s
            self._failed += bool(self.errors[req.i])
            self._stop = self._slow > max_slow or self._failed > max_failed

    def _next(self, req: _Req) -> None:
        if not req.visits:
            self.in_flight -= 1
            work = (1 - INGRESS) * self.model.overhead_s
            return self._loop_submit(work, lambda: self._answer(req))
        name, units = req.visits.pop(0)
        stage = self.stages[name]
        if self.now >= req.deadline:
            return self._fail(req, admitted=True)
        if len(stage.queue) >= stage.k.queue_size:
            return self._fail(req, admitted=True)
        item = (req, units)
        if stage.collecting is not None:
            stage.collecting.append(item)
            if len(stage.collecting) >= stage.k.max_batch:
                self._dispatch(stage)
            return
        stage.queue.append(item)
        stage.queued_work += stage.work([item])
        if self._routing is not None:  # a batch's results are still being handed on
            self._routing.append(stage)
        else:
            self._take(stage)

    # ------------------------------------------------------------------ stage workers

    def _take(self, stage: _Stage) -> None:
        """An idle worker takes queued items and collects until full or ``max_wait_s``."""
        if not stage.idle or not stage.queue or stage.collecting is not None:
            return
        stage.idle -= 1
        take = min(stage.k.max_batch, len(stage.queue))
        stage.collecting = [stage.queue.popleft() for _ in range(take)]
        stage.queued_work = max(0.0, stage.queued_work - stage.work(stage.collecting))
        if take >= stage.k.max_batch or stage.k.max_wait_s <= 0:
            return self._dispatch(stage)
        stage.collect_token += 1
        token = stage.collect_token
        self._at(self.now + stage.k.max_wait_s, lambda: self._timer(stage, token))

    def _timer(self, stage: _Stage, token: int) -> None:
        if stage.collecting is not None and token == stage.collect_token:
            self._dispatch(stage)

    def _dispatch(self, stage: _Stage) -> None:
        items, stage.collecting = stage.collecting or [], None
        stage.collect_token += 1
        live = []
        for req, units in items:
            if self.now >= req.deadline:
                self._fail(req, admitted=True)
            else:
                live.append((req, units))
        if not live:
            stage.idle += 1
            return self._take(stage)
        stage.busy += 1
        stage.busy_items += len(live)
        stage.busy_work += stage.work(live)
        stage.started(self.now)
        call = PoolCall(stage, stage.batch_seconds(stage.work(live)))
        self._calls[id(call)] = call
        self._pool.append((stage, live, call))
        self._pool_run()
        self._take(stage)  # another idle worker may start on what is queued

    def _pool_run(self) -> None:
        while self._pool_free and self._pool:
            stage, items, call = self._pool.popleft()
            self._pool_free -= 1
            call.started = stage.last_start = self.now
            model = self.model.service(stage.name, self.config.precision)
            units = sum(u for _, u in items)
            work = model.sample(len(items), units, self.config.threads, self.rng)
            self.stage_cpu += work * self.config.threads
            self._run_cpu(
                work,
                float(self.config.threads),
                functools.partial(self._batch_done, stage, items, call),
            )

    def _batch_done(self, stage: _Stage, items: list[tuple[_Req, float]], call: PoolCall) -> None:
        self._pool_free += 1
        self._calls.pop(id(call))
        work = stage.work(items)
        assert call.started is not None
        stage.observe(self.now - call.started, work, self.now)
        stage.busy -= 1
        stage.busy_items -= len(items)
        stage.busy_work -= work
        stage.idle += 1
        # every result of the batch reaches its next stage's queue before any stage collects,
        # as in the engine (the waiters resume in one loop iteration, the stage workers after)
        self._routing = []
        for req, _ in items:
            self._next(req)
        routed, self._routing = self._routing, None
        for nxt in dict.fromkeys([*routed, stage]):
            self._take(nxt)
        self._pool_run()


def _nothing() -> None:
    return None


def stage_weight(stage: str, model: TrafficModel) -> Callable[[float], float] | None:
    """The engine's weight of an item at ``stage`` from its units, for the stages the server
    weighs: the fused recommend ``model`` stage (``RecommendPipeline._work``: a request ranking
    ``n`` candidates weighs ``(request_cost + n) / (request_cost + n_candidates)``)."""
    from warmstart.serving.pipelines import RecommendConfig, request_work

    rec = model.server.get("recommend", {})
    if stage != "model" or not rec.get("fused", True):
        return None
    fixed = float(rec.get("request_cost", RecommendConfig.request_cost))
    full = float(rec.get("n_candidates", RecommendConfig.n_candidates))
    return functools.partial(request_work, request_cost=fixed, n_candidates=full)


def simulate(
    model: TrafficModel,
    config: SimConfig,
    rate: float,
    n: int = 4000,
    seed: int = 0,
    give_up: tuple[float, float] | None = None,
) -> SimResult:
    """Simulate ``n`` Poisson arrivals at ``rate`` requests/s (the first 10% are warm-up)."""
    return Simulator(model, config, seed).run(rate, n, give_up=give_up)
