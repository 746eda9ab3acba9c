"""The HTTP front: uvicorn's httptools protocol, answering the hot routes itself.

``POST /v1/recommend`` and ``GET /healthz`` are served straight from the parser's callbacks
(``HotRoutes``): no ASGI scope is used, no request-response cycle, no task for a refusal or a
health check, no ``receive``/``send`` round trips. Everything else (other routes, a request that
``HotRoutes`` passes on: an invalid body for its 422, no pipeline; a chunked or oversized body;
``Expect: 100-continue``; a request pipelined behind one in flight) takes uvicorn's normal path
into the FastAPI app, body included, so errors, limits, the schema and the docs stay the app's.

Why: on one core the front's per-request cost decides both the capacity and how fast a flood can
be refused. Through ASGI a trivial request cost ~0.29 ms of the core (3,500/s on ``GET /healthz``)
and a refusal about as much, so at twice the capacity the loop fell behind, requests waited in the
socket before admission saw them, and accepted and refused requests alike came back late. Here a
refusal costs the reading of its bytes, one prediction and one write.

Connection handling stays uvicorn's: keep-alive and its timeout, ``Connection: close``, graceful
shutdown (a connection with a hot request in flight closes after its answer; uvicorn waits for
it), pipelined requests (queued behind the one in flight and started when it completes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from warmstart.serving.app import _PASSED, HEALTHZ_REPLY, MAX_BODY_BYTES, HotRoutes, Reply

log = logging.getLogger(__name__)

RECOMMEND, HEALTHZ = 1, 2
_ERROR: Reply = (500, b'{"detail":"internal error"}', [])
_JSON = b"content-type: application/json\r\ncontent-length: "


class _HotCycle:
    """What uvicorn's protocol reads of a request in flight (``self.cycle``), for one that is
    answered here: whether it completed, whether the client went away, whether to keep the
    connection open after it (``shutdown`` clears that)."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive

    @property
    def message_event(self) -> _HotCycle:  # uvicorn sets it when the connection is lost
        return self

    def set(self) -> None:
        pass


class FrontProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the hot routes answered in the parser callbacks.

    Subclassed per server by :func:`front_protocol` (uvicorn builds one per connection)."""

    routes: HotRoutes
    max_body = MAX_BODY_BYTES

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._hot = 0
        self._arrived = time.monotonic()
        self._chunks: list[bytes] = []

    def on_headers_complete(self) -> None:
        self._hot = self._route()
        if not self._hot:
            super().on_headers_complete()

    def _route(self) -> int:
        """Which hot route this request is, or 0 (uvicorn's path)."""
        if self.expect_100_continue or not (self.cycle is None or self.cycle.response_complete):
            return 0
        url, method = self.url, self.parser.get_method()
        if url == b"/healthz" and method == b"GET":
            return HEALTHZ
        if url != b"/v1/recommend" or method != b"POST" or self.routes.server.recommend is None:
            return 0
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                return 0
        return RECOMMEND if length is not None and length <= self.max_body else 0

    def on_body(self, body: bytes) -> None:
        if self._hot:
            self._chunks.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._hot:
            super().on_message_complete()
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        if self._hot == HEALTHZ:
            self._write(HEALTHZ_REPLY, keep_alive)
            return
        body = b"".join(self._chunks)
        reply = self.routes.recommend(body, self._arrived)
        if reply is None:
            self._pass_on(body)
        elif isinstance(reply, tuple):
            self._write(reply, keep_alive)
        else:
            cycle = self.cycle = _HotCycle(keep_alive)  # type: ignore[assignment]
            task = self.loop.create_task(self._answer(reply, cycle))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

    def _pass_on(self, body: bytes) -> None:
        """Hand the request, read here already, to uvicorn's path (the FastAPI app)."""
        self.scope[_PASSED] = True  # type: ignore[literal-required]
        self._hot = 0
        super().on_headers_complete()
        self.cycle.body += body
        self.cycle.more_body = False
        self.cycle.message_event.set()

    async def _answer(self, reply: Awaitable[Reply], cycle: _HotCycle) -> None:
        try:
            answer = await reply
        except Exception:  # a bug: answered, logged, never a hung connection
            log.exception("recommend failed")
            answer = _ERROR
        cycle.response_complete = True
        if not cycle.disconnected:
            self._write(answer, cycle.keep_alive)

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        status, body, headers = reply
        if self.transport.is_closing():
            return
        parts = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            parts += (name, b": ", value, b"\r\n")
        parts += (_JSON, b"%d" % len(body), b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # uvicorn's: keep-alive timer, next pipelined request


def front_protocol(routes: HotRoutes) -> type[Any]:
    """A ``FrontProtocol`` class answering with ``routes`` (``uvicorn.Config(http=...)``)."""
    return type("FrontProtocol", (FrontProtocol,), {"routes": routes})


def available() -> bool:
    """Whether httptools (the parser the front is built on) is installed."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True
