"""``warmstart serve plan``: logs → fitted models → searched knobs → a config the server loads.

The written config is the logged server config (models, store, port, ...) with the planned
knobs replaced and the traffic log switched off; a ``*.plan.json`` report beside it holds the
fitted models, the predicted capacity and p99 curve of the logged and the planned configuration,
and every knob value tried.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.serving.engine import StageConfig
from warmstart.serving.planner.fit import ServiceModel, TrafficModel, fit_traffic
from warmstart.serving.planner.search import Capacity, SearchResult, Target, search
from warmstart.serving.planner.simulate import DEFAULT_STAGE, SimConfig, simulate
from warmstart.serving.trafficlog import read_events

# where each stage's knobs live in the server config (the fused recommend stage uses ``rank``)
SECTIONS = {
    "lookup": ("recommend", "lookup"),
    "model": ("recommend", "rank"),
    "adapt": ("recommend", "adapt"),
    "candidates": ("recommend", "candidates"),
    "rank": ("recommend", "rank"),
    "encode": ("search", "encode"),
    "index": ("search", "index"),
    "rerank": ("search", "rerank"),
}
CURVE = (0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25)


def sim_config(server: dict[str, Any], model: TrafficModel, cores: float) -> SimConfig:
    """The simulator's view of a server config (``ServeConfig.to_dict()`` form)."""
    from warmstart.serving.config import ServeConfig

    resolved = ServeConfig.from_dict(_known(server)).to_dict()
    stages = {}
    for name in model.stages:
        section = resolved[SECTIONS[name][0]][SECTIONS[name][1]]
        stages[name] = StageConfig(
            max_batch=section["max_batch"], max_wait_s=section["max_wait_s"],
            concurrency=section["concurrency"], queue_size=section["queue_size"],
        )  # fmt: skip
    adm = resolved["admission"]
    return SimConfig(
        stages,
        resolved["compute"]["workers"],
        resolved["compute"]["intra_op_threads"],
        float(cores),
        adm["deadline_ms"] / 1e3,
        adm["degrade_at"],
        adm["max_in_flight"],
        adm["shed"],
        reject_at=adm["reject_at"],
        precision=resolved["recommend"]["precision"],
    )


def _known(server: dict[str, Any]) -> dict[str, Any]:
    """A logged config without fields this version's loader does not know (a newer server)."""
    from warmstart.serving.config import ServeConfig

    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    return {k: v for k, v in server.items() if k in fields}


def server_config(planned: SimConfig, server: dict[str, Any]) -> dict[str, Any]:
    """``server`` with ``planned``'s knobs written in (and the traffic log off)."""
    out = copy.deepcopy(_known(server))
    out.setdefault("compute", {}).update(workers=planned.workers, intra_op_threads=planned.threads)
    if planned.precision != _known(server).get("recommend", {}).get("precision", "float32"):
        out.setdefault("recommend", {})["precision"] = planned.precision
    for name, k in planned.stages.items():
        pipeline, stage = SECTIONS[name]
        out.setdefault(pipeline, {}).setdefault(stage, {}).update(
            max_batch=k.max_batch, max_wait_s=k.max_wait_s, concurrency=k.concurrency
        )
    admission = {
        "degrade_at": planned.degrade_at,
        "reject_at": planned.reject_at,
        "deadline_ms": round(1e3 * planned.deadline_s, 3),
    }
    out.setdefault("admission", {}).update(admission)
    for pipeline in ("recommend", "search"):
        if "admission" in out.get(pipeline, {}):
            out[pipeline]["admission"].update(admission)
    out.setdefault("traffic_log", {})["path"] = None
    return out


def capacity_summary(c: Capacity) -> dict[str, float]:
    """A predicted capacity and the simulation at it (p99, degraded share, CPU busy)."""
    r = c.result
    return {
        "capacity": c.rate,
        "p99_ms": 1e3 * r.p99_s() if r else float("nan"),
        "degraded": r.degraded_fraction if r else float("nan"),
        "cpu_busy": r.cpu_busy if r else float("nan"),
    }


@dataclass
class Plan:
    model: TrafficModel
    logged: SimConfig
    planned: SimConfig
    search: SearchResult
    config: dict[str, Any]
    curves: dict[str, list[dict[str, float]]]

    def summary(self) -> dict[str, Any]:
        return {
            "logged": capacity_summary(self.search.start_capacity),
            "planned": capacity_summary(self.search.best_capacity),
            "changes": changes(self.logged, self.planned),
        }

    def report(self) -> dict[str, Any]:
        m = self.model
        return {
            **self.summary(),
            "model": {
                "overhead_ms": 1e3 * m.overhead_s,
                "idle_cpu": m.idle_cpu,
                "logged_rate": m.rate,
                "arrival_cv2": m.cv2,
                "requests": m.requests,
                "cpu_share_p95": m.cpu_share,
                "saturated": m.saturated,
                "cores_planned_for": self.logged.cores,
                "background": m.background,
                "background_simulated": self.logged.background,
                "precision": m.precision,
                "by_precision": {
                    p: {k: _service(s) for k, s in st.items()} for p, st in m.by_precision.items()
                },
                "stages": {k: _service(s) for k, s in m.stages.items()},
                "classes": [dataclasses.asdict(c) for c in m.classes],
            },
            "curves": self.curves,
            "tried": [{"knob": k, "value": v, "capacity": c} for k, v, c in self.search.tried],
            "simulations": self.search.simulations,
            "logged_knobs": _knobs(self.logged),
            "planned_knobs": _knobs(self.planned),
        }


def _service(s: ServiceModel) -> dict[str, float]:
    return {
        "a_ms": 1e3 * s.a,
        "b_ms": 1e3 * s.b,
        "c_us": 1e6 * s.c,
        "parallel": s.parallel,
        "batches": s.samples,
        "noise_p50": s.noise[50],
        "noise_p99": s.noise[99],
    }


def _knobs(c: SimConfig) -> dict[str, Any]:
    return {
        "precision": c.precision,
        "stages": {k: dataclasses.asdict(v) for k, v in c.stages.items()},
        "workers": c.workers,
        "threads": c.threads,
        "cores": c.cores,
        "deadline_s": c.deadline_s,
        "degrade_at": c.degrade_at,
        "reject_at": c.reject_at,
    }


def changes(old: SimConfig, new: SimConfig) -> dict[str, list[Any]]:
    """``{knob: [old, new]}`` for every knob that differs."""
    out: dict[str, list[Any]] = {}
    names = ("precision", "workers", "threads", "deadline_s", "degrade_at", "reject_at")
    for name in (*names, "max_in_flight"):
        if getattr(old, name) != getattr(new, name):
            out[name] = [getattr(old, name), getattr(new, name)]
    for stage, knobs in new.stages.items():
        before = old.stages.get(stage, DEFAULT_STAGE)
        for f in ("max_batch", "max_wait_s", "concurrency"):
            if getattr(before, f) != getattr(knobs, f):
                out[f"{stage}.{f}"] = [getattr(before, f), getattr(knobs, f)]
    return out


def curve(
    model: TrafficModel, config: SimConfig, capacity: float, target: Target
) -> list[dict[str, float]]:
    """Predicted p50/p99, errors and degraded share at fractions of ``capacity``."""
    points = []
    for f in CURVE:
        r = simulate(model, config, max(1.0, f * capacity), target.n, target.seed)
        points.append(
            {"rate": r.rate, "p50_ms": 1e3 * r.p50_s(), "p99_ms": 1e3 * r.p99_s(),
             "error_rate": r.error_rate, "degraded": r.degraded_fraction}
        )  # fmt: skip
    return points


def available_cores(model: TrafficModel, cores: float) -> float:
    """``cores``, or the CPU share the process got while refusing work when that is less (a
    shared machine where other processes took the rest)."""
    if model.saturated and 0 < model.cpu_share < cores:
        return model.cpu_share
    return cores


def make_plan(
    logs: Path | str,
    p99_ms: float,
    cores: float,
    target: Target | None = None,
    progress: Callable[[str], None] | None = None,
    cores_from_logs: bool = False,
    background: bool = True,
    keep_precision: bool = False,
) -> Plan:
    """Fit the logs under ``logs``, search, and build the config to write.

    ``cores_from_logs``: plan for ``available_cores`` instead of ``cores``; ``background``:
    simulate the other processes' load the logs show (``TrafficModel.background``);
    ``keep_precision``: never switch ``recommend.precision`` (answers stay the logged server's).
    """
    target = dataclasses.replace(target or Target(), p99_s=p99_ms / 1e3)
    model = fit_traffic(read_events(logs))
    if keep_precision:
        model = dataclasses.replace(model, by_precision={})
    if cores_from_logs:
        cores = available_cores(model, cores)
    logged = dataclasses.replace(
        sim_config(model.server, model, cores), background=model.background if background else 0.0
    )
    result = search(model, logged, target, progress=progress)
    curves = {
        "logged": curve(model, logged, result.start_capacity.rate, target),
        "planned": curve(model, result.best, result.best_capacity.rate, target),
    }
    return Plan(
        model, logged, result.best, result, server_config(result.best, model.server), curves
    )


def write_plan(plan: Plan, out: Path) -> Path:
    """Write the server config to ``out`` and the report to ``out``'s ``.plan.json`` twin."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan.config, indent=2) + "\n")
    report = out.with_name(out.stem + ".plan.json")
    report.write_text(json.dumps(plan.report(), indent=2, default=str) + "\n")
    return report
