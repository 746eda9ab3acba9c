"""Models fitted from traffic logs: per-stage service demand, request mix, per-request overhead.

The resource manager of JIZHI (Liu et al., KDD 2021) plans from historical logs; this module
turns ``serving.trafficlog`` events into what the simulator needs:

- ``ServiceModel`` per stage: CPU seconds of one call as ``a + b·n + c·u`` (``n`` items, ``u``
  work units, e.g. candidates scored) times a multiplicative noise drawn from the logged
  residuals, and an Amdahl parallel fraction for intra-op threads (identifiable only when the
  logs hold more than one thread count; otherwise threads are assumed not to help).
- ``RequestClass`` per pipeline: its share of requests and the stages it visits (probability,
  units per item, units when degraded or ``None`` when degrading skips the stage).
- ``overhead_s``: CPU seconds per request outside the stages (HTTP parsing, validation, the
  event loop), from the CPU ticks minus the stages' CPU.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUANTILES = np.linspace(0.0, 1.0, 101)
# stages every request of the pipeline passes (a logged shortfall is requests that expired
# before reaching them); the others (lookup of a known user, rerank on request) are optional
MANDATORY = frozenset({"model", "candidates", "rank", "encode", "index"})
# stages whose cost ``recommend.precision`` changes (the ColdNAS ranking's matrix products)
PRECISION_STAGES = frozenset({"model", "rank"})
MIN_FIT_CALLS = 20  # logged calls of a stage at another precision needed to fit it


@dataclass(frozen=True)
class ServiceModel:
    """CPU seconds of one stage call.

    Attributes:
        a / b / c: fixed cost per call, per item, per work unit (all >= 0).
        noise: 101 quantiles of logged ``cpu / fitted`` (sampled by inverse transform).
        parallel: Amdahl parallel fraction for intra-op threads (0: threads do not help).
        samples: batches the fit used.
    """

    a: float
    b: float
    c: float
    noise: tuple[float, ...] = (1.0,) * 101
    parallel: float = 0.0
    samples: int = 0

    def mean(self, n: float, u: float, threads: int = 1) -> float:
        base = self.a + self.b * n + self.c * u
        return base * ((1 - self.parallel) + self.parallel / max(1, threads))

    def sample(self, n: float, u: float, threads: int, rng: np.random.Generator) -> float:
        return self.mean(n, u, threads) * float(np.interp(rng.random(), QUANTILES, self.noise))


@dataclass(frozen=True)
class Visit:
    """A stage on a request's path: visited with ``prob``; ``units`` per item; ``degraded``
    units when the request is degraded (``None``: a degraded request skips the stage)."""

    stage: str
    prob: float
    units: float
    degraded: float | None


@dataclass(frozen=True)
class RequestClass:
    pipeline: str
    share: float
    visits: tuple[Visit, ...]


@dataclass(frozen=True)
class TrafficModel:
    """What the logs say about the server: stage costs, the request mix, the overhead.

    Attributes:
        stages: service model per stage name.
        classes: request classes (shares sum to 1).
        overhead_s: CPU seconds per request outside the stages.
        idle_cpu: CPU seconds per second spent with no request (timers, polling).
        rate: mean logged arrival rate (requests/s) and ``cv2`` its inter-arrival squared
            coefficient of variation (1 for Poisson).
        server: the logged server config (of the last run).
        requests: request events read.
        cpu_share: 95th percentile of the process's CPU seconds per wall second over the
            ticks with a refusal (what it got while overloaded: on a shared machine, less than
            its cores); ``saturated``: the logs hold refusals.
        background: other runnable threads competing for the same cores, from the calls'
            wall/CPU time ratio in the calmer half of the seconds (``ratio - 1``; 0 on an
            otherwise idle machine).
        precision: ``recommend.precision`` of the logged config (``stages`` are its costs);
            ``by_precision``: the ``PRECISION_STAGES`` fitted on the logged runs of each other
            precision (a plan can switch precision only to one the logs measured).
    """

    stages: dict[str, ServiceModel]
    classes: tuple[RequestClass, ...]
    overhead_s: float
    idle_cpu: float = 0.0
    rate: float = 0.0
    cv2: float = 1.0
    server: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    cpu_share: float = 0.0
    saturated: bool = False
    background: float = 0.0
    precision: str = "float32"
    by_precision: dict[str, dict[str, ServiceModel]] = field(default_factory=dict)

    def service(self, stage: str, precision: str | None = None) -> ServiceModel:
        """The service model of ``stage`` when the server scores in ``precision``."""
        if precision is None or precision == self.precision:
            return self.stages[stage]
        return self.by_precision.get(precision, {}).get(stage, self.stages[stage])

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions a plan may choose: the logged one and those measured in the logs."""
        return (self.precision, *sorted(self.by_precision))


def fit_service(n: np.ndarray, u: np.ndarray, cpu: np.ndarray) -> tuple[float, float, float]:
    """Non-negative least squares of ``cpu ≈ a + b·n + c·u`` (drop a negative term, refit).

    ``u`` proportional to ``n`` makes ``c`` unidentifiable: then it is 0 and ``b`` carries it.
    A constant ``n`` (every logged call one item: no batch ever formed) makes ``a`` and ``b``
    unidentifiable: then ``a`` is 0 and the cost is all per item, so the planner credits
    batching with no saving it has not seen (least squares would split the cost in halves).
    """
    columns = {"a": np.ones_like(n), "b": n, "c": u}
    active = ["a", "b", "c"]
    if np.ptp(u / np.maximum(n, 1)) < 1e-9:
        active.remove("c")
    if n.size and np.ptp(n) < 1e-9:
        active.remove("a")
    while active:
        X = np.stack([columns[k] for k in active], axis=1)
        coef, *_ = np.linalg.lstsq(X, cpu, rcond=None)
        if (coef >= 0).all():
            fitted = dict(zip(active, coef.tolist(), strict=True))
            return fitted.get("a", 0.0), fitted.get("b", 0.0), fitted.get("c", 0.0)
        active.pop(int(np.argmin(coef)))
    return 0.0, 0.0, 0.0


def fit_stage(batches: list[dict[str, Any]], threads: dict[int, int]) -> ServiceModel:
    """The service model of one stage from its ``batch`` events (``threads``: per run).

    A call's work is the sum of its items' units: the ColdNAS ranking pads a pass to its widest
    candidate list, but scores a batch in one pass per candidate count
    (``RecommendPipeline._rank_batch``), so no item is padded."""
    n = np.array([b["n"] for b in batches], float)
    u = np.array([b["u"] for b in batches], float)
    cpu = np.array([_demand(b) for b in batches], float)
    t = np.array([threads.get(b["run"], 1) for b in batches])
    one = t == t.min()
    a, b, c = fit_service(n[one], u[one], cpu[one])
    base = ServiceModel(a, b, c)
    parallel = _fit_parallel(base, n, u, cpu, t) if len(set(t.tolist())) > 1 else 0.0
    model = ServiceModel(a, b, c, parallel=parallel)
    fitted = np.array([model.mean(x, y, int(z)) for x, y, z in zip(n, u, t, strict=True)])
    ratio = np.clip(cpu / np.maximum(fitted, 1e-9), 0.1, 10.0)
    noise = tuple(float(q) for q in np.quantile(ratio, QUANTILES))
    return ServiceModel(a, b, c, noise, parallel, len(batches))


def _demand(batch: dict[str, Any]) -> float:
    """CPU demand of a logged call: the thread's CPU time when known, else its wall time."""
    cpu = batch.get("cpu")
    return float(batch["svc"] if cpu is None else cpu)


def _fit_parallel(
    base: ServiceModel, n: np.ndarray, u: np.ndarray, cpu: np.ndarray, t: np.ndarray
) -> float:
    """Amdahl fraction ``p`` from calls at several thread counts (grid search, least squares)."""
    mean1 = np.array([base.mean(x, y) for x, y in zip(n, u, strict=True)])
    grid = np.linspace(0, 1, 101)
    errors = [np.sum((cpu - mean1 * ((1 - p) + p / t)) ** 2) for p in grid]
    return float(grid[int(np.argmin(errors))])


def fit_traffic(events: Iterable[dict[str, Any]]) -> TrafficModel:
    """Fit every model from the events of ``trafficlog.read_events``.

    Raises:
        ValueError: the logs hold no request or no batch.
    """
    metas, reqs, ticks = [], [], []
    batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        kind = e["e"]
        if kind == "meta":
            metas.append(e)
        elif kind == "req":
            reqs.append(e)
        elif kind == "batch":
            batches[e["s"]].append(e)
        elif kind == "tick":
            ticks.append(e)
    if not reqs or not batches:
        raise ValueError("the traffic logs hold no requests or no stage calls to fit")
    sample = float(metas[-1].get("sample", 1.0)) if metas else 1.0
    threads = {
        i: int(m.get("server", {}).get("compute", {}).get("intra_op_threads", 1))
        for i, m in enumerate(metas)
    }
    precisions = {i: _precision(m.get("server", {})) for i, m in enumerate(metas)}
    server = metas[-1].get("server", {}) if metas else {}
    base = _precision(server)
    stages: dict[str, ServiceModel] = {}
    fitted_at: dict[str, dict[str, ServiceModel]] = defaultdict(dict)
    for name, bs in batches.items():
        logged_at = {precisions.get(b["run"], base) for b in bs}
        if name not in PRECISION_STAGES or base not in logged_at:
            stages[name] = fit_stage(bs, threads)
            continue
        for precision in sorted(logged_at):
            mine = [b for b in bs if precisions.get(b["run"], base) == precision]
            if len(mine) >= MIN_FIT_CALLS or precision == base:
                fitted = fit_stage(mine, threads)
                if precision == base:
                    stages[name] = fitted
                else:
                    fitted_at[precision][name] = fitted
    by_precision = dict(fitted_at)
    # the loop's CPU and the other processes' load come from the runs at the fewest torch
    # threads: a call's logged ``cpu`` is its calling thread's, so a tick of a run with more
    # threads also holds the other intra-op threads' CPU, which would count as the loop's
    fewest = min(threads.values(), default=1)
    ticks_1, batches_1 = ticks, dict(batches)
    if len(set(threads.values())) > 1:
        runs = {run for run, t in threads.items() if t == fewest}
        ticks_1 = [t for t in ticks if t["run"] in runs]
        batches_1 = {k: [b for b in bs if b["run"] in runs] for k, bs in batches.items()}
    overhead, idle = fit_overhead(ticks_1, batches_1, sample)
    # the logged process's own loop slows its calls only where it had one core
    one_core = bool(metas) and all(int(m.get("cpus", 0)) == 1 for m in metas)
    own = loop_share(ticks_1, batches_1, sample) if one_core else None
    rate, cv2 = arrival_rate(reqs, sample)
    return TrafficModel(
        stages,
        request_classes(reqs, batches, server),
        overhead,
        idle,
        rate,
        cv2,
        server,
        len(reqs),
        cpu_share(ticks, reqs),
        any(r["d"] == "reject" for r in reqs),
        background_load(batches_1, ticks_1, own),
        base,
        by_precision,
    )


def _precision(server: dict[str, Any]) -> str:
    return str(server.get("recommend", {}).get("precision", "float32"))


def background_load(
    batches: dict[str, list[dict[str, Any]]],
    ticks: list[dict[str, Any]],
    own: dict[tuple[int, int], float] | None = None,
) -> float:
    """``median(wall / cpu - 1 - own)`` of the isolated stage calls (``isolated``) logged in the
    calmer half of the ticks.

    A call that took twice its CPU time on the wall clock shared its core with about one other
    runnable thread. Part of that is the server's own event loop (``own``: per ``(run, second)``
    the CPU share of the process outside the stage calls, given only when the logged process ran
    on one core; the simulator already shares the core with the loop); the rest belongs to other
    processes, which the simulator adds as a constant processor-sharing load.
    """
    every = [b for bs in batches.values() for b in bs]
    calls = [b for b in isolated(every) if (b.get("cpu") or 0) > 1e-4]
    calls = calls or [b for b in every if (b.get("cpu") or 0) > 1e-4]
    if not calls or not ticks:
        return 0.0
    own = own or {}
    calm_limit = float(np.median([t["req"] for t in ticks]))
    calm = {(t["run"], int(t["t"])) for t in ticks if t["req"] <= calm_limit}

    def excess(b: dict[str, Any]) -> float:
        return b["svc"] / b["cpu"] - 1.0 - own.get((b["run"], int(b["t"]) + 1), 0.0)

    ratios = [excess(b) for b in calls if (b["run"], int(b["t"]) + 1) in calm]
    ratios = ratios or [excess(b) for b in calls]
    return max(0.0, float(np.median(ratios)))


def isolated(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls that overlapped no other stage call of their run: a call's wall time runs from
    its stage's hand-off to the pool, so one that queued behind another stage's call for a
    pool thread (several stages, fewer threads) took longer than its CPU time without any
    other process being involved; only the isolated calls measure the others' load."""
    by_run: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for b in calls:
        by_run[b["run"]].append(b)
    out = []
    for run in by_run.values():
        run.sort(key=lambda b: b["t"])
        latest_end = -np.inf
        for i, b in enumerate(run):
            end = b["t"] + b["svc"]
            next_start = run[i + 1]["t"] if i + 1 < len(run) else np.inf
            if latest_end <= b["t"] and next_start >= end:
                out.append(b)
            latest_end = max(latest_end, end)
    return out


def cpu_share(ticks: list[dict[str, Any]], reqs: list[dict[str, Any]]) -> float:
    """95th percentile of CPU/wall over the ticks that saw a refusal (0 when none did): the CPU
    the process got while it was refusing work, i.e. what it could get then."""
    refused: dict[int, list[float]] = defaultdict(list)
    for r in reqs:
        if r["d"] == "reject":
            refused[r["run"]].append(r["t"])
    shares = []
    for t in ticks:
        times = np.asarray(refused.get(t["run"], ()))
        if t["wall"] > 0 and ((times > t["t"] - t["wall"]) & (times <= t["t"])).any():
            shares.append(t["cpu"] / t["wall"])
    return float(np.quantile(shares, 0.95)) if shares else 0.0


def fit_overhead(
    ticks: list[dict[str, Any]], batches: dict[str, list[dict[str, Any]]], sample: float
) -> tuple[float, float]:
    """CPU per request outside the stages, and idle CPU per second, from the ticks.

    Per tick ``i``: ``cpu_i - stage_cpu_i = overhead · requests_i + idle · wall_i`` (least
    squares, both >= 0). The first tick of each run also holds start-up work and is left out.
    """
    rows, stage_cpu = tick_stage_cpu(ticks, batches, sample)
    if not rows:
        return 0.0, 0.0
    residual = np.array([t["cpu"] for t in rows]) - stage_cpu
    req = np.array([t["req"] for t in rows], float)
    wall = np.array([t["wall"] for t in rows], float)
    X = np.stack([req, wall], axis=1)
    coef, *_ = np.linalg.lstsq(X, residual, rcond=None)
    per_req, idle = (float(c) for c in coef)
    if idle < 0 or per_req < 0:  # fall back to no idle term
        return max(0.0, float(residual.sum() / max(req.sum(), 1))), 0.0
    return per_req, idle


def tick_stage_cpu(
    ticks: list[dict[str, Any]], batches: dict[str, list[dict[str, Any]]], sample: float
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The ticks (the first of each run left out: it holds start-up work) and the stage calls'
    CPU seconds that fall within each."""
    runs = defaultdict(list)
    for tick in ticks:
        runs[tick["run"]].append(tick)
    rows = [t for ts in runs.values() for t in ts[1:] if t["wall"] > 0]
    stage_cpu = np.zeros(len(rows))
    if not rows:
        return rows, stage_cpu
    run_of = np.array([t["run"] for t in rows])
    ends = np.array([t["t"] for t in rows])
    starts = ends - np.array([t["wall"] for t in rows])
    flat = [b for bs in batches.values() for b in bs]
    b_run = np.array([b["run"] for b in flat])
    b_t = np.array([b["t"] for b in flat])
    b_cpu = np.array([_demand(b) for b in flat]) / sample
    for run in np.unique(run_of):
        (idx,) = np.nonzero(run_of == run)
        mine = b_run == run
        j = idx[np.searchsorted(ends[idx], b_t[mine], side="right").clip(max=idx.size - 1)]
        inside = (starts[j] <= b_t[mine]) & (b_t[mine] < ends[j])
        np.add.at(stage_cpu, j[inside], b_cpu[mine][inside])
    return rows, stage_cpu


def loop_share(
    ticks: list[dict[str, Any]], batches: dict[str, list[dict[str, Any]]], sample: float
) -> dict[tuple[int, int], float]:
    """Per ``(run, second)``: the process's CPU share outside the stage calls (its event loop)."""
    rows, stage_cpu = tick_stage_cpu(ticks, batches, sample)
    return {
        (t["run"], int(t["t"])): max(0.0, (t["cpu"] - s) / t["wall"])
        for t, s in zip(rows, stage_cpu, strict=True)
    }


def arrival_rate(reqs: list[dict[str, Any]], sample: float) -> tuple[float, float]:
    """Mean arrival rate over the logged request times and the inter-arrival SCV."""
    t = np.sort(np.array([r["t"] + 1e6 * r["run"] for r in reqs]))
    gaps = np.diff(t)
    gaps = gaps[gaps < 5.0]  # pauses between runs or load phases are not arrivals
    if gaps.size < 2:
        return 0.0, 1.0
    rate = 1.0 / float(gaps.mean()) / sample
    cv2 = float(gaps.var() / gaps.mean() ** 2)
    return rate, cv2


def request_classes(
    reqs: list[dict[str, Any]], batches: dict[str, list[dict[str, Any]]], server: dict[str, Any]
) -> tuple[RequestClass, ...]:
    """Per pipeline: share of requests and the visits (items per admitted request per stage).

    Visit probabilities are counted in the seconds without a refusal of that pipeline (under
    overload requests expire between admission and a stage, which is not a path property).
    """
    total: dict[str, int] = defaultdict(int)
    refused: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in reqs:
        total[r["p"]] += 1
        if r["d"] == "reject":
            refused[r["p"]].add(_second(r))
    n_all = sum(total.values())
    classes = []
    for pipeline in sorted(total):
        calm = [r for r in reqs if r["p"] == pipeline and _second(r) not in refused[pipeline]]
        visits = []
        for stage in _path(pipeline, server):
            bs = [b for b in batches.get(stage, []) if b["p"] == pipeline]
            if not bs:
                continue
            items = sum(b["n"] for b in bs if _second(b) not in refused[pipeline])
            per_item = np.array([b["u"] / b["n"] for b in bs if b["n"]])
            prob = 1.0 if stage in MANDATORY else min(1.0, items / max(len(calm), 1))
            units = float(np.quantile(per_item, 0.9)) if per_item.size else 1.0
            visits.append(Visit(stage, prob, units, _degraded(pipeline, stage, units, server)))
        classes.append(RequestClass(pipeline, total[pipeline] / n_all, tuple(visits)))
    return tuple(classes)


def _second(event: dict[str, Any]) -> tuple[int, int]:
    return event["run"], int(event["t"])


def _path(pipeline: str, server: dict[str, Any]) -> list[str]:
    if pipeline == "recommend":
        fused = server.get("recommend", {}).get("fused", True)
        return ["lookup", "model"] if fused else ["lookup", "adapt", "candidates", "rank"]
    return ["encode", "index", "rerank"]


def _degraded(pipeline: str, stage: str, units: float, server: dict[str, Any]) -> float | None:
    """Work of a degraded request at ``stage``: fewer candidates, or no rerank (skipped)."""
    if pipeline == "search":
        return None if stage == "rerank" else units
    if stage in ("model", "candidates", "rank"):
        degraded = server.get("recommend", {}).get("degraded_candidates", units)
        return float(min(units, degraded))
    return units
