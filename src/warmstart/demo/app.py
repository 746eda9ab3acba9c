"""The demo's additions to the serving app (``warmstart.serving.app``), mounted by one call.

``create_demo_app(artifacts)`` builds the serving helper's FastAPI app over a ``DemoServer`` (the
serving ``Server`` whose recommend pipeline runs the recommender chosen in ``demo.json``) and
adds, without changing any serving route:

    GET  /                  the page (src/warmstart/serving/web/: static HTML, JS, CSS)
    GET  /v1/demo/info      what is served (model, dataset, whether rerank is available)
    GET  /v1/demo/catalog   the movie catalogue for the typeahead (id, title, year, genres, n)
    POST /v1/demo/explain   "why" hints: the rated movie most similar to each recommendation
    GET  /v1/demo/stats     the dashboard's figures: requests/s, p50/p99, shed rate (last
                            second), per-tier hit rates, per-stage queue depth and batch size
    POST /v1/demo/burst     a short bounded loopback load burst (see ``warmstart.demo.burst``)

A small ASGI middleware times ``/v1/recommend`` and ``/v1/search`` (their ``x-latency-ms``
header is the server-side time the page shows) into a one-minute window the stats read.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from warmstart.demo.build import DemoArtifacts
from warmstart.demo.burst import BurstConfig, random_user, run_burst
from warmstart.demo.explain import ItemSimilarity
from warmstart.serving.app import ApiError, Server, create_app, unprocessable
from warmstart.serving.config import ModelPaths, ServeConfig, StoreConfig
from warmstart.serving.pipelines import RecommendPipeline, SearchPipeline

WEB_DIR = Path(__file__).resolve().parent.parent / "serving" / "web"
TIMED = {"/v1/recommend": "recommend", "/v1/search": "search"}
Scope = MutableMapping[str, Any]
NO_RERANK = (
    "this demo serves the zero-shot MiniLM index, which has no cross-encoder; train one with "
    "`warmstart retrieval pipeline` and build the index with it to enable reranking"
)


# --------------------------------------------------------------------------- latency window


class LatencyWindow:
    """The last ``horizon_s`` of answered requests: ``(time, seconds, status)`` per endpoint."""

    def __init__(self, horizon_s: float = 60.0, max_items: int = 200_000) -> None:
        self.horizon_s = horizon_s
        self.events: deque[tuple[float, float, int]] = deque(maxlen=max_items)

    def add(self, seconds: float, status: int) -> None:
        self.events.append((time.monotonic(), seconds, status))

    def summary(self, window_s: float = 1.0) -> dict[str, float]:
        """Requests/s, shed rate (503 share) and p50/p99 ms of answered requests over the last
        ``window_s`` (NaN percentiles when nothing was answered)."""
        now = time.monotonic()
        while self.events and self.events[0][0] < now - self.horizon_s:
            self.events.popleft()
        times = [e[0] for e in self.events]
        recent = list(self.events)[bisect.bisect_left(times, now - window_s) :]
        shed = sum(1 for e in recent if e[2] == 503)
        ok = [e[1] for e in recent if e[2] == 200]
        p50, p99 = (np.percentile(ok, [50, 99]) * 1e3) if ok else (float("nan"),) * 2
        return {
            "rps": len(recent) / window_s,
            "shed_rate": shed / len(recent) if recent else 0.0,
            "p50_ms": float(p50),
            "p99_ms": float(p99),
        }


class Timing:
    """ASGI middleware: times the model endpoints into a ``LatencyWindow`` and adds the
    server-side time as an ``x-latency-ms`` response header."""

    def __init__(self, app: Any, window: LatencyWindow) -> None:
        self.app = app
        self.window = window

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Scope]],
        send: Callable[[Scope], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope.get("path") not in TIMED:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Scope) -> None:
            if message["type"] == "http.response.start":
                seconds = time.perf_counter() - start
                self.window.add(seconds, int(message["status"]))
                headers = [
                    *message.get("headers", []),
                    (b"x-latency-ms", b"%.3f" % (1e3 * seconds)),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


# --------------------------------------------------------------------------- server


class DemoServer(Server):
    """The serving ``Server`` whose recommend pipeline serves ``demo.json``'s choice."""

    def __init__(self, config: ServeConfig, artifacts: DemoArtifacts) -> None:
        super().__init__(config, None)
        self.artifacts = artifacts

    async def _build(
        self, paths: ModelPaths
    ) -> tuple[RecommendPipeline | None, SearchPipeline | None]:
        from warmstart.demo.served import load_served

        _, search = await super()._build(ModelPaths(None, None, paths.retriever))
        assert self.compute is not None and self.io is not None and self.store is not None
        a = self.artifacts
        models = await asyncio.to_thread(load_served, a.root, a.manifest)
        rec = RecommendPipeline(models, self.store, self.compute, self.io, self.config.recommend)
        return rec, search


def demo_config(artifacts: DemoArtifacts, host: str = "127.0.0.1", port: int = 8000) -> ServeConfig:
    """The serving config of the demo: its artifacts, an LMDB tier beside them, the served N."""
    n = int(artifacts.manifest["served"]["n_candidates"])
    base = ServeConfig()
    return replace(
        base,
        host=host,
        port=port,
        models=ModelPaths(
            str(artifacts.coldnas),
            str(artifacts.mf),
            str(artifacts.search) if artifacts.search else None,
        ),
        store=StoreConfig(memory_mb=32, lmdb_path=str(artifacts.root / "lmdb")),
        recommend=replace(
            base.recommend,
            n_candidates=n,
            degraded_candidates=min(n, 100),
        ),
    )


# --------------------------------------------------------------------------- demo routes


class ExplainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rated: list[int | str] = Field(max_length=1000)
    ratings: list[float] = Field(max_length=1000)
    items: list[int | str] = Field(max_length=100)


class BurstBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = Field(1500.0, gt=0, le=20000)
    seconds: float = Field(3.0, gt=0, le=10)
    max_requests: int = Field(4000, ge=1, le=20000)
    deadline_ms: float | None = Field(None, gt=0, le=10_000, description="per-request deadline")


class _Rates:
    """Per-stage batch-size histogram at the previous stats call (for live mean batch sizes)."""

    def __init__(self) -> None:
        self.last: dict[str, dict[str, int]] = {}

    def mean_batch(self, key: str, sizes: dict[Any, int]) -> float:
        prev = self.last.get(key, {})
        now = {str(k): int(v) for k, v in sizes.items()}
        self.last[key] = now
        delta = {int(k): v - prev.get(k, 0) for k, v in now.items()}
        n = sum(delta.values())
        return sum(k * v for k, v in delta.items()) / n if n > 0 else 0.0


def dashboard_stats(server: Server, window: LatencyWindow, rates: _Rates) -> dict[str, Any]:
    """The dashboard's JSON (see the module docstring) from ``server.stats()`` and the window."""
    snap = server.stats()
    out: dict[str, Any] = {**window.summary(1.0), "in_flight": 0, "stages": [], "tiers": []}
    for pipeline in ("recommend", "search"):
        p = snap.get(pipeline)
        if p is None:
            continue
        out["in_flight"] += p["admission"]["in_flight"]
        for s in p["stages"]:
            out["stages"].append(
                {
                    "pipeline": pipeline,
                    "name": s["name"],
                    "queue_depth": s["queue_depth"],
                    "batch_mean": rates.mean_batch(f"{pipeline}/{s['name']}", s["batch_sizes"]),
                    "service_p99_ms": s["service_ms"]["p99"],
                }
            )
        for tier, t in p.get("store", {}).items():
            seen = t["hits"] + t["misses"]
            out["tiers"].append(
                {**t, "name": tier, "hit_rate": t["hits"] / seen if seen else float("nan")}
            )
    out["admission"] = {k: snap[k]["admission"] for k in ("recommend", "search") if k in snap}
    return out


def _info(server: Server, artifacts: DemoArtifacts) -> dict[str, Any]:
    served = {
        k: v for k, v in artifacts.manifest["served"].items() if k not in ("table", "validation")
    }
    search = server.search
    rerank = search is not None and search.can_rerank
    reason = "" if rerank else (NO_RERANK if search is not None else "search is not configured")
    return {
        "served": {**served, "kind": served["name"]},
        "dataset": artifacts.manifest["preset"]["dataset"],
        "preset": artifacts.manifest["preset"]["name"],
        "search": "zero-shot all-MiniLM-L6-v2 over SciFact" if search is not None else None,
        "rerank": {"available": rerank, "reason": reason},
        "git_sha": artifacts.manifest.get("git_sha"),
    }


def attach_demo(app: FastAPI, server: DemoServer) -> None:
    """Add the demo routes, the timing middleware and the static page to ``app``."""
    from warmstart.coldstart.artifacts import load_id_maps
    from warmstart.coldstart.mf_inference import load_mf

    artifacts = server.artifacts
    window, rates = LatencyWindow(), _Rates()
    app.state.demo_window = window
    mf = load_mf(artifacts.mf)
    similar = ItemSimilarity(mf.model.items[:, : mf.dim])
    _, ids = load_id_maps(artifacts.coldnas)  # raw movie ids <-> rows (the MF rows agree)
    movies = json.loads(artifacts.catalog.read_text())["items"]
    movie_ids, weights = [m["id"] for m in movies], np.asarray([m["n"] + 1.0 for m in movies])
    burst_lock = asyncio.Lock()

    @app.get("/v1/demo/info")
    async def info() -> Any:
        return _info(server, artifacts)

    @app.get("/v1/demo/catalog")
    async def catalog() -> Any:
        return FileResponse(artifacts.catalog, media_type="application/json")

    @app.post("/v1/demo/explain")
    async def explain(body: ExplainBody) -> Any:
        if len(body.rated) != len(body.ratings):
            raise unprocessable("ratings", len(body.ratings), "one rating per rated item")
        for field, values in (("rated", body.rated), ("items", body.items)):
            for i, raw in enumerate(values):
                if raw not in ids:
                    raise unprocessable(f"{field}.{i}", raw, f"unknown item id {raw!r}")
        rated, items = ids.to_rows(body.rated), ids.to_rows(body.items)
        whys = similar.why(rated, np.asarray(body.ratings), items)
        out = {
            str(raw): {"id": ids.to_raw([w.rated_row])[0], "similarity": w.similarity}
            for raw, w in zip(body.items, whys, strict=True)
            if w is not None
        }
        return {"why": out}

    @app.get("/v1/demo/stats")
    async def stats() -> Any:
        return dashboard_stats(server, window, rates)

    @app.post("/v1/demo/burst", responses={409: {"description": "a burst is running"}})
    async def burst(body: BurstBody, request: Request) -> Any:
        if burst_lock.locked():
            raise ApiError(409, "a burst is already running; wait for it to finish")
        host, port = request.scope["server"]  # this server's own socket: loopback only
        config = BurstConfig(body.rate, body.seconds, body.max_requests)
        make = random_user(movie_ids, weights, deadline_ms=body.deadline_ms)
        async with burst_lock:
            result = await asyncio.to_thread(asyncio.run, run_burst(host, port, make, config))
        return result.summary()

    app.add_middleware(Timing, window=window)
    # the dashboard's timings must see every request: no protocol front answering the hot
    # routes before the app (``serving.front``; the app's own fast path still serves them)
    app.state.hot_routes = None
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")


def create_demo_app(artifacts: DemoArtifacts, config: ServeConfig | None = None) -> FastAPI:
    """The serving app over the demo's artifacts, with the demo's routes and page."""
    server = DemoServer(config or demo_config(artifacts), artifacts)
    app = create_app(server)
    attach_demo(app, server)
    return app
