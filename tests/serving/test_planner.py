"""Planner: service-time fit on synthetic logs, the simulator against M/D/1, the search, the
written config in the server's loader, and the CLI."""

from __future__ import annotations

import dataclasses
import heapq
import math
from pathlib import Path

import numpy as np
import pytest

from warmstart.serving.config import ServeConfig
from warmstart.serving.engine import PoolCall, StageConfig
from warmstart.serving.planner.fit import (
    QUANTILES,
    RequestClass,
    ServiceModel,
    TrafficModel,
    Visit,
    fit_service,
    fit_traffic,
)
from warmstart.serving.planner.plan import make_plan, sim_config, write_plan
from warmstart.serving.planner.search import (
    Target,
    capacity,
    knobs,
    passes,
    robust_capacity,
    search,
)
from warmstart.serving.planner.simulate import SimConfig, Simulator, _Req, simulate
from warmstart.serving.trafficlog import TrafficLog, TrafficLogConfig, read_events

A, B, C = 0.0012, 0.0002, 0.9e-6  # s per call, per item, per candidate (like ML-1M ColdNAS)


def synthetic_log(
    path: Path, n_batches: int = 600, seed: int = 0, precision: str = "float32", scale: float = 1.0
) -> None:
    """A log of a recommend server: known service times (+5% noise; ``scale`` times them),
    some degraded items; ``precision``: the logged ``recommend.precision``."""
    rng = np.random.default_rng(seed)
    now = [0.0]
    server = ServeConfig().to_dict()
    server["recommend"]["precision"] = precision
    log = TrafficLog(TrafficLogConfig(path=str(path)), server, clock=lambda: now[0])
    for _ in range(n_batches):
        n = int(rng.integers(1, 17))
        units = [500 if rng.random() < 0.8 else 100 for _ in range(n)]
        for _ in range(n):
            now[0] += rng.exponential(1 / 300)
            log.request("recommend", "admit", 0.003)
        cpu = scale * (A + B * n + C * sum(units)) * rng.lognormal(0, 0.05)
        log.batch("recommend", "model", now[0], cpu, [0.001] * n, sum(units), 0, cpu)
    log.close()


def test_fit_service_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(1)
    n = rng.integers(1, 33, 400).astype(float)
    u = n * rng.choice([100.0, 500.0], 400)
    cpu = A + B * n + C * u + rng.normal(0, 1e-5, 400)
    a, b, c = fit_service(n, u, cpu)
    assert a == pytest.approx(A, rel=0.05)
    assert b == pytest.approx(B, rel=0.05)
    assert c == pytest.approx(C, rel=0.05)
    # units proportional to items: the unit term is not identifiable, the item term carries it
    a, b, c = fit_service(n, 500 * n, A + (B + 500 * C) * n)
    assert c == 0 and b == pytest.approx(B + 500 * C) and a == pytest.approx(A)


def test_a_mixed_ranking_batch_is_simulated_on_each_items_own_list() -> None:
    """The ranking scores a batch in one pass per candidate count (``_rank_batch``): a call's
    work is the sum of its items' units, so a degraded item batched with a full one costs its
    own 100 candidates, not the full one's 500."""
    model = TrafficModel(
        {"model": ServiceModel(0.0, 0.0, 1e-5)},
        (RequestClass("recommend", 1.0, (Visit("model", 1.0, 500.0, 100.0),)),),
        0.0,
    )
    batch = [(None, 500.0), (None, 100.0)]
    sim = Simulator(model, SimConfig({"model": StageConfig(8, 0.0, queue_size=64)}))
    call = PoolCall(sim.stages["model"], 0.0)
    sim._calls[id(call)] = call
    sim._pool.append((sim.stages["model"], batch, call))  # type: ignore[arg-type]
    sim._pool_run()
    assert sim.stage_cpu == pytest.approx((500 + 100) * 1e-5)


def test_fit_traffic_on_synthetic_logs(tmp_path: Path) -> None:
    synthetic_log(tmp_path)
    model = fit_traffic(read_events(tmp_path))
    stage = model.stages["model"]
    assert stage.a == pytest.approx(A, rel=0.15)
    assert stage.b == pytest.approx(B, rel=0.15)
    assert stage.c == pytest.approx(C, rel=0.1)
    assert stage.noise[50] == pytest.approx(1.0, abs=0.03)
    (cls,) = model.classes
    (visit,) = cls.visits
    assert cls.pipeline == "recommend" and cls.share == 1.0
    assert visit.stage == "model" and visit.units == 500 and visit.degraded == 100
    assert visit.prob == pytest.approx(1.0, abs=0.01)
    assert model.rate == pytest.approx(300, rel=0.1)


def _single_stage(service_s: float, overhead_s: float = 0.0) -> TrafficModel:
    """One stage, deterministic service ``service_s`` per call of one item."""
    stage = ServiceModel(service_s, 0.0, 0.0)
    visit = Visit("s", 1.0, 1.0, 1.0)
    return TrafficModel({"s": stage}, (RequestClass("recommend", 1.0, (visit,)),), overhead_s)


def _unbatched(**kw: object) -> SimConfig:
    return SimConfig(
        {"s": StageConfig(1, 0.0, concurrency=1, queue_size=10**6)}, deadline_s=10.0, shed=False, max_in_flight=10**6,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_simulator_matches_md1_mean_wait(rho: float) -> None:
    """M/D/1: mean time in system = D + rho·D / (2(1 - rho)) (Pollaczek-Khinchine)."""
    d = 0.001
    model, config = _single_stage(d), _unbatched()
    result = simulate(model, config, rho / d, n=20000, seed=3)
    expected = d + rho * d / (2 * (1 - rho))
    assert result.latencies_s.mean() == pytest.approx(expected, rel=0.06)
    assert result.errors == 0 and result.cpu_busy == pytest.approx(rho, abs=0.03)


def test_simulator_shares_the_core_between_loop_and_compute() -> None:
    """On one core the event-loop overhead and the compute serialise (utilisation adds up)."""
    model = _single_stage(0.001, overhead_s=0.001)
    r = simulate(model, _unbatched(), 300, n=6000, seed=0)
    assert r.cpu_busy == pytest.approx(0.6, abs=0.03)
    two = simulate(model, _unbatched(cores=2.0), 300, n=6000, seed=0)
    assert two.latencies_s.mean() < r.latencies_s.mean()
    # one other runnable thread on the core: a lone call takes twice its CPU time
    alone = simulate(_single_stage(0.001), _unbatched(background=1.0), 5, n=300, seed=0)
    assert alone.latencies_s.mean() == pytest.approx(0.002, rel=0.05)


def _fixed_cost(overhead_s: float) -> TrafficModel:
    """One stage with a large fixed cost per call (4 ms) and 0.5 ms per item."""
    visit = Visit("s", 1.0, 1.0, 1.0)
    return TrafficModel(
        {"s": ServiceModel(0.004, 0.0005, 0.0)},
        (RequestClass("recommend", 1.0, (visit,)),),
        overhead_s,
    )


def test_batching_raises_simulated_capacity() -> None:
    """Batches amortise the fixed cost, so capacity grows with max_batch."""
    model = _fixed_cost(0.0)
    target = Target(p99_s=0.1, n=2000, steps=6)
    one = capacity(model, SimConfig({"s": StageConfig(1, 0.0, queue_size=2048)}), target).rate
    many = capacity(model, SimConfig({"s": StageConfig(32, 0.0, queue_size=2048)}), target).rate
    assert many > 2 * one


def test_search_returns_a_feasible_better_config() -> None:
    model = _fixed_cost(0.0002)
    target = Target(p99_s=0.1, n=1500, steps=5)
    start = SimConfig({"s": StageConfig(2, 0.0, queue_size=2048)})
    result = search(model, start, target, passes_=1)
    assert result.best_capacity.rate >= result.start_capacity.rate
    assert result.best.stages["s"].max_batch > 2
    check = simulate(model, result.best, result.best_capacity.rate, target.n, target.seed)
    assert passes(check, target)


def test_written_config_loads_in_the_server(tmp_path: Path) -> None:
    synthetic_log(tmp_path / "logs", n_batches=300)
    target = Target(n=800, steps=4)
    plan = make_plan(tmp_path / "logs", 100, 1, target)
    report = write_plan(plan, tmp_path / "planned.json")
    loaded = ServeConfig.from_file(tmp_path / "planned.json")
    knobs = plan.planned.stages["model"]
    assert loaded.recommend.rank.max_batch == knobs.max_batch
    assert loaded.recommend.rank.max_wait_s == knobs.max_wait_s
    assert loaded.compute.workers == plan.planned.workers
    assert loaded.traffic_log.path is None  # the plan is served without logging
    assert sim_config(loaded.to_dict(), plan.model, 1) == dataclasses.replace(
        plan.planned, max_in_flight=loaded.admission.max_in_flight
    )
    assert report.is_file() and plan.summary()["planned"]["capacity"] > 0


def test_plan_switches_to_a_precision_only_the_logs_measured(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    synthetic_log(logs, n_batches=300, precision="float32")
    target = Target(n=800, steps=4)
    alone = make_plan(logs, 100, 1, target)
    assert alone.model.precisions == ("float32",) and alone.planned.precision == "float32"
    # a probe in bfloat16 at half the cost, then the float32 server again (the planned-from run)
    synthetic_log(logs, n_batches=300, seed=1, precision="bfloat16", scale=0.5)
    synthetic_log(logs, n_batches=300, seed=2, precision="float32")
    plan = make_plan(logs, 100, 1, target)
    assert plan.model.precision == "float32" and plan.model.precisions == ("float32", "bfloat16")
    assert plan.model.stages["model"].c == pytest.approx(C, rel=0.15)
    assert plan.model.service("model", "bfloat16").c == pytest.approx(C / 2, rel=0.15)
    assert plan.planned.precision == "bfloat16"
    assert plan.summary()["changes"]["precision"] == ["float32", "bfloat16"]
    assert plan.summary()["planned"]["capacity"] > 1.5 * plan.summary()["logged"]["capacity"]
    write_plan(plan, tmp_path / "planned.json")
    assert ServeConfig.from_file(tmp_path / "planned.json").recommend.precision == "bfloat16"
    kept = make_plan(logs, 100, 1, target, keep_precision=True)
    assert kept.planned.precision == "float32" and "precision" not in kept.summary()["changes"]


def test_cli_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from warmstart.cli import main

    synthetic_log(tmp_path / "logs", n_batches=200)
    out = tmp_path / "p.json"
    code = main(
        ["serve", "plan", "--logs", str(tmp_path / "logs"), "--p99-ms", "100", "--cores", "1",
         "--out", str(out), "--requests", "300"]
    )  # fmt: skip
    assert code == 0
    assert "predicted capacity" in capsys.readouterr().out
    ServeConfig.from_file(out)


def test_give_up_only_stops_runs_that_fail() -> None:
    """Stopping a hopeless run early never changes a verdict."""
    model, config = _single_stage(0.001), SimConfig({"s": StageConfig(1, 0.0, queue_size=2048)})
    for rate in (300.0, 990.0, 1500.0):
        full = simulate(model, config, rate, n=2000, seed=1)
        quick = simulate(model, config, rate, n=2000, seed=1, give_up=(0.1, 0.001))
        target = Target(p99_s=0.1)
        assert passes(full, target) == passes(quick, target)
        if passes(full, target):
            assert quick.p99_s() == full.p99_s()


def test_fit_service_without_batches_credits_batching_nothing() -> None:
    """Every call one item: the fixed and per-item costs cannot be told apart, so it is all
    per item (least squares would split it in halves and promise a batching gain unseen)."""
    n = np.ones(50)
    a, b, c = fit_service(n, n, np.full(50, 0.012))
    assert (a, c) == (0.0, 0.0) and b == pytest.approx(0.012)


def test_background_leaves_out_the_servers_own_loop() -> None:
    """Calls slowed 1.5x in a second where the loop itself used half the core: no one else."""
    from warmstart.serving.planner.fit import background_load

    ticks = [{"run": 0, "t": float(t), "req": 10, "cpu": 1.0, "wall": 1.0} for t in range(1, 5)]
    calls = {"s": [{"run": 0, "t": t + 0.5, "svc": 0.015, "cpu": 0.01} for t in range(4)]}
    assert background_load(calls, ticks) == pytest.approx(0.5)
    own = {(0, t): 0.5 for t in range(1, 5)}
    assert background_load(calls, ticks, own) == pytest.approx(0.0)


def test_simulated_loop_spends_the_idle_cpu() -> None:
    """``idle_cpu`` seconds per second of loop work (in slices), counted in the loop's CPU."""
    base = _single_stage(0.001, overhead_s=0.0002)
    idle = dataclasses.replace(base, idle_cpu=0.05)
    quiet = simulate(base, _unbatched(), 100, n=2000, seed=0)
    busy = simulate(idle, _unbatched(), 100, n=2000, seed=0)
    seconds = 2000 / 100
    assert quiet.loop_cpu_s == pytest.approx(2000 * 0.0002, rel=0.01)
    assert busy.loop_cpu_s - quiet.loop_cpu_s == pytest.approx(0.05 * seconds, rel=0.05)
    assert busy.stage_cpu_s == pytest.approx(quiet.stage_cpu_s) == pytest.approx(2.0)
    assert busy.latencies_s.mean() > quiet.latencies_s.mean()


def test_background_ignores_calls_that_queued_for_the_pool() -> None:
    """A call that waited behind another stage's call for the one pool thread is slow on the
    wall clock with no other process about: only calls that overlapped none are used."""
    from warmstart.serving.planner.fit import background_load, isolated

    ticks = [{"run": 0, "t": float(t), "req": 10, "cpu": 0.1, "wall": 1.0} for t in range(1, 5)]
    encode, model = [], []
    for t in range(4):  # an encode call, two model calls queued behind it, one alone
        encode.append({"run": 0, "t": t + 0.1, "svc": 0.010, "cpu": 0.010})
        model.append({"run": 0, "t": t + 0.102, "svc": 0.0105, "cpu": 0.0025})
        model.append({"run": 0, "t": t + 0.104, "svc": 0.0110, "cpu": 0.0025})
        model.append({"run": 0, "t": t + 0.5, "svc": 0.0025, "cpu": 0.0025})
    assert isolated(encode + model) == model[2::3]
    assert background_load({"encode": encode, "model": model}, ticks) == pytest.approx(0.0)
    # without the isolation the median call would have run at a third of its speed
    from statistics import median

    assert median(b["svc"] / b["cpu"] - 1 for b in encode + model) > 1


def test_a_batchs_results_reach_the_next_stage_together() -> None:
    """As in the engine, the items of a finished batch are all queued at the next stage
    before it collects: a stage without a wait gets them as one batch, not one by one."""
    from warmstart.serving.planner import simulate as sim_module

    visits = (Visit("encode", 1.0, 1.0, 1.0), Visit("index", 1.0, 1.0, 1.0))
    model = TrafficModel(
        {"encode": ServiceModel(0.004, 0.001, 0.0), "index": ServiceModel(0.0002, 0.0001, 0.0)},
        (RequestClass("search", 1.0, visits),),
        0.0,
    )
    knobs = StageConfig(32, 0.0, queue_size=2048)
    config = SimConfig({"encode": knobs, "index": knobs}, shed=False)
    s = sim_module.Simulator(model, config, seed=0)
    sizes: dict[str, list[int]] = {"encode": [], "index": []}
    dispatch = s._dispatch

    def record(stage: object) -> None:
        sizes[stage.name].append(len(stage.collecting or ()))  # type: ignore[attr-defined]
        dispatch(stage)  # type: ignore[arg-type]

    s._dispatch = record  # type: ignore[method-assign]
    s.run(150.0, 1500)
    assert max(sizes["encode"]) > 1  # batches formed upstream
    assert len(sizes["index"]) == len(sizes["encode"])
    assert sizes["index"] == sizes["encode"]


def test_simulated_prediction_is_the_engines() -> None:
    """The simulator's admission predicts a stage's wait as ``engine.Stage.predicted_wait_s``:
    the engine's batch time from the recent calls, what is left of the call in flight, and a
    probe (0) on an idle stage whose timings are stale."""
    from warmstart.serving.engine import STALE_AFTER_S, StageMetrics, predicted_wait
    from warmstart.serving.planner.simulate import _Stage

    knobs = StageConfig(8, 0.002, queue_size=2048, concurrency=1)
    stage, metrics = _Stage("s", knobs), StageMetrics()
    for i, (seconds, items) in enumerate(((0.004, 2), (0.006, 4), (0.005, 3), (0.009, 6))):
        stage.observe(seconds, items, at=0.01 * i)
        metrics.observe_service(seconds, items, at=0.01 * i)
    for n in (1, 3, 8, 20):
        assert stage.batch_seconds(n) == pytest.approx(metrics.batch_seconds(n))
    stage.queue.extend([(None, 1.0)] * 10)  # type: ignore[list-item]
    stage.busy, stage.busy_items = 1, 6
    stage.started(0.04)  # handed to the pool: while it waits for a thread nothing elapsed
    assert stage.predicted_wait(3, 0.041) == pytest.approx(
        predicted_wait(13, knobs, metrics.batch_seconds, 1, 6, 0.0)
    )
    stage.last_start = 0.04  # a pool thread started it
    # ceil((10 + 3) / 8) batches, no wait (>= 8), what is left of the call in flight
    expected = predicted_wait(13, knobs, metrics.batch_seconds, 1, 6, 0.001)
    assert stage.predicted_wait(3, 0.041) == pytest.approx(expected)
    assert expected < 2 * metrics.batch_seconds(8) + metrics.batch_seconds(6)
    # an idle stage whose timings are stale predicts 0 (a probe), as the engine's
    stage.queue.clear()
    stage.busy = stage.busy_items = 0
    assert stage.predicted_wait(1, 0.03 + STALE_AFTER_S + 0.1) == 0.0
    assert stage.predicted_wait(1, 0.05) > 0.0


def _threaded_events(threads: int, run: int, p: float, overhead: float, seed: int) -> list:
    """One logged run at ``threads`` intra-op threads (Amdahl fraction ``p``): the calls'
    ``cpu`` is the calling thread's (the wall time of a call on free cores), the ticks' is the
    whole process's, every intra-op thread's included."""
    rng = np.random.default_rng(seed)
    server = ServeConfig().to_dict()
    server["compute"]["intra_op_threads"] = threads
    events: list[dict[str, object]] = [{"e": "meta", "run": run, "server": server, "cpus": 2}]
    for second in range(1, 30):
        reqs, stage_cpu = int(rng.integers(50, 150)), 0.0
        for i in range(reqs):
            events.append({"e": "req", "run": run, "t": second - 1 + i / reqs, "p": "recommend",
                           "d": "admit", "pred": 0.003})  # fmt: skip
        for i in range(reqs // 4):
            n = int(rng.integers(1, 8))
            cpu = (A + B * n + C * 500 * n) * ((1 - p) + p / threads)
            stage_cpu += cpu * threads
            events.append({"e": "batch", "run": run, "t": second - 1 + 4 * i / reqs,
                           "p": "recommend", "s": "model", "n": n, "u": 500 * n, "svc": cpu,
                           "cpu": cpu, "wait": [0.001] * n, "q": 0})  # fmt: skip
        events.append({"e": "tick", "run": run, "t": float(second), "wall": 1.0, "req": reqs,
                       "cpu": overhead * reqs + stage_cpu})  # fmt: skip
    return events


def test_fit_threads_from_two_runs_and_the_loop_from_the_one_thread_run() -> None:
    """A run at 2 threads and one at 1: the parallel fraction is fitted from both; the loop's
    CPU per request from the 1-thread run only (the 2-thread run's ticks also hold the second
    intra-op thread's CPU, which the calls' calling-thread ``cpu`` does not)."""
    overhead = 0.0002
    events = _threaded_events(2, 0, 0.8, overhead, 0) + _threaded_events(1, 1, 0.8, overhead, 1)
    model = fit_traffic(events)
    assert model.stages["model"].parallel == pytest.approx(0.8, abs=0.02)
    assert model.overhead_s == pytest.approx(overhead, rel=0.05)
    assert model.background == pytest.approx(0.0, abs=0.01)


def test_search_plans_threads_on_two_cores_not_on_one() -> None:
    """A stage whose calls parallelise (fraction 0.9): on 2 cores the plan uses 2 threads and
    predicts more capacity; on 1 core a second thread cannot help, and no plan oversubscribes
    the cores (workers x threads <= cores + 1)."""
    model = TrafficModel(
        {"s": ServiceModel(0.004, 0.0005, 0.0, parallel=0.9)},
        (RequestClass("recommend", 1.0, (Visit("s", 1.0, 1.0, 1.0),)),),
        0.0001,
    )
    target = Target(p99_s=0.1, n=600, steps=4)
    for cores in (1.0, 2.0):
        start = SimConfig({"s": StageConfig(8, 0.001, queue_size=2048)}, cores=cores)
        result = search(model, start, target, passes_=1)
        assert result.best.workers * result.best.threads <= int(cores) + 1
        if cores == 2.0:
            assert result.best.threads == 2
            assert result.best_capacity.rate > 1.4 * result.start_capacity.rate
        else:
            assert result.best.threads == 1


def test_simulated_model_stage_weighs_its_queue_by_work_as_the_engine_does() -> None:
    """The fused model stage predicts a queue by the work in it (``engine.Stage(weight=...)``,
    ``RecommendPipeline._work``): eight degraded requests queued (100 candidates) predict less
    than eight full ones (500), by the engine's own function."""
    import math

    from warmstart.serving.engine import predicted_wait
    from warmstart.serving.planner.simulate import _Req

    cls = RequestClass("recommend", 1.0, (Visit("model", 1.0, 500.0, 100.0),))
    server = ServeConfig().to_dict()
    model = TrafficModel({"model": ServiceModel(0.0, 0.0, 1e-5)}, (cls,), 0.0, server=server)
    waits = {}
    for units in (500.0, 100.0):
        sim = Simulator(model, SimConfig({"model": StageConfig(8, 0.0, queue_size=64)}))
        stage = sim.stages["model"]
        for _ in range(40):
            stage.observe(0.005, 1.0, 0.0)  # calls of one full request's work: 5 ms
        stage.idle = 0  # its worker is busy: arrivals queue
        for i in range(8):
            sim._next(_Req(i, 0.0, cls, [("model", units)]))
        weight = (250 + units) / 750
        assert stage.queued_work == pytest.approx(8 * weight)
        waits[units] = stage.predicted_wait(1, 0.0)
        expected = predicted_wait(9, stage.k, stage.batch_seconds, 0, 0.0, 0.0, 8 * weight + 1)
        assert waits[units] == pytest.approx(expected)
    assert waits[100.0] < waits[500.0] and math.isfinite(waits[500.0])


def test_simulated_calls_are_timed_from_their_pool_thread_and_the_backlog_counted_once() -> None:
    """As the engine (``ComputePool.calls``): a model call queued for the one pool thread
    behind a 40-ms encode call is timed from when it runs (2 ms), and while the encode call
    runs a request through the model stage is predicted to wait what is left of it."""
    model = TrafficModel(
        {"encode": ServiceModel(0.040, 0.0, 0.0), "model": ServiceModel(0.002, 0.0, 0.0)},
        (
            RequestClass("search", 0.5, (Visit("encode", 1.0, 1.0, 1.0),)),
            RequestClass("recommend", 0.5, (Visit("model", 1.0, 1.0, 1.0),)),
        ),
        0.0,
    )
    knobs = StageConfig(8, 0.0, queue_size=64)
    sim = Simulator(model, SimConfig({"encode": knobs, "model": knobs}))
    encode, ranking = sim.stages["encode"], sim.stages["model"]
    for _ in range(3):
        encode.observe(0.040, 1.0, 0.0)
    for stage in (encode, ranking):
        stage.busy, stage.busy_items = 1, 1
        stage.started(0.0)
        call = PoolCall(stage, stage.batch_seconds(1.0))
        sim._calls[id(call)] = call
        req = _Req(len(sim._calls) - 1, 0.0, model.classes[0])
        sim._pool.append((stage, [(req, 1.0)], call))
    sim._pool_run()  # the encode call takes the thread; the model call waits
    assert encode.last_start == 0.0 and ranking.last_start == math.inf
    sim.now = 0.010
    assert sim._predict([ranking]) == pytest.approx(0.030)  # 40 ms predicted, 10 gone
    # its own call's 30 ms left and a call of its own (40): the queued model call has no
    # timings yet (0)
    assert sim._predict([encode]) == pytest.approx(0.070)
    sim.latency, sim.errors = np.full(2, np.nan), np.zeros(2, bool)
    sim._limits, sim._first = None, 0
    sim.now = 0.0
    while sim._events:  # the two calls run, one after the other, and both requests answer
        sim.now, _, fn = heapq.heappop(sim._events)
        fn()
    assert list(ranking.metrics.service._values) == [pytest.approx(0.002)]
    assert not sim._calls


def test_simulated_admission_counts_the_loops_lateness_as_time_spent() -> None:
    """As ``Admission.front_delay_s``: a timer tick that waited behind 10 ms of loop work ran
    10 ms late (``Simulator.loop_lag``), and the budget a request is admitted against is the
    deadline less it: a 60-ms path passes 0.8 x 100 ms, not 0.8 x (100 - 30) ms."""
    from warmstart.serving.planner.simulate import _nothing

    cls = RequestClass("search", 1.0, (Visit("encode", 1.0, 1.0, 1.0),))
    model = TrafficModel({"encode": ServiceModel(0.060, 0.0, 0.0)}, (cls,), 0.0)
    sim = Simulator(model, SimConfig({"encode": StageConfig(8, 0.0, queue_size=64)}))
    sim._loop_submit(0.010, _nothing)
    sim._loop_submit(0.0, _nothing, 0.0)  # a tick due now, behind the 10 ms of work
    while sim._events:
        sim.now, _, fn = heapq.heappop(sim._events)
        fn()
    assert sim.loop_lag == pytest.approx(0.010)
    for _ in range(3):
        sim.stages["encode"].observe(0.060, 1.0, sim.now)
    sim.latency, sim.errors = np.full(2, np.nan), np.zeros(2, bool)
    sim.degraded, sim._limits, sim._first = np.zeros(2, bool), None, 0
    sim.loop_lag = 0.0
    sim._admit(_Req(0, sim.now, cls))
    sim.loop_lag = 0.030
    sim._admit(_Req(1, sim.now, cls))
    assert list(sim.errors) == [False, True]


def test_search_keeps_a_change_only_when_its_mean_capacity_over_seeds_gains() -> None:
    """Capacities are means over ``Target.seeds`` seeds (``robust_capacity``); a kept change
    beats the start on that mean by ``min_gain``, not only on the first seed."""
    model = _fixed_cost(0.0002)
    target = Target(p99_s=0.1, n=1000, steps=5, seeds=3)
    start = SimConfig({"s": StageConfig(2, 0.0, queue_size=2048)})
    result = search(model, start, target, passes_=1, min_gain=0.01)
    per_seed = [
        capacity(model, result.best, dataclasses.replace(target, seed=s)).rate for s in (0, 1, 2)
    ]
    assert result.best_capacity.rate == pytest.approx(np.mean(per_seed))
    assert result.best_capacity.rate == pytest.approx(
        robust_capacity(model, result.best, target).rate
    )
    assert result.best != start
    assert result.best_capacity.rate > 1.01 * result.start_capacity.rate
    one_seed = dataclasses.replace(target, seeds=1)
    assert robust_capacity(model, start, one_seed).rate == capacity(model, start, target).rate


def test_a_deadline_past_the_p99_target_answers_the_slowest_late_instead_of_failing() -> None:
    """At a deadline equal to the p99 target every request slower than it is dropped, so the
    0.1% error limit binds at the 99.9th percentile; a longer deadline (a searched knob, in
    multiples of the target) answers those late: at the same arrivals fewer errors, p99 still
    within the target."""
    noise = np.quantile(np.random.default_rng(0).lognormal(0, 0.5, 20000), QUANTILES)
    model = TrafficModel(
        {"s": ServiceModel(0.009, 0.006, 0.0, noise=tuple(float(q) for q in noise))},
        (RequestClass("search", 1.0, (Visit("s", 1.0, 1.0, None),)),),
        0.0005,
    )
    start = SimConfig({"s": StageConfig(16, 0.001, queue_size=2048)}, deadline_s=0.1)
    at_target = simulate(model, start, 20, 3000)
    longer = simulate(model, dataclasses.replace(start, deadline_s=0.2), 20, 3000)
    assert at_target.error_rate > 0.001 > longer.error_rate
    assert max(at_target.p99_s(), longer.p99_s()) <= 0.1
    names = [name for name, _, _ in knobs(model, start, 0.1)]
    assert "deadline_s" in names and "deadline_s" not in [n for n, _, _ in knobs(model, start)]
