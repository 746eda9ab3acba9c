"""Benchmark: the resource planner, predicted against measured capacity, default against planned.

For a workload, in one run: (1) serve it with the default config and the traffic log on, under
an open-loop ramp (doubling rates, as ``bench_serving.max_rate``); (2) ``make_plan`` on those
logs (p99 100 ms, the server's cores); (3) measure the capacity at p99 <= 100 ms (< 0.1%
errors) of the default config and of the planned config, log off, same doubling + bisection as
``bench_serving.max_rate``, both servers up and measured in turns rate by rate (a shared
machine's load changes within minutes); (4) print predicted against measured capacity, and predicted against measured
p99 at every measured rate. Also the log's cost: µs per event in-process, and events per request.

Workloads (``--workload``):
- ``recommend``: the part-1 benchmark workload (``bench_serving``): ML-1M ColdNAS, new users with
  20 support interactions, 500 MF candidates, k = 10.
- ``mixed``: search-heavy: 70% ``search`` (zero-shot MiniLM over SciFact, exact index, no
  rerank) and 30% of the recommend requests above, one server running both pipelines.

Cores (``--server-cpus``): 1 pins every server to core 1 (the load generator has core 0 to
itself) and plans for one core; 2 runs the servers on cores 0 and 1, beside the generator on
core 0 (its CPU share of that core is printed per step, and a step where it lagged is measured
again), and plans for 2 cores: the threads and workers the default leaves unused. The planner
learns what threads do only from logs at more than one thread count: ``--probe threads2``.

``--rounds R``: after the capacity searches, R rounds measure every server at every measured
capacity, alternated (default, planned, default, planned, ...), so a gain can be told from the
noise of one search (two identical configs measured 1000 and 1150 req/s in one earlier run).

Usage (final figures under the exclusive lock, one workload per run, < 10 min each)::

    flock -x /tmp/ws-bench.lock python benchmarks/bench_planner.py --data-dir ../shared/data \\
        --workload recommend
    flock -x /tmp/ws-bench.lock python benchmarks/bench_planner.py --data-dir ../shared/data \\
        --workload mixed --server-cpus 2 --probe threads2 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
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
from common import RESULTS_DIR, add_common_args, print_table, write_result
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


SERVER_CPUS = {1: frozenset({bs.SERVER_CPU}), 2: frozenset({0, 1})}  # by --server-cpus


class Served:
    """A ``bench_serving`` server process over ``config`` (its port replaced by a free one),
    pinned to ``cpus``."""

    def __init__(
        self, config: dict[str, Any], path: Path, cpus: frozenset[int] = SERVER_CPUS[1]
    ) -> None:
        self.port = bs.free_port()
        path.write_text(json.dumps({**config, "port": self.port}))
        self.proc = bs.ServerProcess(
            ["--serve", "ours", "--config", str(path)], self.port, cpus=cpus
        )

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.stop()

    def admission(self) -> dict[str, dict[str, float]]:
        import httpx

        stats = httpx.get(f"http://127.0.0.1:{self.port}/v1/stats", timeout=10).json()
        return {p: stats[p]["admission"] for p in ("recommend", "search") if p in stats}

    def decisions(self) -> dict[str, int]:
        """Admission counters summed over the pipelines (admitted includes degraded);
        ``degraded``: recommend's only (a search degrade skips a rerank, and no request of
        these workloads asks for one: nothing is lost), ``search_degraded`` apart."""
        adm = self.admission()
        out = {k: int(sum(a[k] for a in adm.values())) for k in ("admitted", "rejected")}
        out["degraded"] = int(adm.get("recommend", {}).get("degraded", 0))
        out["search_degraded"] = int(adm.get("search", {}).get("degraded", 0))
        return out

    def thread_cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) of each of the server's threads, from /proc."""
        pid, out = self.proc.proc.pid, {}
        tick = os.sysconf("SC_CLK_TCK")
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        return out


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
POLL_S = 0.25  # /v1/stats is read this often during a step (admission's inputs the model lacks)


class StatsPoller:
    """Reads the server's ``/v1/stats`` every ``POLL_S`` in a thread while a step runs: the
    event loop's lateness (``loop_lag_ms``: admission counts it as time already spent) and
    each pipeline's admission ``margin`` and ``refusing`` share (the margin applies only while
    refusing > 5%), which the simulator does not model."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5) as client:
            while not self._stop.wait(POLL_S):
                try:
                    stats = client.get("/v1/stats").json()
                except (httpx.HTTPError, ValueError):
                    continue
                adm = [stats[p]["admission"] for p in ("recommend", "search") if p in stats]
                self.samples.append(
                    (stats.get("loop_lag_ms", 0.0), max((a.get("margin", 1.0) for a in adm),
                     default=1.0), max((a.get("refusing", 0.0) for a in adm), default=0.0))
                )  # fmt: skip

    def __enter__(self) -> StatsPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        lag = np.array([x[0] for x in self.samples] or [0.0])
        return {"loop_lag_p50_ms": float(np.median(lag)), "loop_lag_max_ms": float(lag.max()),
                "margin_max": max((x[1] for x in self.samples), default=1.0),
                "refusing_max": max((x[2] for x in self.samples), default=0.0)}  # fmt: skip


def measured_step(
    name: str, s: Served, payloads: list[bytes], rate: float, seconds: float, log: list
) -> dict[str, float]:
    """``bench_serving.step`` at ``rate`` plus what the server says about it: the share of the
    step's requests it degraded (``/v1/stats``), and its threads' CPU per request (``/proc``:
    ``loop_ms`` the main thread, the event loop; ``threads_ms`` all the others), and the load
    generator's own CPU share of its core during the step (``client_cpu``: this process)."""
    before, cpu0 = s.decisions(), s.thread_cpu()
    print(f"  {name}:", end="", flush=True)
    client0 = time.process_time()
    with StatsPoller(s.port) as poller:
        bs.step(s.port, payloads, rate, seconds, log)
    client = time.process_time() - client0
    after, cpu1 = s.decisions(), s.thread_cpu()
    r = log[-1]
    r["client_cpu"] = client / max(r.get("wall_s", seconds), 1e-9)
    r.update(poller.summary())
    seen = max(1, sum(after[k] - before[k] for k in ("admitted", "rejected")))
    r["degraded"] = (after["degraded"] - before["degraded"]) / seen
    r["search_degraded_noop"] = (after["search_degraded"] - before["search_degraded"]) / seen
    pid = s.proc.proc.pid
    used = {t: c - cpu0.get(t, 0.0) for t, c in cpu1.items()}
    r["loop_ms"] = 1e3 * used.get(pid, 0.0) / seen
    r["threads_ms"] = 1e3 * sum(c for t, c in used.items() if t != pid) / seen
    print(
        f"    degraded {r['degraded']:.3f}; CPU per request: loop {r['loop_ms']:.2f} ms, "
        f"other threads {r['threads_ms']:.2f} ms; load generator {r['client_cpu']:.2f} of "
        f"its core; loop lag p50 {r['loop_lag_p50_ms']:.1f} max {r['loop_lag_max_ms']:.1f} ms, "
        f"admission margin max {r['margin_max']:.2f} (refusing max {r['refusing_max']:.3f})",
        flush=True,
    )
    return r


def step_passes(r: dict[str, float], max_degraded: float) -> bool:
    """The planner's criterion on a measured step: p99, errors (``bench_serving.passes``) and
    the degraded share (a degraded answer scored fewer candidates than the workload asks)."""
    return bs.passes(r) and r["degraded"] <= max_degraded


def valid_step(name: str, s: Served, payloads: list[bytes], x: RateSearch, args: Any) -> bool:
    """``measured_step`` at ``x.rate``; a step whose generator send lag p99 exceeds
    ``MAX_SEND_LAG_MS`` (the client, not the server, was starved on the shared machine) is
    kept in ``x.discarded`` and measured again, at most twice."""
    for attempt in range(3):
        r = measured_step(name, s, payloads, x.rate, args.duration, x.curve)
        if r["send_lag_p99_ms"] <= MAX_SEND_LAG_MS or attempt == 2:
            return step_passes(r, args.max_degraded)
        x.discarded.append(x.curve.pop())
    return False


def paired_capacity(
    configs: dict[str, dict[str, Any]],
    workdir: Path,
    w: str,
    payloads: list[bytes],
    start: float,
    args: Any,
    cpus: frozenset[int] = SERVER_CPUS[1],
) -> dict[str, dict[str, Any]]:
    """Max rate at p99 <= 100 ms of each config, both servers up at once (same cores) and
    measured in turns, rate by rate, so that a change in the shared machine's load hits both;
    then ``args.rounds`` rounds of ``confirm``."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(Served(config, workdir / f"{w}-{name}.json", cpus))
            for name, config in configs.items()
        }
        users = held_out_bodies(args.data_dir, args.check_requests)
        answers = answer_quality({n: s.port for n, s in servers.items()}, users)
        print(f"  answers (quality check, one request at a time): {answers}", flush=True)
        for s in servers.values():
            measure("127.0.0.1", s.port, payloads, 0.25 * start, 2.0, seed=999)  # warm-up
        searches = {name: RateSearch(start, args.refine) for name in configs}
        while not all(x.done for x in searches.values()):
            for name, x in searches.items():
                if not x.done:
                    x.update(valid_step(name, servers[name], payloads, x, args))
        capacities = {name: x.good for name, x in searches.items()}
        rounds = confirm(servers, payloads, capacities, args)
        out = {}
        for name, s in servers.items():
            counts = s.decisions()
            degraded, admitted = counts["degraded"], counts["admitted"]
            out[name] = {
                "capacity": searches[name].good,
                "curve": searches[name].curve,
                "discarded_steps": searches[name].discarded,
                "degraded_share_all_rates": degraded / max(admitted, 1),
            }
        out["answers"] = answers
        out["rounds"] = rounds
    return out


def confirm(
    servers: dict[str, Served], payloads: list[bytes], capacities: dict[str, float], args: Any
) -> list[dict[str, Any]]:
    """``args.rounds`` rounds, each measuring every server at every measured capacity and at
    1.1x the default's (the rates in increasing order, the servers alternated: default,
    planned, default, planned, ...), so a gain of ~10% can be told from the step-to-step noise
    of one capacity search: per round and rate, which servers pass, and their p99."""
    rates = sorted(c for c in {*capacities.values(), 1.1 * capacities["default"]} if c > 0)
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        print(f"  round {i + 1} of {args.rounds} at {rates} req/s", flush=True)
        for rate in rates:
            for name, s in servers.items():
                x = RateSearch(rate, 0)
                ok = valid_step(name, s, payloads, x, args)
                r = x.curve[-1]
                rounds.append({"round": i + 1, "rate": rate, "config": name, "passes": ok,
                               "p99_ms": r["p99_ms"], "error_rate": r["error_rate"],
                               "degraded": r["degraded"],
                               "send_lag_p99_ms": r["send_lag_p99_ms"]})  # fmt: skip
    return rounds


# configs the log phase also serves briefly (logged into the same directory) so the planner
# can fit what it would otherwise never see: the ColdNAS scoring in bfloat16; two torch
# intra-op threads (the planner fits a stage's parallel fraction only from logs at more than one)
PROBES: dict[str, dict[str, Any]] = {
    "bfloat16": {"recommend": {"precision": "bfloat16"}},
    "threads2": {"compute": {"intra_op_threads": 2}},
}


def probed(config: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``patch``'s sections updated (one level deep)."""
    out = json.loads(json.dumps(config))
    for section, values in patch.items():
        out.setdefault(section, {}).update(values)
    return out


def held_out_bodies(data_dir: Path, n: int) -> list[tuple[dict[str, Any], set[str]]]:
    """Requests of ``n`` test users (``bs.SUPPORT`` of their ratings, drawn once) and the raw
    ids of their other items rated >= 4 (what a good answer recommends)."""
    from warmstart.coldstart.inference import load_recommender
    from warmstart.data import coldstart_split

    ids = load_recommender(bs.COLDNAS).item_ids
    rng = np.random.default_rng(1)
    out = []
    for user in coldstart_split("movielens-1m", data_dir, 0, "melu").test[:n]:
        rows = np.concatenate([user.support_items, user.query_items])
        rated = np.concatenate([user.support_labels, user.query_labels])
        order = rng.permutation(rows.size)
        support, rest = order[: bs.SUPPORT], order[bs.SUPPORT :]
        body = {
            "interactions": [
                {"item": i, "rating": float(y)}
                for i, y in zip(ids.to_raw(rows[support]), rated[support], strict=True)
            ],
            "k": bs.K,
            "n_candidates": bs.CANDIDATES,
        }
        liked = {str(i) for i in ids.to_raw(rows[rest][rated[rest] >= 4])}
        if rest.size and liked:
            out.append((body, liked))
    return out


def answer_quality(
    ports: dict[str, int], users: list[tuple[dict[str, Any], set[str]]]
) -> dict[str, float]:
    """The plan's quality check: each user's request sent to every server one at a time (no
    load: full candidates); per server precision@k of the held-out liked items; against the
    first server: the share answered with the same items in the same order, the mean top-k
    overlap, and the paired precision@k difference with its 95% interval (normal)."""
    import httpx

    def top(client: httpx.Client, body: dict[str, Any]) -> list[str]:
        for _ in range(3):  # a 503 of a server still warming up: again
            r = client.post("/v1/recommend", json=body)
            if r.status_code != 503:
                break
            time.sleep(0.2)
        if r.status_code != 200:
            raise RuntimeError(f"quality check: {r.status_code} {r.text[:300]}")
        return [str(i["id"]) for i in r.json()["items"]]

    tops: dict[str, list[list[str]]] = {}
    for name, port in ports.items():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            tops[name] = [top(client, b) for b, _ in users]
    first = next(iter(ports))
    precision = {
        name: np.array([len(set(t) & liked) / bs.K for t, (_, liked) in zip(top, users, strict=True)])
        for name, top in tops.items()
    }  # fmt: skip
    out: dict[str, float] = {"users": len(users)}
    for name in ports:
        out[f"{name}_precision_at_k"] = float(precision[name].mean())
        if name == first:
            continue
        pairs = list(zip(tops[first], tops[name], strict=True))
        diff = precision[name] - precision[first]
        half = 1.96 * float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        out[f"{name}_same_order"] = float(np.mean([a == b for a, b in pairs]))
        out[f"{name}_overlap"] = float(np.mean([len(set(a) & set(b)) / bs.K for a, b in pairs]))
        out[f"{name}_precision_diff"] = float(diff.mean())
        out[f"{name}_precision_diff_ci95"] = half
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
    """The simulator against every step the load generator measured: p50, p99, errors,
    degraded share, and CPU per request (event loop; stage calls) against ``/proc``'s."""
    from warmstart.serving.planner.simulate import simulate

    rows = []
    for point in sorted(curve, key=lambda r: r["rate"]):
        r = simulate(model, config, point["rate"], n)
        rows.append(
            {"rate": point["rate"], "measured_p50_ms": point["p50_ms"],
             "predicted_p50_ms": 1e3 * r.p50_s(), "measured_p99_ms": point["p99_ms"],
             "predicted_p99_ms": 1e3 * r.p99_s(), "measured_errors": point["error_rate"],
             "predicted_errors": r.error_rate, "measured_degraded": point.get("degraded"),
             "predicted_degraded": r.degraded_fraction,
             "measured_loop_ms": point.get("loop_ms"), "predicted_loop_ms": 1e3 * r.loop_cpu_s / n,
             "measured_threads_ms": point.get("threads_ms"),
             "predicted_stage_ms": 1e3 * r.stage_cpu_s / n}
        )  # fmt: skip
    return rows


def refit(logdir: Path, sims: dict[str, Any], target: Any, ramp: Any) -> dict[str, float]:
    """Predicted capacity of each config's knobs (``sims``) from the logs the default server
    wrote while its capacity was measured (the machine's load as it was then; its costs at
    another precision are the ramp's: the default server measured only its own)."""
    from warmstart.serving.planner.fit import fit_traffic
    from warmstart.serving.planner.search import robust_capacity
    from warmstart.serving.trafficlog import read_events

    model = fit_traffic(read_events(logdir))
    model = dataclasses.replace(model, by_precision={**ramp.by_precision, **model.by_precision})
    out = {"background": model.background, "overhead_ms": 1e3 * model.overhead_s}
    for name, config in sims.items():
        config = dataclasses.replace(config, background=model.background)
        out[name] = robust_capacity(model, config, target).rate
    return out


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--workload", choices=("recommend", "mixed"), default="recommend")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per arrival rate")
    parser.add_argument("--refine", type=int, default=4, help="bisection steps")
    parser.add_argument("--log-duration", type=float, default=3.0, help="seconds per ramp rate")
    parser.add_argument("--probe-duration", type=float, default=2.0, help="per probe rate")
    parser.add_argument("--requests", type=int, default=3000, help="simulated per rate")
    parser.add_argument("--max-degraded", type=float, default=0.05, help="planner's limit")
    parser.add_argument(
        "--server-cpus",
        type=int,
        choices=sorted(SERVER_CPUS),
        default=1,
        help="cores every server runs on: 1 (core 1; the load generator has core 0 to itself) "
        "or 2 (cores 0 and 1: the servers share core 0 with the load generator)",
    )
    parser.add_argument(
        "--cores",
        choices=("server", "logs"),
        default="server",
        help="plan for the server's cores (--server-cpus), or for the CPU share it got while "
        "overloaded",
    )
    parser.add_argument(
        "--probe",
        nargs="+",
        choices=(*PROBES, "none"),
        default=["bfloat16"],
        help="also log a short ramp of the default with each change (PROBES), before its own",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="after the capacity searches, this many alternated rounds at each measured capacity",
    )
    parser.add_argument("--check-requests", type=int, default=600, help="test users compared")
    parser.add_argument("--name", default=None)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:  # a smoke run
        args.duration, args.refine, args.requests, args.log_duration = 1.0, 0, 500, 1.0
        args.probe_duration, args.check_requests = 1.0, 20
    run(args)


def run(args: argparse.Namespace) -> None:
    from warmstart.serving.planner.plan import (
        capacity_summary,
        make_plan,
        server_config,
        write_plan,
    )
    from warmstart.serving.planner.search import Target, robust_capacity

    os.sched_setaffinity(0, {bs.CLIENT_CPU})
    bs.ensure_artifacts(args.data_dir, 5)
    if args.workload == "mixed":
        bs.ensure_retriever(args.data_dir, None)
    payloads = payloads_for(args.workload, args.data_dir)
    workdir = bs.RUNS / "planner" / (args.name or f"planner_{args.workload}")  # logs kept per run
    workdir.mkdir(parents=True, exist_ok=True)
    w = args.workload
    start = 100.0 if w == "recommend" else 10.0
    result: dict[str, Any] = {"workload": w, "uptime_before": os.getloadavg()}

    cpus = SERVER_CPUS[args.server_cpus]
    cores = args.server_cpus
    result["server_cpus"] = sorted(cpus)
    print(f"[{w}] logs: default config, traffic log on, open-loop ramp; servers on cores "
          f"{sorted(cpus)}, load generator on core {bs.CLIENT_CPU}", flush=True)  # fmt: skip
    logdir = workdir / f"{w}-logs"
    shutil.rmtree(logdir, ignore_errors=True)
    logged = default_config(w, 0, workdir)
    logged["traffic_log"] = {"path": str(logdir)}
    t0 = time.perf_counter()
    result["probes"] = {}
    # probes first, so that the default is the logs' last (planned-from) run
    for name in [p for p in args.probe if p != "none"]:
        print(f"  probe: the default with {PROBES[name]}", flush=True)
        with Served(probed(logged, PROBES[name]), workdir / f"{w}-probe-{name}.json", cpus) as s:
            measure("127.0.0.1", s.port, payloads, 0.25 * start, 1.0, seed=998)
            probe = RateSearch(start, 0)
            while not probe.done:
                r = measured_step(
                    "probe", s, payloads, probe.rate, args.probe_duration, probe.curve
                )
                probe.update(step_passes(r, args.max_degraded))
        result["probes"][name] = {"change": PROBES[name], "curve": probe.curve}
    with Served(logged, workdir / f"{w}-logged.json", cpus) as s:
        measure("127.0.0.1", s.port, payloads, 0.25 * start, 2.0, seed=999)
        ramp = RateSearch(start, 1)
        while not ramp.done:
            r = measured_step("logged", s, payloads, ramp.rate, args.log_duration, ramp.curve)
            ramp.update(step_passes(r, args.max_degraded))
        result["ramp_capacity_log_on"] = ramp.good
    result["ramp"] = ramp.curve
    result["log_bytes"] = sum(f.stat().st_size for f in logdir.iterdir())
    print(f"  ramp {time.perf_counter() - t0:.0f} s, log {result['log_bytes'] / 1e6:.1f} MB")

    print(f"[{w}] plan: --p99-ms {P99_MS:.0f} --cores {cores} ({args.cores})", flush=True)
    t0 = time.perf_counter()
    plan = make_plan(
        logdir,
        P99_MS,
        cores,
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
    # the default server logs its traffic while measured too (0.1% of its CPU, below): a second
    # fit on those logs tells a model error from a change of the machine's load since the ramp
    measure_logs = workdir / f"{w}-measure-logs"
    shutil.rmtree(measure_logs, ignore_errors=True)
    configs = {
        "default": {**default_config(w, 0, workdir), "traffic_log": {"path": str(measure_logs)}},
        "planned": json.loads(planned_path.read_text()),
    }
    target = Target(n=args.requests, max_degraded=args.max_degraded)
    sims = {"default": plan.logged, "planned": plan.planned}
    predicted = {"default": summary["logged"], "planned": summary["planned"]}
    if plan.planned.precision != plan.logged.precision:
        # the plan's other changes alone (answers identical to the default's): what the planner
        # finds without the change of precision
        name = f"planned_{plan.logged.precision}"
        sims[name] = dataclasses.replace(plan.planned, precision=plan.logged.precision)
        predicted[name] = capacity_summary(robust_capacity(plan.model, sims[name], target))
        configs[name] = server_config(sims[name], plan.model.server)
        print(f"  also measured: {name} (the plan in {plan.logged.precision}), predicted "
              f"{predicted[name]['capacity']:.1f} req/s", flush=True)  # fmt: skip
    measured = paired_capacity(configs, workdir, w, payloads, start, args, cpus)
    result["measured"] = measured
    result["predicted"] = predicted
    result["refit"] = refit(measure_logs, sims, target, plan.model)
    result["predicted_vs_measured_p99"] = {
        name: predicted_p99(plan.model, sim, measured[name]["curve"], args.requests)
        for name, sim in sims.items()
    }
    result["predicted_vs_measured_p99"]["logged ramp"] = predicted_p99(
        plan.model, plan.logged, result["ramp"], args.requests
    )
    result["log_cost"] = log_cost()
    result["log_cost"].update(log_share(logdir, result["log_cost"]))
    result["uptime_after"] = os.getloadavg()
    report(result, summary)
    write_result(args.name or f"planner_{w}", result, lambda ax: plot(ax, result), args.results_dir)


def report(result: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = []
    for name, pred in result["predicted"].items():
        meas = result["measured"][name]
        cap = meas["capacity"]
        at = [r for r in meas["curve"] if r["rate"] == cap]
        rows.append(
            {"config": name, "predicted_capacity": round(pred["capacity"], 1),
             "measured_capacity": cap,
             "pred/meas": round(pred["capacity"] / cap, 3) if cap else "-",
             "predicted_p99_ms": round(pred["p99_ms"], 1),
             "measured_p99_ms": round(at[0]["p99_ms"], 1) if at else "-",
             "meas_degraded": round(at[0].get("degraded", 0.0), 3) if at else "-",
             "pred_degraded": round(pred["degraded"], 3),
             "meas_p99_errors_only": max(
                 (r["rate"] for r in meas["curve"] if bs.passes(r)), default=0.0),
             "meas_degraded_all_rates": round(meas["degraded_share_all_rates"], 3)}
        )  # fmt: skip
    print_table(rows, list(rows[0]))
    f = result["refit"]
    refits = ", ".join(f"{n} {f[n]:.1f}" for n in result["predicted"])
    print(
        f"refit on the logs of the default's capacity phase: background {f['background']:.2f} "
        f"(ramp: {result['plan']['model']['background']:.2f}), predicted capacity {refits} req/s"
    )
    d = result["measured"]["default"]["capacity"]
    print(f"changes: {summary['changes']}")
    m = result["plan"]["model"]
    fits = [(k, "", v) for k, v in m["stages"].items()] + [
        (k, f" ({p})", v) for p, st in m["by_precision"].items() for k, v in st.items()
    ]
    for stage, at, v in fits:
        print(f"fit {stage}{at}: a {v['a_ms']:.3f} ms per call, b {v['b_ms']:.3f} ms per item, "
              f"c {v['c_us']:.3f} µs per unit, noise p50 {v['noise_p50']:.2f} p99 "
              f"{v['noise_p99']:.2f} ({v['batches']} calls)")  # fmt: skip
    print(f"fit loop: {m['overhead_ms']:.3f} ms per request + {m['idle_cpu']:.3f} CPU-s per s")
    q = result["measured"]["answers"]
    print(
        f"quality ({q['users']} test users, {bs.SUPPORT} ratings each, one request at a time): "
        f"precision@{bs.K} of their other liked items: default {q['default_precision_at_k']:.4f}"
    )
    for n in list(result["predicted"])[1:]:
        print(
            f"  {n} {q[f'{n}_precision_at_k']:.4f} (difference {q[f'{n}_precision_diff']:+.4f} "
            f"± {q[f'{n}_precision_diff_ci95']:.4f}); same top-{bs.K} in the same order "
            f"{q[f'{n}_same_order']:.1%}, top-{bs.K} overlap {q[f'{n}_overlap']:.1%}"
        )
    for n in list(result["predicted"])[1:]:
        p = result["measured"][n]["capacity"]
        print(f"{n} / default measured capacity: {p / d if d else float('nan'):.3f}")
    report_rounds(result["measured"].get("rounds", []))
    for name, points in result["predicted_vs_measured_p99"].items():
        print(
            f"{name}: rate | p50 ms meas/pred | p99 ms meas/pred | degraded meas/pred | "
            "loop CPU ms/req meas/pred | other threads (stages) CPU ms/req meas/pred"
        )
        for r in points:
            print(
                f"  {r['rate']:7.1f} | {r['measured_p50_ms']:6.1f} {r['predicted_p50_ms']:6.1f} | "
                f"{r['measured_p99_ms']:7.1f} {r['predicted_p99_ms']:7.1f} | "
                f"{r['measured_degraded'] or 0:.3f} {r['predicted_degraded']:.3f} | "
                f"{r['measured_loop_ms'] or 0:5.2f} {r['predicted_loop_ms']:5.2f} | "
                f"{r['measured_threads_ms'] or 0:5.2f} {r['predicted_stage_ms']:5.2f}"
            )
    c = result["log_cost"]
    print(f"log cost: {c['batch_event_us']:.1f} µs per batch event, "
          f"{c['request_event_us']:.1f} µs per request event; {c['log_us_per_request']:.1f} µs "
          f"per request = {c['log_share_of_cpu']:.2%} of the process CPU per request "
          f"({c['process_cpu_us_per_request']:.0f} µs); log {result['log_bytes']} bytes")  # fmt: skip
    print(f"load average before {result['uptime_before']}, after {result['uptime_after']}")


def report_rounds(rounds: list[dict[str, Any]]) -> None:
    """Per rate and config of the alternated rounds: passes, median and per-round p99."""
    if not rounds:
        return
    print("alternated rounds (config at rate: rounds passed, median p99 ms; p99 per round):")
    for rate in sorted({r["rate"] for r in rounds}):
        for name in dict.fromkeys(r["config"] for r in rounds):
            mine = [r for r in rounds if r["rate"] == rate and r["config"] == name]
            each = ", ".join(f"{r['p99_ms']:.1f}" + ("" if r["passes"] else "*") for r in mine)
            print(
                f"  {name} at {rate:g}: {sum(r['passes'] for r in mine)}/{len(mine)} passed, "
                f"median p99 {np.median([r['p99_ms'] for r in mine]):.1f}; {each}"
            )
    print("  (* failed: p99 > 100 ms, errors >= 0.1% or degraded > the limit)")


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
