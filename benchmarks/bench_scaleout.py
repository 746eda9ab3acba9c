"""Benchmark: scale-out on Ray Serve against the single-process server, same run, same models.

Workload: ``bench_serving``'s (ML-1M ColdNAS, new users with 20 support interactions from the
test users, ``recommend`` with 500 MF candidates, k = 10), each request with a ``user_id`` so
that its adapted state is written to the store. Every system runs the same server config with
the same store: memory tier, then a shared ``redis-server`` (started here; no LMDB), one model
thread with one torch thread per server/replica. Systems:

- ``single``: ``warmstart serve`` (one process), on the server core.
- ``ray-1``: ``warmstart serve --ray --replicas 1`` (proxy, controller and replica), same core.
- ``ray-2``: ``--replicas 2``, same single core (what Ray's extra processes cost when there
  is no extra compute to use).
- ``ray-2-2cores``: ``--replicas 2`` on both cores (the load generator shares core 0 with it;
  its ceiling in that setting is printed too).

For each, the highest Poisson arrival rate with p99 <= 100 ms and < 0.1% errors (a 503 is an
error), searched as in ``bench_serving`` (doubling, then bisection). Reference figures in the
same run: the load generator's own ceiling (trivial server), Ray Serve's proxy on a trivial
route (``GET /healthz`` through the proxy to one replica), and Redis SET + GET of one user
record per request, from one client thread.

Usage (run the figures you quote under ``flock -x /tmp/ws-bench.lock``; needs ML-1M)::

    python benchmarks/bench_scaleout.py --data-dir ../shared/data [--quick] [--only single,ray-1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as bs
from common import RESULTS_DIR, add_common_args, print_table, write_result
from loadgen import request_bytes

HERE = Path(__file__).resolve()
WORKDIR = bs.RUNS / "scaleout"
SYSTEMS = {  # name → (replicas or None for the single process, server cores)
    "single": (None, frozenset({bs.SERVER_CPU})),
    "ray-1": (1, frozenset({bs.SERVER_CPU})),
    "ray-2": (2, frozenset({bs.SERVER_CPU})),
    "ray-2-2cores": (2, frozenset({bs.CLIENT_CPU, bs.SERVER_CPU})),
}


# --------------------------------------------------------------------------- processes


class Redis:
    """A throw-away ``redis-server`` (no persistence) pinned to the server core."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found (apt-get install -y redis-server)")
        self.port = bs.free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, {bs.SERVER_CPU}),
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = self._connect()

    def _connect(self, timeout_s: float = 10.0) -> Any:
        import redis

        client = redis.Redis.from_url(self.url)
        end = time.monotonic() + timeout_s
        while True:  # a child process's start-up has no event to await
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def ops_per_s(self, value_bytes: int, seconds: float = 2.0) -> float:
        """Request-shaped Redis work from one client: SET then GET of one user record."""
        value, n, start = b"x" * value_bytes, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.client.set(f"bench:{n % 1000}", value)
            self.client.get(f"bench:{n % 1000}")
            n += 1
        return n / (time.perf_counter() - start)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


def serve_ray(config: Path, replicas: int) -> int:
    from warmstart.cli import main

    return main(["serve", "--ray", "--replicas", str(replicas), "--replica-cpus", "0.5",
                 "--ray-cpus", "2", "--config", str(config)])  # fmt: skip


def start(system: str, port: int, redis_url: str) -> bs.ServerProcess:
    replicas, cpus = SYSTEMS[system]
    config = bs.ours_config(port, WORKDIR, lmdb_path=None, redis_url=redis_url)
    path = WORKDIR / f"{system}.json"
    path.write_text(json.dumps(config))
    if replicas is None:
        return bs.ServerProcess(["--serve", "ours", "--config", str(path)], port, cpus=cpus)
    args = ["--serve", "ray", "--replicas", str(replicas), "--config", str(path)]
    server = bs.ServerProcess(args, port, script=HERE, cpus=cpus)
    wait_replicas(port, replicas)
    return server


def wait_replicas(port: int, n: int, timeout_s: float = 120.0) -> None:
    """Until ``n`` distinct replicas have answered (the proxy routes before all are up)."""
    import httpx

    seen: set[str] = set()
    end = time.monotonic() + timeout_s
    while len(seen) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"only {len(seen)} of {n} replicas answered in {timeout_s:.0f} s")
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        seen.add(r.headers.get("x-warmstart-replica", ""))


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {bs.CLIENT_CPU})
    bs.ensure_artifacts(args.data_dir, 5)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    duration = 3.0 if args.quick else args.duration
    refine = 1 if args.quick else 2
    bodies = [
        {**b, "user_id": f"u{i}"} for i, b in enumerate(bs.request_bodies(args.data_dir, 600))
    ]
    payloads = [request_bytes("POST", "/v1/recommend", json.dumps(b).encode()) for b in bodies]
    systems = [s for s in args.only.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; choose from {sorted(SYSTEMS)}")
    result: dict[str, Any] = {
        "workload": {
            "support": bs.SUPPORT,
            "candidates": bs.CANDIDATES,
            "k": bs.K,
            "p99_ms": bs.P99_MS,
            "max_error_rate": bs.MAX_ERRORS,
            "seconds_per_rate": duration,
            "user_id": True,
        },
        "uptime_before": uptime(),
    }
    curves: dict[str, list] = {}
    print("ceiling: load generator vs a trivial server", flush=True)
    port = bs.free_port()
    trivial = bs.ServerProcess(["--serve", "trivial", "--port", str(port)], port)
    try:
        curves["generator"] = []
        health = [request_bytes("GET", "/healthz")]
        result["generator_ceiling"] = bs.max_rate(
            port, health, 1000, duration, refine, curves["generator"]
        )
    finally:
        trivial.stop()
    redis = Redis(WORKDIR)
    try:
        result["redis_set_get_per_s"] = redis.ops_per_s(4736)  # a ColdNAS user record's size
        print(f"redis: {result['redis_set_get_per_s']:.0f} SET+GET/s (one client)", flush=True)
        caps: dict[str, float] = {}
        for system in systems:
            print(f"system {system}", flush=True)
            port = bs.free_port()
            server = start(system, port, redis.url)
            try:
                bs.measure("127.0.0.1", port, payloads, 20, 2.0, seed=999)  # warm-up
                curves[system] = []
                caps[system] = bs.max_rate(port, payloads, 50, duration, refine, curves[system])
                if system == "ray-1":  # last: an overloaded proxy takes seconds to recover
                    print("ceiling: Ray Serve proxy, GET /healthz", flush=True)
                    curves["ray_proxy"] = []
                    result["ray_proxy_ceiling"] = bs.max_rate(
                        port, health, 100, duration, refine, curves["ray_proxy"]
                    )
            finally:
                server.stop()
    finally:
        redis.stop()
    result.update(capacity=caps, curves=curves, uptime_after=uptime())
    report(result)
    write_result(args.name, result, lambda ax: plot(ax, curves), results_dir=args.results_dir)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def report(result: dict[str, Any]) -> None:
    rows = [{"system": "load generator (trivial server)", "max_rate": result["generator_ceiling"]}]
    if "ray_proxy_ceiling" in result:
        rows.append({"system": "Ray Serve proxy (GET /healthz)",
                     "max_rate": result["ray_proxy_ceiling"]})  # fmt: skip
    rows.append({"system": "redis SET+GET (one client)", "max_rate": result["redis_set_get_per_s"]})
    single = result["capacity"].get("single")
    for system, cap in result["capacity"].items():
        best = [r for r in result["curves"][system] if r["rate"] == cap]
        rows.append({"system": system, "max_rate": cap,
                     "p99_ms": best[0]["p99_ms"] if best else "-",
                     "vs_single": cap / single if single else "-"})  # fmt: skip
    print_table(rows, ["system", "max_rate", "p99_ms", "vs_single"])
    print(f"uptime before: {result['uptime_before']}\nuptime after:  {result['uptime_after']}")


def plot(ax: Any, curves: dict[str, list]) -> None:
    for system, points in curves.items():
        if system in ("generator", "ray_proxy") or not points:
            continue
        pts = sorted(points, key=lambda r: r["rate"])
        ax.plot([p["rate"] for p in pts], [p["p99_ms"] for p in pts], marker="o", label=system)
    ax.axhline(bs.P99_MS, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("recommend: single process vs Ray Serve replicas (shared Redis)")
    ax.legend()


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--serve", choices=("ray",), help=argparse.SUPPRESS)
    parser.add_argument("--replicas", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=",".join(SYSTEMS), help="systems to measure")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per arrival rate")
    parser.add_argument("--name", default="scaleout", help="result file stem")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.serve == "ray":
        sys.exit(serve_ray(args.config, args.replicas))
    run(args)


if __name__ == "__main__":
    main()
