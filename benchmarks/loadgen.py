"""Open-loop HTTP/1.1 load generator on raw asyncio sockets (loopback only, bounded duration).

Arrivals are a Poisson process at a fixed rate, independent of the responses (open loop): a slow
server cannot slow the generator down and hide its queueing. Each request's latency runs from
its *scheduled* send time to the last byte of the response, so time a request waited for a free
connection counts too. Connections are kept alive and reused; a new one is opened when all are
busy, up to ``max_connections`` (beyond it the request waits, and that wait is measured).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Sample:
    latency_s: float
    status: int  # 0 = transport error or timeout
    retry_after: bool = False


def request_bytes(method: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def roundtrip(self, payload: bytes) -> tuple[int, bool]:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, retry, chunked = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                retry = True
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return status, retry

    def close(self) -> None:
        self.writer.close()


async def run_open_loop(
    host: str,
    port: int,
    payloads: Sequence[bytes],
    rate: float,
    duration_s: float,
    seed: int = 0,
    max_connections: int = 256,
    timeout_s: float = 2.0,
) -> list[Sample]:
    """Send ``rate`` requests/s (Poisson) for ``duration_s``; payloads are used round-robin."""
    if host not in LOOPBACK:
        raise ValueError(f"load generator targets loopback only, got {host!r}")
    rng = np.random.default_rng(seed)
    n = max(1, int(rng.poisson(rate * duration_s)))
    offsets = np.sort(rng.uniform(0.0, duration_s, n))
    idle: list[_Conn] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    samples: list[Sample] = []
    loop = asyncio.get_running_loop()

    async def one(i: int, scheduled: float) -> None:
        nonlocal opened
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    reader, writer = await asyncio.open_connection(host, port)
                    conn, opened = _Conn(reader, writer), opened + 1
                status, retry = await asyncio.wait_for(
                    conn.roundtrip(payloads[i % len(payloads)]), timeout_s
                )
                idle.append(conn)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                if conn is not None:
                    conn.close()
                status, retry = 0, False
            samples.append(Sample(loop.time() - scheduled, status, retry))

    start = loop.time() + 0.05
    tasks = []
    for i, off in enumerate(offsets):
        at = start + off
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    for c in idle:
        c.close()
    return samples


def summarize(samples: Sequence[Sample], rate: float, duration_s: float) -> dict[str, float]:
    """p50/p99 of all and of answered (200) requests, error and rejection rates, goodput."""
    lat = np.array([s.latency_s for s in samples]) * 1e3
    ok = np.array([s.status == 200 for s in samples])
    rejected = np.array([s.status == 503 for s in samples])
    out = {
        "rate": rate,
        "sent": len(samples),
        "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "error_rate": float((~ok).mean()) if len(samples) else 0.0,
        "rejected_503": int(rejected.sum()),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else 0.0,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else 0.0,
        "goodput": float(ok.sum() / duration_s),
    }
    if ok.any():
        out["ok_p99_ms"] = float(np.percentile(lat[ok], 99))
    if rejected.any():
        out["rejected_p99_ms"] = float(np.percentile(lat[rejected], 99))
    return out


def measure(
    host: str, port: int, payloads: Sequence[bytes], rate: float, duration_s: float, seed: int = 0
) -> dict[str, float]:
    t0 = time.perf_counter()
    samples = asyncio.run(run_open_loop(host, port, payloads, rate, duration_s, seed))
    out = summarize(samples, rate, duration_s)
    out["wall_s"] = time.perf_counter() - t0
    return out


async def trivial_server(port: int) -> None:
    """The smallest keep-alive HTTP server (fixed 200 reply): the generator's own ceiling."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()
