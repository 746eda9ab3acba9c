"""A short, bounded load burst the server sends to itself over loopback (the dashboard button).

Open-loop Poisson arrivals of ``POST /v1/recommend`` for random users, at a rate meant to
exceed what the machine can serve, so the admission controller sheds (503) and the dashboard's
shed rate and queue depths move. Bounded three ways: a request count, a duration and a
concurrency cap; the client runs on its own event loop in a worker thread, never on the
server's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Body = Callable[[np.random.Generator], dict[str, Any]]


@dataclass(frozen=True)
class BurstConfig:
    """Attributes:
    rate: mean arrivals per second (Poisson).
    seconds: longest duration of the sending phase.
    max_requests: most requests sent.
    concurrency: connections, so requests in flight (arrivals queue at the client beyond it;
        their latency counts from their arrival, as in an open loop).
    timeout_s: client timeout per request.
    """

    rate: float = 1500.0
    seconds: float = 3.0
    max_requests: int = 4000
    concurrency: int = 64
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 20000:
            raise ValueError(f"BurstConfig.rate must be in (0, 20000], got {self.rate}")
        if not 0 < self.seconds <= 10:
            raise ValueError(f"BurstConfig.seconds must be in (0, 10], got {self.seconds}")
        if not 1 <= self.max_requests <= 20000:
            raise ValueError(
                f"BurstConfig.max_requests must be in [1, 20000], got {self.max_requests}"
            )
        if not 1 <= self.concurrency <= 512:
            raise ValueError(f"BurstConfig.concurrency must be in [1, 512], got {self.concurrency}")


@dataclass
class BurstResult:
    """What the burst saw: counts by outcome and the latency of answered requests."""

    sent: int = 0
    ok: int = 0
    shed: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms")
        return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (status line, headers, ``Content-Length`` body); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def _request(host: str, port: int, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    return (
        f"POST /v1/recommend HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run_burst(
    host: str, port: int, body: Body, config: BurstConfig, seed: int = 0
) -> BurstResult:
    """Send the burst to ``host:port`` and wait for every answer.

    A minimal keep-alive HTTP/1.1 client (one connection per concurrent request) is used
    because a general-purpose client costs more CPU per request than the server does, and
    the burst must load the server, not itself.
    """
    rng = np.random.default_rng(seed)
    result = BurstResult()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (job := await queue.get()) is not None:
                due, request = job
                try:
                    writer.write(request)
                    status = await asyncio.wait_for(_read_response(reader), config.timeout_s)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as err:
                    result.errors += 1
                    result.first_error = result.first_error or f"{type(err).__name__}: {err}"
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                if status == 200:
                    result.ok += 1
                    result.latencies_ms.append(1e3 * (time.perf_counter() - due))
                elif status == 503:
                    result.shed += 1
                else:
                    result.errors += 1
                    result.first_error = result.first_error or f"HTTP {status}"
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(config.concurrency)]
    start = due = time.perf_counter()
    while result.sent < config.max_requests and due - start < config.seconds:
        due += rng.exponential(1.0 / config.rate)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, _request(host, port, body(rng))))  # open loop: never waits
        result.sent += 1
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - start
    if result.latencies_ms:
        result.p50_ms = float(np.percentile(result.latencies_ms, 50))
        result.p99_ms = float(np.percentile(result.latencies_ms, 99))
    return result


def random_user(
    item_ids: list[Any],
    weights: np.ndarray,
    size: int = 10,
    deadline_ms: float | None = None,
    users: int = 200,
    returning: float = 0.5,
) -> Body:
    """Request bodies: new users rating ``size`` items drawn by popularity (1-5 stars), each
    under one of ``users`` ids so the store keeps their state; a ``returning`` share are those
    users coming back without new ratings (a store lookup: the tier hit rates move). The
    server's default deadline applies unless ``deadline_ms`` is given."""
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum()

    def body(rng: np.random.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": f"burst-{rng.zipf(1.1) % users}", "k": 10}
        if rng.random() >= returning:
            rows = rng.choice(len(item_ids), size=min(size, len(item_ids)), replace=False, p=p)
            stars = rng.integers(1, 6, size=rows.size)
            out["interactions"] = [
                {"item": item_ids[r], "rating": float(s)} for r, s in zip(rows, stars, strict=True)
            ]
        if deadline_ms is not None:
            out["deadline_ms"] = deadline_ms
        return out

    return body
