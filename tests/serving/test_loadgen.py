"""The benchmark's load generator and pass rule: response flags, degraded counts, timer lag."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


loadgen = _load("loadgen")


def test_parse_response_reads_status_length_and_flags():
    ok = bytearray(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Degraded: n_candidates=100\r\n\r\n{}"
    )
    assert loadgen.parse_response(ok) == (len(ok), 200, loadgen.DEGRADED)
    busy = bytearray(b"HTTP/1.1 503 X\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\nHTTP/1.1")
    assert loadgen.parse_response(busy) == (busy.index(b"HTTP/1.1", 5), 503, loadgen.RETRY)
    assert (
        loadgen.parse_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}")) is None
    )
    chunked = bytearray(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    assert loadgen.parse_response(chunked) == (len(chunked), 200, 0)


def test_summary_counts_degraded_answers_and_both_lags():
    samples = [
        loadgen.Sample(0.010, 200, lag_s=0.001, late_s=0.001),
        loadgen.Sample(0.020, 200, degraded=True, lag_s=0.005, late_s=0.001),
        loadgen.Sample(0.001, 503, retry_after=True),
        loadgen.Sample(0.030, 200),
    ]
    out = loadgen.summarize(samples, 4.0, 1.0)
    assert (out["ok"], out["errors"], out["rejected_503"], out["degraded"]) == (3, 1, 1, 1)
    assert out["send_lag_p99_ms"] >= out["timer_lag_p99_ms"] > 0


def test_summary_splits_the_503s_latency_into_the_generators_wait_and_the_rest():
    samples = [
        loadgen.Sample(0.120, 503, lag_s=0.100),  # waited 100 ms for a connection
        loadgen.Sample(0.002, 503, lag_s=0.001, late_s=0.001),
        loadgen.Sample(0.050, 200, lag_s=0.001),
    ]
    out = loadgen.summarize(samples, 3.0, 1.0)
    assert out["rejected_p99_ms"] == pytest.approx(118.82)  # numpy interpolates: 2 + 0.99 x 118
    assert out["rejected_send_lag_p99_ms"] == pytest.approx(99.01)
    assert out["rejected_after_send_p99_ms"] == pytest.approx(19.81)
    assert out["rejected_timer_lag_p99_ms"] == pytest.approx(0.99)  # its timers were on time


def test_the_collector_is_off_while_the_generator_runs_and_restored_after():
    import gc

    assert gc.isenabled()
    with loadgen.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with loadgen.collector_paused():
            pass
        assert not gc.isenabled()  # restored as it was
    finally:
        gc.enable()


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return _load("bench_serving")


def test_a_degraded_answer_fails_the_capacity_step(bench):
    clean = {"p99_ms": 50.0, "errors": 0, "degraded": 0, "sent": 5000}
    assert bench.passes(clean)
    assert bench.passes({**clean, "degraded": 4})  # < 0.1%
    assert not bench.passes({**clean, "degraded": 5})
    assert not bench.passes({**clean, "errors": 3, "degraded": 2})
    assert not bench.passes({**clean, "p99_ms": 101.0})


def test_generator_measures_against_the_trivial_server_with_a_delay():
    async def main():
        server = asyncio.ensure_future(loadgen.trivial_server(port, delay_s=0.02))
        await asyncio.sleep(0.2)
        try:
            stats: dict = {}
            # the generator's own loop stalls once for 60 ms mid-run: its lateness must show it
            asyncio.get_running_loop().call_later(0.2, time.sleep, 0.06)
            samples = await loadgen.run_open_loop(
                "127.0.0.1", port, [loadgen.request_bytes("GET", "/")], 200, 0.5, stats=stats
            )
        finally:
            server.cancel()
        return samples, stats

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    samples, stats = asyncio.run(main())
    assert samples and all(s.status == 200 for s in samples)
    assert min(s.latency_s for s in samples) >= 0.02  # answered after the delay
    assert stats["peak_connections"] >= 2  # requests overlapped, each on its own connection
    assert stats["cpu_share"] > 0
    assert stats["loop_late_max_ms"] >= 50 and stats["loop_late_over"] >= 1  # the 60-ms stall
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(loadgen.run_open_loop("10.0.0.1", port, [b""], 1, 0.1))


def test_capacity_rounds_alternate_the_systems_and_take_per_round_ratios(bench, monkeypatch):
    # figures in call order, per round: compute ceiling, naive, HTTP ceiling, the ceiling right
    # before ours' search, ours, the ceiling right after it
    order, figures = (
        [],
        iter([2000, 3000, 5000, 1400, 1500, 1600, 1000, 4000, 400, 900, 1000, 1100]),
    )

    class Server:
        def __init__(self, args, port):
            self.system = args[0]

        def stop(self):
            pass

    def max_rate(port, payloads, start, duration, refine, log):
        order.append(("healthz" if payloads == ["GET"] else "rate", round(start)))
        return next(figures)

    monkeypatch.setattr(bench, "ServerProcess", Server)
    monkeypatch.setattr(bench, "measure", lambda *a, **k: {})
    monkeypatch.setattr(bench, "request_bytes", lambda method, path: method)
    monkeypatch.setattr(bench, "max_rate", max_rate)
    monkeypatch.setattr(bench, "ideal_compute_rate", lambda *a, **k: {"best": next(figures)})
    first = {"compute_ceiling": 1600.0, "http_ceiling": 4000.0, "naive": 400.0, "ours": 1200.0}
    curves: dict = {}
    out = bench.capacity_rounds(first, 3, ["POST"], [], 1.0, 1, "float32", lambda s, p: [s], curves)
    rounds = out["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    # each round: compute ceiling, naive, then on ours' server its HTTP ceiling and ours;
    # every search starts at 3/4 of the previous round's figure
    assert order == [("rate", 300), ("healthz", 3000), ("rate", 900),
                     ("rate", 2250), ("healthz", 3750), ("rate", 1125)]  # fmt: skip
    assert [(r["naive"], r["ours"], r["compute_ceiling"], r["http_ceiling"]) for r in rounds] == [
        (400.0, 1200.0, 1600.0, 4000.0), (3000, 1500, 2000, 5000), (4000, 1000, 1000, 400)
    ]  # fmt: skip
    assert [r["ours_over_naive"] for r in rounds] == [3.0, 0.5, 0.25]
    assert out["median_ours_over_naive"] == 0.5
    assert out["median_ours_fraction_of_limit"] == 0.75  # 0.75, 0.75, 2.5 (HTTP ceiling 400)
    # ours over the mean of the ceilings around its search (1500: 1.0), the HTTP ceiling still
    # the limit where lower (round 3: 400, 2.5); round 1 came without a bracket
    assert [(r.get("ceiling_before"), r.get("ceiling_after")) for r in rounds] == [
        (None, None), (1400, 1600), (900, 1100)
    ]  # fmt: skip
    assert [r["ours_fraction_of_bracket"] for r in rounds] == [None, 1.0, 2.5]
    assert out["median_ours_fraction_of_bracket"] == 1.75
    assert set(curves) == {"naive_r2", "http_stack_r2", "ours_r2", "naive_r3", "http_stack_r3",
                           "ours_r3"}  # fmt: skip


def test_pause_delta_counts_the_flood_and_pauses_over_a_bound(bench):
    before = {"counts": {"<=20ms": 5, "<=50ms": 1, "<=100ms": 0, ">100ms": 0}, "longest_ms": 30}
    after = {"counts": {"<=20ms": 9, "<=50ms": 4, "<=100ms": 2, ">100ms": 1}, "longest_ms": 140}
    delta = bench.pause_delta(before, after)
    assert delta["counts"] == {"<=20ms": 4, "<=50ms": 3, "<=100ms": 2, ">100ms": 1}
    assert [bench.pauses_over(delta, ms) for ms in (20, 50, 100)] == [6, 3, 1]
    assert bench.pause_delta(None, None) == {}


def test_a_step_against_our_server_says_what_admission_did(bench):
    r = {"admission": {"admitted": 900.0, "rejected": 100.0, "with_margin": 250.0, "margin": 1.5}}
    assert bench.step_admission(r) == "  [refused 100; margin 1.50 applied to 25% of decisions]"
    assert bench.step_admission({}) == ""  # another system: nothing to say
    idle = {"admission": {"admitted": 0.0, "rejected": 0.0, "with_margin": 0.0, "margin": 1.0}}
    assert bench.step_admission(idle) == ""  # e.g. the GET /healthz ceiling
    assert bench.admission_counts(1) is None  # nothing listening: not our server


class _Countdown:
    """A loopback HTTP server (a thread) answering 503 to its first ``busy`` requests, 200 to
    the rest; counts what it answered."""

    def __init__(self, busy: int) -> None:
        import socketserver
        import threading

        owner = self
        self.busy, self.answered = busy, []

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                status = 503 if len(owner.answered) < owner.busy else 200
                owner.answered.append(status)
                self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{{}}".encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_settle_waits_for_consecutive_fast_200s_and_gives_up_at_its_bound():
    payload = loadgen.request_bytes("GET", "/healthz")
    server = _Countdown(busy=4)
    try:
        assert loadgen.probe("127.0.0.1", server.port, payload)[0] == 503
        loadgen.settle("127.0.0.1", server.port, payload, quiet_s=5.0, every_s=0.0, needed=3)
        # 3 more 503s (busy), then exactly the 3 200s in a row it asks for
        assert server.answered == [503] * 4 + [200] * 3
        server.busy = 10**9  # shedding from now on: never idle
        waited = loadgen.settle(
            "127.0.0.1", server.port, payload, quiet_s=5.0, max_s=0.2, every_s=0.0
        )
        assert waited >= 0.2 and server.answered[-1] == 503
    finally:
        server.close()
    with pytest.raises(ValueError, match="loopback"):
        loadgen.probe("10.0.0.1", 80, payload)
    assert loadgen.probe("127.0.0.1", server.port, payload)[0] == 0  # closed: a failure
