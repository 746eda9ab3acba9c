"""Running the app on uvicorn: in the foreground (``warmstart serve``) or in a background thread
(``serve check``, tests, benchmarks), and the end-to-end check of every endpoint.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from warmstart.serving import front
from warmstart.serving.app import Server, create_app
from warmstart.serving.config import ServeConfig


def uvicorn_config(app: Any, host: str, port: int, drain_s: float = 10.0) -> uvicorn.Config:
    """uvicorn settings: uvloop/httptools when installed, no access log (it costs ~10%); for
    our app (``create_app``) the protocol front (``serving.front``) answers the hot routes."""
    routes = getattr(getattr(app, "state", None), "hot_routes", None)
    http: Any = "auto"
    if routes is not None and front.available():
        http = front.front_protocol(routes)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http=http,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(max(1, drain_s)),
        backlog=4096,
    )


def serve_forever(config: ServeConfig, admin_token: str | None) -> None:
    """Run until SIGINT/SIGTERM; shutdown stops accepting, then drains in-flight requests."""
    app = create_app(Server(config, admin_token, owns_process=True))
    uvicorn.Server(uvicorn_config(app, config.host, config.port, config.drain_s)).run()


@contextmanager
def running(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` from a background thread; yields its base URL, stops it on exit.

    ``port=0`` picks a free port.
    """
    server = uvicorn.Server(uvicorn_config(app, host, port))

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits on a failed start-up; see below
            server.run()

    thread = threading.Thread(target=run, name="ws-uvicorn", daemon=True)
    thread.start()
    end = time.monotonic() + timeout_s
    # uvicorn offers no event for "started"; poll its flag (start-up loads the models: seconds)
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server failed to start (see the log above)")
        if time.monotonic() > end:
            server.should_exit = True
            raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.02)
    (sock,) = [s for srv in server.servers for s in srv.sockets][:1]
    bound = sock.getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def check(base_url: str) -> list[tuple[str, bool, str]]:
    """Send real requests to every endpoint; returns ``(name, ok, detail)`` per check."""
    import httpx

    results: list[tuple[str, bool, str]] = []

    def record(name: str, ok: bool, detail: str) -> None:
        results.append((name, ok, detail))

    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for path in ("/healthz", "/readyz", "/openapi.json", "/metrics", "/v1/stats"):
            r = client.get(path)
            record(f"GET {path}", r.status_code == 200, str(r.status_code))
        stats = client.get("/v1/stats").json()
        if "recommend" in stats:
            top = stats["recommend"]["rating_range"][1]
            inter = [{"item": i, "rating": top} for i in stats["recommend"]["example_item_ids"]]
            r = client.post("/v1/recommend", json={"interactions": inter, "k": 5})
            ok = r.status_code == 200 and len(r.json().get("items", [])) == 5
            record("POST /v1/recommend", ok, f"{r.status_code} {r.text[:120]}")
            r = client.post(
                "/v1/recommend", json={"interactions": [{"item": "no-such-id", "rating": 4}]}
            )
            record(
                "POST /v1/recommend (unknown id → 422)", r.status_code == 422, str(r.status_code)
            )
        if "search" in stats:
            r = client.post("/v1/search", json={"query": "what causes cancer", "k": 3})
            ok = r.status_code == 200 and len(r.json().get("hits", [])) == 3
            record("POST /v1/search", ok, f"{r.status_code} {r.text[:120]}")
        r = client.post("/v1/admin/reload", json={})
        record(
            "POST /v1/admin/reload (no token → 401/403)",
            r.status_code in (401, 403),
            str(r.status_code),
        )
    return results
