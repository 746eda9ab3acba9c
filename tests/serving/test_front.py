"""The protocol front (``serving.front``): hot routes answered in the parser callbacks, every
other request on uvicorn's path into the app; refusals before the body is parsed; pipelining,
``Connection: close`` and graceful shutdown with a hot request in flight."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any

import pytest
import uvicorn

from warmstart.serving.admission import Admission, AdmissionConfig
from warmstart.serving.app import Server, create_app
from warmstart.serving.engine import MIN_SAMPLES, LoopLag
from warmstart.serving.runner import running, uvicorn_config

from .test_app import serve_config, support


class Counting:
    """The app, counting the HTTP requests that reach it (the front answers the others)."""

    def __init__(self, app: Any) -> None:
        self.app, self.state, self.paths = app, app.state, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def request(method: str, path: str, body: Any = None, headers: str = "") -> bytes:
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


def read_responses(sock: socket.socket, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``n`` responses (status, lower-cased headers, body) read from ``sock``."""
    buf, out = b"", []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            lines = buf[:end].decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            size = int(headers.get("content-length", "0"))
            if len(buf) >= end + 4 + size:
                out.append((int(lines[0].split()[1]), headers, buf[end + 4 : end + 4 + size]))
                buf = buf[end + 4 + size :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(out)} of {n} responses"
        buf += chunk
    return out


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return False
    return True


@pytest.fixture
def front(tiny_artifacts, tmp_path):
    server = Server(serve_config(tiny_artifacts, tmp_path))
    app = Counting(create_app(server))
    with running(app) as url:
        yield server, app, url


def test_hot_routes_are_answered_by_the_front_and_the_rest_by_the_app(front, tiny_artifacts):
    server, app, url = front
    with contextlib.closing(connect(url)) as sock:
        body = {"interactions": support(tiny_artifacts), "k": 4}
        sock.sendall(request("POST", "/v1/recommend", body))
        ((status, headers, data),) = read_responses(sock, 1)
        assert status == 200 and headers["content-type"] == "application/json"
        answer = json.loads(data)
        assert len(answer["items"]) == 4 and answer["degraded"] == []
        sock.sendall(request("GET", "/healthz"))
        assert read_responses(sock, 1)[0][:1] == (200,)
        assert app.paths == [] and server.recommend.admission.admitted == 1
        # invalid input: the app's 422 naming the field (the body passed on, read once)
        sock.sendall(
            request("POST", "/v1/recommend", {"interactions": [{"item": "x", "rating": 4}]})
        )
        ((status, _, data),) = read_responses(sock, 1)
        assert status == 422 and json.loads(data)["detail"][0]["loc"][-1] == "item"
        sock.sendall(request("GET", "/readyz"))
        assert read_responses(sock, 1)[0][0] == 200
        # a declared body over the limit: the app's 413
        sock.sendall(request("POST", "/v1/recommend", b"x" * 2_000_000))
        assert read_responses(sock, 1)[0][0] == 413
    assert app.paths == ["/v1/recommend", "/readyz", "/v1/recommend"]


def test_a_chunked_body_takes_the_apps_path(front, tiny_artifacts):
    _, app, url = front
    data = json.dumps({"interactions": support(tiny_artifacts), "k": 3}).encode()
    with contextlib.closing(connect(url)) as sock:
        sock.sendall(
            b"POST /v1/recommend HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(data)
            + data
            + b"\r\n0\r\n\r\n"
        )
        ((status, _, body),) = read_responses(sock, 1)
    assert status == 200 and len(json.loads(body)["items"]) == 3
    assert app.paths == ["/v1/recommend"]


def test_overload_is_refused_by_the_front_before_the_body_is_parsed(front, tiny_artifacts):
    server, app, url = front
    model = server.recommend.model
    for _ in range(MIN_SAMPLES):  # as if every batch so far had taken 10 s (deadline 5 s)
        model.metrics.observe_service(10.0)
    with contextlib.closing(connect(url)) as sock:
        # not even valid JSON: refused on the bytes alone
        sock.sendall(request("POST", "/v1/recommend", b"{not json"))
        ((status, headers, data),) = read_responses(sock, 1)
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert "deadline" in json.loads(data)["detail"]
        # its own deadline: parsed, then admission refuses the valid request
        body = {"interactions": support(tiny_artifacts), "deadline_ms": 9000}
        sock.sendall(request("POST", "/v1/recommend", body))
        assert read_responses(sock, 1)[0][0] == 503
    assert app.paths == [] and model.metrics.submitted == 0
    assert server.recommend.admission.rejected == 2
    # each refusal timed inside the server, by where it was refused
    times = server.stats()["refusal_times"]
    assert {kind: sum(t["counts"].values()) for kind, t in times.items()} == {
        "front": 1,
        "admission": 1,
        "queued": 0,
    }


def test_refusal_times_count_each_kind_from_arrival_to_answer():
    """``RefusalTimes`` (fake clock): arrival to answer, by kind; a request refused after it was
    admitted (its deadline passed in a queue) is timed as ``queued`` by the hot route."""
    import asyncio

    from warmstart.serving.app import HotRoutes, RefusalTimes
    from warmstart.serving.engine import DeadlineExceeded

    now = [10.0]
    times = RefusalTimes(clock=lambda: now[0])
    times.add("front", 9.9995)  # 0.5 ms
    times.add("admission", 9.985)  # 15 ms
    snap = times.snapshot()
    assert snap["front"]["counts"]["<=1ms"] == 1 and snap["admission"]["counts"]["<=20ms"] == 1
    assert sum(snap["queued"]["counts"].values()) == 0

    class Stub:
        refusals = times

    async def expired() -> Any:
        now[0] = 10.1  # answered at the deadline, 100 ms after the request arrived
        raise DeadlineExceeded("deadline passed in the queue of 'model'")

    reply = asyncio.run(HotRoutes(Stub(), lambda *_: None)._answer(None, expired(), 0.0, 10.0))
    assert reply[0] == 503
    assert times.snapshot()["queued"]["counts"]["<=100ms"] == 1


def test_pipelined_requests_are_answered_in_order(front, tiny_artifacts):
    *_, url = front
    body = {"interactions": support(tiny_artifacts), "k": 2}
    with contextlib.closing(connect(url)) as sock:
        sock.sendall(
            request("POST", "/v1/recommend", body)
            + request("GET", "/readyz")
            + request("POST", "/v1/recommend", {**body, "k": 3})
            + request("GET", "/healthz")
        )
        answers = read_responses(sock, 4)
    assert [a[0] for a in answers] == [200] * 4
    assert len(json.loads(answers[0][2])["items"]) == 2
    assert json.loads(answers[1][2]) == {"status": "ready"}
    assert len(json.loads(answers[2][2])["items"]) == 3
    assert json.loads(answers[3][2]) == {"status": "ok"}


def test_connection_close_is_honoured(front, tiny_artifacts):
    _, _, url = front
    with contextlib.closing(connect(url)) as sock:
        body = {"interactions": support(tiny_artifacts)}
        sock.sendall(request("POST", "/v1/recommend", body, "Connection: close\r\n"))
        ((status, headers, _),) = read_responses(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(1) == b""  # the server closed it
    with contextlib.closing(connect(url)) as sock:  # HTTP/1.0: one request per connection
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        ((status, headers, _),) = read_responses(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_shutdown_answers_the_hot_request_in_flight(tiny_artifacts, tmp_path):
    """Graceful drain: a stop while a hot request is in the model stage waits for it; the
    answer arrives, with ``Connection: close``, then the server exits."""
    server = Server(serve_config(tiny_artifacts, tmp_path))
    uv = uvicorn.Server(uvicorn_config(create_app(server), "127.0.0.1", 0))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    entered, release = threading.Event(), threading.Event()
    try:
        while not uv.started:  # uvicorn has no start-up event; its start loads the models
            assert thread.is_alive()
            thread.join(0.02)
        stage = server.recommend.model
        inner = stage.fn

        def blocked(values: list[Any]) -> Any:
            entered.set()
            assert release.wait(60)
            return inner(values)

        stage.fn = blocked
        port = uv.servers[0].sockets[0].getsockname()[1]
        with contextlib.closing(connect(f"http://127.0.0.1:{port}")) as sock:
            sock.sendall(
                request("POST", "/v1/recommend", {"interactions": support(tiny_artifacts)})
            )
            assert entered.wait(60)
            uv.should_exit = True
            while listening(port):  # shutdown closes the listener, then asks each connection
                thread.join(0.02)
            release.set()
            ((status, headers, data),) = read_responses(sock, 1)
            assert status == 200 and headers["connection"] == "close"
            assert json.loads(data)["items"]
        thread.join(60)
        assert not thread.is_alive()
    finally:
        release.set()
        uv.should_exit = True


def test_refusal_needs_no_request_and_counts_the_loop_lag():
    """``Admission.refusal`` refuses what ``admit`` would refuse for every path through the
    given stages; the loop's lateness counts as time already spent."""

    class Slow:  # a stage whose predicted wait is fixed
        load = 0

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def predicted_wait_s(self, extra: int = 1) -> float:
            return self.seconds

    admission = Admission(AdmissionConfig(deadline_ms=100, reject_at=0.8))
    stage = Slow(0.070)  # 70 ms of a 80 ms allowance
    assert admission.refusal([stage], 0.1) is None and admission.rejected == 0
    lag = LoopLag(clock=lambda: 0.020)  # the loop ran 20 ms late: 70 > 0.8 x (100 - 20)
    lag.tick(due=0.0)
    admission.loop_lag = lag
    refused = admission.refusal([stage], 0.1)
    assert refused is not None and "deadline" in str(refused) and admission.rejected == 1
    with pytest.raises(type(refused)):
        admission.admit([stage], [stage], 0.1)
    unshed = Admission(AdmissionConfig(shed=False))
    unshed.loop_lag = lag
    assert unshed.refusal([Slow(60.0)], 0.1) is None
    full = Admission(AdmissionConfig(max_in_flight=1))
    full.enter()
    assert "in flight" in str(full.refusal([Slow(0.0)], 0.1))


def test_the_margin_learns_how_far_admitted_requests_overran_their_prediction():
    """Requests admitted during a sustained overload that took longer than predicted raise
    the margin (the 99th percentile of measured / predicted, within [1, MAX_MARGIN]); it
    applies only while admission is overloaded, so a server near capacity is not made to
    refuse more."""
    from warmstart.serving.admission import (
        CALIBRATION_EVERY,
        CALIBRATION_WINDOW,
        MAX_MARGIN,
        Ticket,
    )

    admission = Admission(AdmissionConfig(deadline_ms=100, reject_at=0.8))
    far = Ticket(False, 0.040, 0.1, overloaded=True)  # 40% of its budget: far from the threshold
    calm = Ticket(False, 0.060, 0.1, overloaded=False)  # admitted while hardly any were refused
    for _ in range(4 * CALIBRATION_EVERY):
        admission.observe(far, 0.050)
        admission.observe(calm, 0.090)
    assert admission.margin == 1.0
    loaded = Ticket(False, 0.060, 0.1, overloaded=True)
    for _ in range(2 * CALIBRATION_EVERY):
        admission.observe(loaded, 0.045)  # faster than predicted: the margin stays 1
    assert admission.margin == 1.0
    for _ in range(2 * CALIBRATION_EVERY):
        admission.observe(loaded, 0.075)  # 25% over
    assert admission.margin == pytest.approx(1.25)
    for _ in range(CALIBRATION_WINDOW):
        admission.observe(loaded, 6.0)  # 100x over: capped
    assert admission.margin == MAX_MARGIN

    from .test_admission import Fixed

    slow = Fixed(0.070)  # x 2 = 140 ms > 80 ms, but 70 ms alone is admitted
    assert not admission.overloaded and admission.refusal([slow], 0.1) is None
    ticket = admission.admit([slow], [slow], 0.1)
    assert (ticket.margin, ticket.overloaded, ticket.predicted_s) == (1.0, False, 0.070)
    while not admission.overloaded:  # a sustained share of refusals: now it applies
        admission.refusal([Fixed(1.0)], 0.1)
    assert admission.refusal([slow], 0.1) is not None
    with pytest.raises(type(admission.refusal([slow], 0.1))):
        admission.admit([slow], [slow], 0.1)
    fast = admission.admit([Fixed(0.030)], [Fixed(0.030)], 0.1)
    assert fast.margin == MAX_MARGIN and fast.overloaded
    assert fast.predicted_s == pytest.approx(0.060) and fast.budget_s == 0.1
