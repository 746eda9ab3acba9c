"""Where our server's core goes at one fixed arrival rate (a dev probe beside bench_serving).

Starts our server the way ``bench_serving.py``'s capacity search does
(``bench_serving.ours_serving_config``: ML-1M ColdNAS, fused model stage, ``--recommend``
``{"rank": {"max_batch": 48}}``, compute niceness 10, never degrading, 200-ms deadline; the
server pinned to ``SERVER_CPU``, this generator to ``CLIENT_CPU``), warms it up, sends
``--rate`` requests/s for ``--seconds`` and prints, per request, what each server thread spent
(user and system CPU from ``/proc``, voluntary and involuntary context switches), the latency,
and the model stage's batch sizes. ``--healthz`` sends ``GET /healthz`` instead: the front's own
per-request floor. Repeat with ``--repeat`` (alternating ``--recommend`` variants with
``--vs``) so the box's drift falls on both sides.

    python benchmarks/probe_serving_cpu.py --data-dir ../shared/data --rate 1300 --seconds 6
    python benchmarks/probe_serving_cpu.py --data-dir ../shared/data --rate 1300 --healthz
    python benchmarks/probe_serving_cpu.py --data-dir ../shared/data --rate 1300 --repeat 2 \
        --vs '{"rank": {"max_batch": 48, "max_wait_s": 0.004}}'

Linux only (per-thread figures from ``/proc``). Run it on an otherwise idle box.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as bs
from common import add_common_args
from loadgen import measure, request_bytes


def probe_once(args: argparse.Namespace, payloads: list[bytes], recommend: dict[str, Any]) -> None:
    workdir = bs.RUNS / "serving-probe"
    workdir.mkdir(parents=True, exist_ok=True)
    port = bs.free_port()
    config = bs.ours_serving_config(
        port,
        workdir,
        fused=True,
        nice=args.compute_nice,
        precision=args.precision,
        recommend=recommend,
        degrade=False,
        deadline_ms=args.deadline_ms,
    )
    path = workdir / "probe.json"
    path.write_text(json.dumps(config))
    server = bs.ServerProcess(["--serve", "ours", "--config", str(path)], port)
    try:
        bs.warm_up(port, payloads)
        measure("127.0.0.1", port, payloads, args.rate, 2.0, seed=998)
        before = server.thread_counters()
        r = measure("127.0.0.1", port, payloads, args.rate, args.seconds, seed=1)
        after = server.thread_counters()
        n = r["sent"]
        what = "GET /healthz" if args.healthz else json.dumps(recommend)
        print(f"{what} at {args.rate:.0f}/s for {args.seconds:.0f} s: "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, errors {r['error_rate']:.4f}")  # fmt: skip
        total = 0.0
        for tid, new in sorted(after.items()):
            old = before.get(tid)
            if old is None:
                continue
            user, system, vol, invol = (b - a for a, b in zip(old, new, strict=True))
            if not (vol or invol or user or system):
                continue
            cpu = 1e3 * (user + system) / n
            total += cpu
            role = "event loop" if tid == server.proc.pid else f"thread {tid} (model, store)"
            print(f"  {role:<24} {cpu:.3f} ms CPU a request (user {1e3 * user / n:.3f}, "
                  f"system {1e3 * system / n:.3f}); switches a request: voluntary "
                  f"{vol / n:.2f}, involuntary {invol / n:.2f}")  # fmt: skip
        print(f"  server core: {total:.3f} ms a request, {100 * total * args.rate / 1e3:.0f}% busy")
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/stats").read())
        for stage in stats.get("recommend", {}).get("stages", []):
            sizes = {int(k): v for k, v in stage.get("batch_sizes", {}).items()}
            if sizes:
                mean = sum(k * v for k, v in sizes.items()) / sum(sizes.values())
                print(f"  stage {stage['name']}: {sum(sizes.values())} batches, mean size "
                      f"{mean:.1f}, service p50 {stage['service_ms']['p50']:.1f} ms")  # fmt: skip
    finally:
        server.stop()


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--healthz", action="store_true", help="GET /healthz instead")
    parser.add_argument(
        "--recommend",
        default='{"rank": {"max_batch": 48}}',
        help="JSON laid over the recommend config, as bench_serving's --ours-recommend",
    )
    parser.add_argument("--vs", default=None, help="a second --recommend, alternated with it")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compute-nice", type=int, default=10)
    parser.add_argument("--deadline-ms", type=float, default=200.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {bs.CLIENT_CPU})
    bs.ensure_artifacts(args.data_dir, 5)
    if args.healthz:
        payloads = [request_bytes("GET", "/healthz")]
    else:
        bodies = bs.request_bodies(args.data_dir, 600)
        payloads = [request_bytes("POST", "/v1/recommend", json.dumps(b).encode()) for b in bodies]
    variants = [json.loads(args.recommend)] + ([json.loads(args.vs)] if args.vs else [])
    for _ in range(args.repeat):
        for recommend in variants:
            probe_once(args, payloads, recommend)


if __name__ == "__main__":
    main()
