"""Open-loop HTTP/1.1 load generator on raw asyncio sockets (loopback only, bounded duration).

Arrivals are a Poisson process at a fixed rate, independent of the responses (open loop): a slow
server cannot slow the generator down and hide its queueing. Each request's latency runs from
its *scheduled* send time to the last byte of the response, so time a request waited for a free
connection counts too. Connections are kept alive and reused; a new one is opened when all are
busy, up to ``max_connections`` (beyond it the request waits, and that wait is measured).

The cyclic garbage collector is off while the generator runs (``collector_paused``): the
benchmark's process holds ~230,000 tracked objects (torch, numpy, httpx), and a full collection
of them, which a run of a few tens of thousands of requests triggers, stopped the generator for
100-300 ms (measured on the shared box: 299 ms once in a 30-s run at 1600/s), during which it
neither sent nor read, so every latency in that window grew by it, whatever the server did. A
run is bounded, so what it leaves for the collector is bounded too; it is collected after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from warmstart.serving.engine import PAUSE_BUCKETS_MS, LoopLag

LOOPBACK = ("127.0.0.1", "localhost", "::1")
FEED_S = 0.05  # the arrival timers are armed this often, a few periods ahead
TICK_S = 0.005  # the generator's own loop lateness is sampled this often
LATE_MS = 20  # ... and its ticks later than this are counted (a PAUSE_BUCKETS_MS bound)


@dataclass
class Sample:
    latency_s: float
    status: int  # 0 = transport error or timeout
    retry_after: bool = False
    lag_s: float = 0.0  # scheduled send time -> the request written (the generator's own delay)
    degraded: bool = False  # the server said so (``X-Degraded`` header): a lesser answer
    late_s: float = 0.0  # scheduled send time -> the generator's timer fired (its own CPU delay;
    # ``lag_s`` adds the wait for a free connection)


def request_bytes(method: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


RETRY, DEGRADED = 1, 2  # flags of a parsed response


def parse_response(buf: bytearray) -> tuple[int, int, int] | None:
    """``(bytes consumed, status, flags)`` of the first complete response in ``buf``
    (Content-Length or chunked body), or ``None`` while it is incomplete; ``flags`` has
    ``RETRY`` for a ``Retry-After`` header and ``DEGRADED`` for an ``X-Degraded`` one."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    status = int(lines[0].split()[1])
    length, flags, chunked = 0, 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            flags |= RETRY
        elif name == b"x-degraded":
            flags |= DEGRADED
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    pos = end + 4
    if not chunked:
        return (pos + length, status, flags) if len(buf) >= pos + length else None
    while True:  # chunks: size line, data, CRLF; a 0-size chunk (and its CRLF) ends the body
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2 + size + 2
        if len(buf) < pos:
            return None
        if size == 0:
            return pos, status, flags


class _Client(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time (callbacks, no tasks: the
    generator's cost per request stays a few microseconds)."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.job: tuple[float, float, float] | None = None  # (scheduled, sent, late)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gen.connected(self)

    def send(self, index: int, scheduled: float, late: float) -> None:
        assert self.transport is not None
        self.transport.write(self.gen.payloads[index % len(self.gen.payloads)])
        self.job = (scheduled, self.gen.loop.time(), late)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            parsed = parse_response(self.buf)
        except (ValueError, IndexError):
            self.fail()
            return
        if parsed is None or self.job is None:
            return
        used, status, flags = parsed
        del self.buf[:used]
        job, self.job = self.job, None
        self.gen.done(self, job, status, flags)

    def fail(self) -> None:
        job, self.job = self.job, None
        if self.transport is not None:
            self.transport.abort()
        self.gen.lost(self, job)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.job is not None or self in self.gen.idle:
            self.fail()


class _Generator:
    """Open-loop sender: requests go out at their scheduled times on idle connections, new
    connections open while all are busy (up to a bound), and requests beyond that wait for one
    (that wait is part of their latency)."""

    def __init__(
        self, host: str, port: int, payloads: Sequence[bytes], n: int, limit: int, timeout_s: float
    ) -> None:
        self.host, self.port, self.payloads = host, port, payloads
        self.loop = asyncio.get_running_loop()
        self.n, self.limit, self.timeout_s = n, limit, timeout_s
        self.idle: list[_Client] = []
        self.busy: set[_Client] = set()
        self.waiting: deque[tuple[int, float, float]] = deque()  # (index, scheduled, late)
        self.connecting = 0
        self.peak_connections = 0
        self.samples: list[Sample] = []
        self.finished = self.loop.create_future()

    def submit(self, index: int, scheduled: float) -> None:
        late = self.loop.time() - scheduled
        if self.idle:
            self._start(self.idle.pop(), index, scheduled, late)
            return
        self.waiting.append((index, scheduled, late))
        if len(self.busy) + self.connecting < self.limit:
            self.connecting += 1
            task = self.loop.create_task(self._connect())
            task.add_done_callback(lambda _: None)

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Client(self), self.host, self.port)
        except OSError:
            self.connecting -= 1
            if self.waiting:
                _, scheduled, late = self.waiting.popleft()
                self._record((scheduled, self.loop.time(), late), 0, 0)

    def connected(self, client: _Client) -> None:
        self.connecting -= 1
        self.peak_connections = max(self.peak_connections, len(self.busy) + len(self.idle) + 1)
        self._next(client)

    def _start(self, client: _Client, index: int, scheduled: float, late: float) -> None:
        self.busy.add(client)
        client.send(index, scheduled, late)

    def _next(self, client: _Client) -> None:
        self.busy.discard(client)
        if self.waiting:
            self._start(client, *self.waiting.popleft())
        else:
            self.idle.append(client)

    def done(
        self, client: _Client, job: tuple[float, float, float], status: int, flags: int
    ) -> None:
        self._record(job, status, flags)
        self._next(client)

    def lost(self, client: _Client, job: tuple[float, float, float] | None) -> None:
        self.busy.discard(client)
        if client in self.idle:
            self.idle.remove(client)
        if job is not None:
            self._record(job, 0, 0)

    def _record(self, job: tuple[float, float, float], status: int, flags: int) -> None:
        scheduled, sent, late = job
        lat, lag = self.loop.time() - scheduled, sent - scheduled
        self.samples.append(
            Sample(lat, status, bool(flags & RETRY), lag, bool(flags & DEGRADED), late)
        )
        if len(self.samples) >= self.n and not self.finished.done():
            self.finished.set_result(None)

    def sweep(self) -> None:
        """Fail requests older than the timeout (their connection is dropped)."""
        now = self.loop.time()
        for client in list(self.busy):
            if client.job is not None and now - client.job[0] > self.timeout_s:
                client.fail()
        while self.waiting and now - self.waiting[0][1] > self.timeout_s:
            _, scheduled, late = self.waiting.popleft()
            self._record((scheduled, now, late), 0, 0)

    def close(self) -> None:
        for client in [*self.idle, *self.busy]:
            if client.transport is not None:
                client.transport.close()


@contextlib.contextmanager
def collector_paused() -> Any:
    """The cyclic garbage collector off for the block (restored after, as it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def run_open_loop(
    host: str,
    port: int,
    payloads: Sequence[bytes],
    rate: float,
    duration_s: float,
    seed: int = 0,
    max_connections: int = 256,
    timeout_s: float = 2.0,
    stats: dict[str, Any] | None = None,
) -> list[Sample]:
    """Send ``rate`` requests/s (Poisson) for ``duration_s``; payloads are used round-robin.
    ``stats`` (optional) receives ``peak_connections``, the most connections open at once, and
    the generator's own load: ``cpu_share`` (its process's CPU time over the run's wall time),
    ``loop_late_max_ms`` and ``loop_late_over`` (ticks later than ``LATE_MS``)."""
    _loopback_only(host)
    with collector_paused():
        return await _open_loop(
            host, port, payloads, rate, duration_s, seed, max_connections, timeout_s,
            {} if stats is None else stats,
        )  # fmt: skip


async def _open_loop(
    host: str,
    port: int,
    payloads: Sequence[bytes],
    rate: float,
    duration_s: float,
    seed: int,
    max_connections: int,
    timeout_s: float,
    stats: dict[str, Any],
) -> list[Sample]:
    rng = np.random.default_rng(seed)
    n = max(1, int(rng.poisson(rate * duration_s)))
    offsets = np.sort(rng.uniform(0.0, duration_s, n))
    gen = _Generator(host, port, payloads, n, max_connections, timeout_s)
    loop = gen.loop
    start = loop.time() + 0.05
    times = (start + offsets).tolist()

    async def feeder() -> None:
        """Timers, not a task per request, armed a short horizon ahead: arming all of a long
        run's timers at once would take long enough to make its first requests late."""
        i = 0
        while i < n:
            horizon = loop.time() + 4 * FEED_S
            while i < n and times[i] <= horizon:
                loop.call_at(times[i], gen.submit, i, times[i])
                i += 1
            await asyncio.sleep(FEED_S)

    async def sweeper() -> None:
        while not gen.finished.done():
            await asyncio.sleep(0.05)
            gen.sweep()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    ticks = LoopLag(TICK_S)  # the generator's own loop lateness, as the server measures its own
    ticks.start()
    feeding = loop.create_task(feeder())
    sweeping = loop.create_task(sweeper())
    await gen.finished
    feeding.cancel()
    sweeping.cancel()
    ticks.stop()
    gen.close()
    stats["peak_connections"] = gen.peak_connections
    stats["cpu_share"] = (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)
    stats["loop_late_max_ms"] = 1e3 * ticks.histogram.longest
    stats["loop_late_over"] = sum(ticks.histogram.counts[PAUSE_BUCKETS_MS.index(LATE_MS) + 1 :])
    return gen.samples


def _loopback_only(host: str) -> None:
    if host not in LOOPBACK:
        raise ValueError(f"load generator targets loopback only, got {host!r}")


def probe(host: str, port: int, payload: bytes, timeout_s: float = 5.0) -> tuple[int, float]:
    """One request on a fresh connection, alone: ``(status, seconds)``; status 0 when it failed
    or timed out. For asking whether a server is idle, outside any measured run."""
    import socket

    _loopback_only(host)
    t0 = time.perf_counter()
    buf = bytearray()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(payload)
            while (parsed := parse_response(buf)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    return 0, time.perf_counter() - t0
                buf += chunk
    except OSError:
        return 0, time.perf_counter() - t0
    return parsed[1], time.perf_counter() - t0


def settle(
    host: str,
    port: int,
    payload: bytes,
    quiet_s: float,
    max_s: float = 30.0,
    every_s: float = 0.05,
    needed: int = 3,
) -> float:
    """Wait until the server is idle again: ``needed`` probes in a row answered 200 within
    ``quiet_s`` (a server still working off a backlog that the last run left, for clients that
    gave up, answers a probe late; a shedding one answers 503). Returns the seconds waited
    (``max_s`` at most)."""
    t0, run = time.perf_counter(), 0
    while run < needed and time.perf_counter() - t0 < max_s:
        status, seconds = probe(host, port, payload, timeout_s=max(1.0, 2 * quiet_s))
        run = run + 1 if status == 200 and seconds <= quiet_s else 0
        if run < needed:
            time.sleep(every_s)
    return time.perf_counter() - t0


def summarize(samples: Sequence[Sample], rate: float, duration_s: float) -> dict[str, float]:
    """p50/p99 of all and of answered (200) requests, error, rejection and degradation rates,
    goodput (200s, degraded ones included), and the generator's own delays."""
    lat = np.array([s.latency_s for s in samples]) * 1e3
    ok = np.array([s.status == 200 for s in samples])
    rejected = np.array([s.status == 503 for s in samples])
    degraded = np.array([s.degraded and s.status == 200 for s in samples])
    out = {
        "rate": rate,
        "sent": len(samples),
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "error_rate": float((~ok).mean()) if len(samples) else 0.0,
        "degraded": int(degraded.sum()),  # answered, but with less work (e.g. fewer candidates)
        "degraded_rate": float(degraded.mean()) if len(samples) else 0.0,
        "rejected_503": int(rejected.sum()),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else 0.0,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else 0.0,
        "goodput": float(ok.sum() / duration_s),
        # the generator's own delay before a request went out (part of every latency above):
        # large values mean the generator, not the server, was behind
        "send_lag_p99_ms": float(np.percentile([1e3 * s.lag_s for s in samples], 99))
        if len(samples)
        else 0.0,
        # the part of it that was the generator's own timer firing late (its CPU), without the
        # wait for a free connection
        "timer_lag_p99_ms": float(np.percentile([1e3 * s.late_s for s in samples], 99))
        if len(samples)
        else 0.0,
    }
    if ok.any():
        out["ok_p99_ms"] = float(np.percentile(lat[ok], 99))
    if rejected.any():
        out["rejected_p99_ms"] = float(np.percentile(lat[rejected], 99))
        # the same 503s split: the generator's own wait before each went out (its timers, a free
        # or new connection), and the rest (the server and the way back), from the written request
        lag = np.array([s.lag_s for s in samples]) * 1e3
        out["rejected_send_lag_p99_ms"] = float(np.percentile(lag[rejected], 99))
        out["rejected_after_send_p99_ms"] = float(np.percentile((lat - lag)[rejected], 99))
        # ... and of that send lag, the generator's timers firing late (its own CPU), without
        # the wait for a free or new connection
        late = np.array([s.late_s for s in samples]) * 1e3
        out["rejected_timer_lag_p99_ms"] = float(np.percentile(late[rejected], 99))
    return out


def measure(
    host: str, port: int, payloads: Sequence[bytes], rate: float, duration_s: float, **opts: Any
) -> dict[str, float]:
    """:func:`run_open_loop` (``opts``: seed, max_connections, timeout_s), summarised, with
    its wall time, the most connections it held open and its own load (``stats``)."""
    t0 = time.perf_counter()
    stats: dict[str, Any] = {}
    samples = _run(run_open_loop(host, port, payloads, rate, duration_s, **opts, stats=stats))
    out = summarize(samples, rate, duration_s)
    out["wall_s"] = time.perf_counter() - t0
    out.update(stats)
    return out


def _run(main: Any) -> Any:
    """``asyncio.run`` on uvloop when installed (the generator's ceiling roughly doubles)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def trivial_server(port: int, delay_s: float = 0.0) -> None:
    """The smallest keep-alive HTTP server (fixed 200 reply): the generator's own ceiling.

    ``delay_s`` > 0 answers each request that much later (a timer, no CPU), so the generator
    holds as many connections open as against a slow server (rate x latency) and its own
    ceiling can be measured at that connection count."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                if delay_s > 0:
                    loop.call_later(delay_s, writer.write, reply)
                else:
                    writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()
