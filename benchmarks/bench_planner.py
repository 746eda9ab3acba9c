"""Benchmark: the resource planner, predicted against measured capacity, default against planned.

For a workload, in one run: (1) serve it with the default config and the traffic log on, under
an open-loop ramp (doubling rates, as ``bench_serving.max_rate``); (2) ``make_plan`` on those
logs (p99 100 ms, the one server core); (3) measure the capacity at p99 <= 100 ms (< 0.1%
errors) of the default config and of the planned config, log off, same doubling + bisection as
``bench_serving.max_rate``, both servers up and measured in turns rate by rate (a shared
machine's load changes within minutes); (4) print predicted against measured capacity, and predicted against measured
p99 at every measured rate. Also the log's cost: µs per event in-process, and events per request.

Workloads (``--workload``):
- ``recommend``: the part-1 benchmark workload (``bench_serving``): ML-1M ColdNAS, new users with
  20 support interactions, 500 MF candidates, k = 10.
- ``mixed``: search-heavy: 70% ``search`` (zero-shot MiniLM over SciFact, exact index, no
  rerank) and 30% of the recommend requests above, one server running both pipelines.

Usage (final figures under the exclusive lock, one workload per run, < 10 min each)::

    flock -x /tmp/ws-bench.lock python benchmarks/bench_planner.py --data-dir ../shared/data \\
        --workload recommend
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as bs
from common import add_common_args, print_table, write_result
from loadgen import measure, request_bytes

P99_MS = bs.P99_MS
SEARCH_SHARE = 0.7  # of the mixed workload


def payloads_for(workload: str, data_dir: Path) -> list[bytes]:
    """Request bytes of ``workload`` (a fixed shuffled mix, reused round-robin by the generator)."""
    rec = [
        request_bytes("POST", "/v1/recommend", json.dumps(b).encode())
        for b in bs.request_bodies(data_dir, 600)
    ]
    if workload == "recommend":
        return rec
    from warmstart.data.retrieval import beir_root, load_beir

    queries = list(load_beir(beir_root(data_dir)).queries.values())[:600]
    search = [
        request_bytes("POST", "/v1/search", json.dumps({"query": q, "k": bs.K}).encode())
        for q in queries
    ]
    rng = np.random.default_rng(0)
    picks = rng.random(1200) < SEARCH_SHARE
    return [search[i % len(search)] if s else rec[i % len(rec)] for i, s in enumerate(picks)]


def default_config(workload: str, port: int, workdir: Path) -> dict[str, Any]:
    config = bs.ours_config(port, workdir)
    if workload == "mixed":
        config["models"]["retriever"] = str(bs.RETRIEVER)
    return config


class Served:
    """A ``bench_serving`` server process over ``config`` (its port replaced by a free one)."""

    def __init__(self, config: dict[str, Any], path: Path) -> None:
        self.port = bs.free_port()
        path.write_text(json.dumps({**config, "port": self.port}))
        self.proc = bs.ServerProcess(["--serve", "ours", "--config", str(path)], self.port)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.stop()

    def admission(self) -> dict[str, dict[str, float]]:
        import httpx

        stats = httpx.get(f"http://127.0.0.1:{self.port}/v1/stats", timeout=10).json()
        return {p: stats[p]["admission"] for p in ("recommend", "search") if p in stats}


class RateSearch:
    """``bench_serving.max_rate``'s search as a state machine, so two servers can take turns:
    double from ``start`` up to a failure (or halve down to a pass), then ``refine`` bisections."""

    def __init__(self, start: float, refine: int) -> None:
        self.rate, self.good, self.bad, self.left = start, 0.0, None, refine
        self.curve: list[dict[str, float]] = []
        self.discarded: list[dict[str, float]] = []
        self.done = False

    def update(self, ok: bool) -> None:
        r = self.rate
        if ok:
            self.good = max(self.good, r)
        else:
            self.bad = r if self.bad is None else min(self.bad, r)
        if self.bad is None:  # still doubling
            self.rate, self.done = 2 * r, 2 * r > 20_000
        elif not self.good:  # failed at the start rate: go down
            self.rate, self.done = self.bad / 2, self.bad <= 5
        elif self.left:
            self.rate, self.left = (self.good + self.bad) / 2, self.left - 1
        else:
            self.done = True


MAX_SEND_LAG_MS = 10.0  # a step where the generator itself fell this far behind is measured again


def valid_step(name: str, port: int, payloads: list[bytes], x: RateSearch, seconds: float) -> bool:
    """``bench_serving.step`` at ``x.rate``; a step whose generator send lag p99 exceeds
    ``MAX_SEND_LAG_MS`` (the client, not the server, was starved on the shared machine) is
    kept in ``x.discarded`` and measured again, at most twice."""
    for attempt in range(3):
        print(f"  {name}:", end="", flush=True)
        ok = bs.step(port, payloads, x.rate, seconds, x.curve)
        if x.curve[-1]["send_lag_p99_ms"] <= MAX_SEND_LAG_MS or attempt == 2:
            return ok
        x.discarded.append(x.curve.pop())
    return ok


def paired_capacity(
    configs: dict[str, dict[str, Any]],
    workdir: Path,
    w: str,
    payloads: list[bytes],
    start: float,
    args: Any,
) -> dict[str, dict[str, Any]]:
    """Max rate at p99 <= 100 ms of each config, both servers up at once (same core) and
    measured in turns, rate by rate, so that a change in the shared machine's load hits both."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(Served(config, workdir / f"{w}-{name}.json"))
            for name, config in configs.items()
        }
        for s in servers.values():
            measure("127.0.0.1", s.port, payloads, 0.25 * start, 2.0, seed=999)  # warm-up
        searches = {name: RateSearch(start, args.refine) for name in configs}
        while not all(x.done for x in searches.values()):
            for name, x in searches.items():
                if not x.done:
                    x.update(valid_step(name, servers[name].port, payloads, x, args.duration))
        out = {}
        for name, s in servers.items():
            adm = s.admission()
            degraded = sum(a["degraded"] for a in adm.values())
            admitted = sum(a["admitted"] for a in adm.values())
            out[name] = {
                "capacity": searches[name].good,
                "curve": searches[name].curve,
                "discarded_steps": searches[name].discarded,
                "degraded_share_all_rates": degraded / max(admitted, 1),
            }
    return out


def log_cost(n: int = 20000) -> dict[str, float]:
    """In-process µs per logged event (a batch of 4 items, a request decision)."""
    import tempfile

    from warmstart.serving.trafficlog import TrafficLog, TrafficLogConfig

    with tempfile.TemporaryDirectory() as tmp:
        log = TrafficLog(TrafficLogConfig(path=tmp))
        t0 = time.perf_counter()
        for i in range(n):
            log.batch("recommend", "model", log.t0 + i * 1e-4, 0.003, [0.001] * 4, 2000, 2, 0.003)
        batch_us = 1e6 * (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            log.request("recommend", "admit", 0.004)
        req_us = 1e6 * (time.perf_counter() - t0) / n
        log.close()
    return {"batch_event_us": batch_us, "request_event_us": req_us}


def log_share(logdir: Path, cost: dict[str, float]) -> dict[str, float]:
    """Logging CPU per request (events per request × µs per event) against the process CPU
    per request, both from the logs."""
    from warmstart.serving.trafficlog import read_events

    counts = {"req": 0, "batch": 0, "cpu": 0.0, "ticked": 0}
    for e in read_events(logdir):
        if e["e"] in ("req", "batch"):
            counts[e["e"]] += 1
        elif e["e"] == "tick":
            counts["cpu"] += e["cpu"]
            counts["ticked"] += e["req"]
    per_request_us = cost["request_event_us"] + cost["batch_event_us"] * counts["batch"] / max(
        counts["req"], 1
    )
    cpu_us = 1e6 * counts["cpu"] / max(counts["ticked"], 1)
    return {"log_us_per_request": per_request_us, "process_cpu_us_per_request": cpu_us,
            "log_share_of_cpu": per_request_us / cpu_us}  # fmt: skip


def predicted_p99(model: Any, config: Any, curve: list[dict[str, float]], n: int) -> list[dict]:
    """The simulator's p99 at every rate the load generator measured."""
    from warmstart.serving.planner.simulate import simulate

    rows = []
    for point in sorted(curve, key=lambda r: r["rate"]):
        r = simulate(model, config, point["rate"], n)
        rows.append(
            {"rate": point["rate"], "measured_p99_ms": point["p99_ms"],
             "predicted_p99_ms": 1e3 * r.p99_s(), "measured_errors": point["error_rate"],
             "predicted_errors": r.error_rate}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--workload", choices=("recommend", "mixed"), default="recommend")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per arrival rate")
    parser.add_argument("--refine", type=int, default=4, help="bisection steps")
    parser.add_argument("--log-duration", type=float, default=3.0, help="seconds per ramp rate")
    parser.add_argument("--requests", type=int, default=3000, help="simulated per rate")
    parser.add_argument("--max-degraded", type=float, default=0.05, help="planner's limit")
    parser.add_argument(
        "--cores",
        choices=("one", "logs"),
        default="one",
        help="plan for the one server core, or for the CPU share it got while overloaded",
    )
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    if args.quick:  # a smoke run
        args.duration, args.refine, args.requests, args.log_duration = 1.0, 0, 500, 1.0
    run(args)


def run(args: argparse.Namespace) -> None:
    from warmstart.serving.planner.plan import make_plan, write_plan
    from warmstart.serving.planner.search import Target

    os.sched_setaffinity(0, {bs.CLIENT_CPU})
    bs.ensure_artifacts(args.data_dir, 5)
    if args.workload == "mixed":
        bs.ensure_retriever(args.data_dir, None)
    payloads = payloads_for(args.workload, args.data_dir)
    workdir = bs.RUNS / "planner"
    workdir.mkdir(parents=True, exist_ok=True)
    w = args.workload
    start = 100.0 if w == "recommend" else 10.0
    result: dict[str, Any] = {"workload": w, "uptime_before": os.getloadavg()}

    print(f"[{w}] logs: default config, traffic log on, open-loop ramp", flush=True)
    logdir = workdir / f"{w}-logs"
    shutil.rmtree(logdir, ignore_errors=True)
    logged = default_config(w, 0, workdir)
    logged["traffic_log"] = {"path": str(logdir)}
    t0 = time.perf_counter()
    with Served(logged, workdir / f"{w}-logged.json") as s:
        measure("127.0.0.1", s.port, payloads, 0.25 * start, 2.0, seed=999)
        ramp: list[dict[str, float]] = []
        result["ramp_capacity_log_on"] = bs.max_rate(
            s.port, payloads, start, args.log_duration, 1, ramp
        )
    result["ramp"] = ramp
    result["log_bytes"] = sum(f.stat().st_size for f in logdir.iterdir())
    print(f"  ramp {time.perf_counter() - t0:.0f} s, log {result['log_bytes'] / 1e6:.1f} MB")

    print(f"[{w}] plan: --p99-ms {P99_MS:.0f} --cores 1 ({args.cores})", flush=True)
    t0 = time.perf_counter()
    plan = make_plan(
        logdir,
        P99_MS,
        1,
        Target(n=args.requests, max_degraded=args.max_degraded),
        progress=lambda m: print("  " + m),
        cores_from_logs=args.cores == "logs",
    )
    planned_path = workdir / f"{w}-planned.json"
    write_plan(plan, planned_path)
    result["plan"] = plan.report()
    result["plan_seconds"] = time.perf_counter() - t0
    summary = plan.summary()
    print(
        f"  planned in {result['plan_seconds']:.0f} s for {plan.logged.cores:.2f} cores "
        f"and {plan.logged.background:.2f} other runnable threads (CPU share while refusing "
        f"{plan.model.cpu_share:.2f}); changes {summary['changes']}",
        flush=True,
    )

    print(f"[{w}] capacity of the default and the planned config, in turns", flush=True)
    configs = {
        "default": default_config(w, 0, workdir),
        "planned": json.loads(planned_path.read_text()),
    }
    measured = paired_capacity(configs, workdir, w, payloads, start, args)
    result["measured"] = measured
    result["predicted_vs_measured_p99"] = {
        "default": predicted_p99(plan.model, plan.logged, measured["default"]["curve"], args.requests),
        "planned": predicted_p99(plan.model, plan.planned, measured["planned"]["curve"], args.requests),
    }  # fmt: skip
    result["log_cost"] = log_cost()
    result["log_cost"].update(log_share(logdir, result["log_cost"]))
    result["uptime_after"] = os.getloadavg()
    report(result, summary)
    write_result(args.name or f"planner_{w}", result, lambda ax: plot(ax, result))


def report(result: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = []
    for name, key in (("default", "logged"), ("planned", "planned")):
        pred, meas = summary[key], result["measured"][name]
        cap = meas["capacity"]
        at = [r for r in meas["curve"] if r["rate"] == cap]
        rows.append(
            {"config": name, "predicted_capacity": round(pred["capacity"], 1),
             "measured_capacity": cap,
             "pred/meas": round(pred["capacity"] / cap, 3) if cap else "-",
             "predicted_p99_ms": round(pred["p99_ms"], 1),
             "measured_p99_ms": round(at[0]["p99_ms"], 1) if at else "-",
             "pred_degraded": round(pred["degraded"], 3),
             "meas_degraded_all_rates": round(meas["degraded_share_all_rates"], 3)}
        )  # fmt: skip
    print_table(rows, list(rows[0]))
    d, p = result["measured"]["default"]["capacity"], result["measured"]["planned"]["capacity"]
    print(f"changes: {summary['changes']}")
    print(f"planned / default measured capacity: {p / d if d else float('nan'):.3f}")
    for name, points in result["predicted_vs_measured_p99"].items():
        print(f"{name}: rate -> measured p99 / predicted p99 (ms)")
        for r in points:
            print(f"  {r['rate']:7.1f}  {r['measured_p99_ms']:8.1f}  {r['predicted_p99_ms']:8.1f}")
    c = result["log_cost"]
    print(f"log cost: {c['batch_event_us']:.1f} µs per batch event, "
          f"{c['request_event_us']:.1f} µs per request event; {c['log_us_per_request']:.1f} µs "
          f"per request = {c['log_share_of_cpu']:.2%} of the process CPU per request "
          f"({c['process_cpu_us_per_request']:.0f} µs); log {result['log_bytes']} bytes")  # fmt: skip
    print(f"load average before {result['uptime_before']}, after {result['uptime_after']}")


def plot(ax: Any, result: dict[str, Any]) -> None:
    for name, points in result["predicted_vs_measured_p99"].items():
        rates = [r["rate"] for r in points]
        ax.plot(rates, [r["measured_p99_ms"] for r in points], marker="o", label=f"{name} measured")
        ax.plot(
            rates,
            [r["predicted_p99_ms"] for r in points],
            linestyle="--",
            label=f"{name} predicted",
        )
    ax.axhline(P99_MS, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"planner: predicted vs measured p99 ({result['workload']})")
    ax.legend()


if __name__ == "__main__":
    main()
