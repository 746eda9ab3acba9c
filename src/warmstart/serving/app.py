"""HTTP API on FastAPI/uvicorn: recommend, search, health, readiness, metrics, stats, admin.

Routes::

    POST /v1/recommend     new or known user → top-k items (raw ids, scores, display info)
    POST /v1/search        query → top-k passages (optionally reranked)
    GET  /healthz          the process is up
    GET  /readyz           models loaded and stages running (503 while starting or draining)
    GET  /metrics          Prometheus text format
    GET  /v1/stats         the same figures as JSON (per stage, store tiers, admission)
    POST /v1/admin/reload  load new artifact directories (bearer token), no request dropped
    GET  /openapi.json     the schema (FastAPI)

Refusals are explicit and immediate: 503 with ``Retry-After`` when admission predicts a missed
deadline or a queue is full, 413 for an oversized body, 422 naming the field and value for bad
input (an unknown item id, a rating outside the model's range). Nothing here runs torch: the
handlers validate and map ids on the event loop, the stages run the models in their pools.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import math
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from warmstart.serving.config import ComputeConfig, ModelPaths, ServeConfig
from warmstart.serving.engine import (
    ComputePool,
    DeadlineExceeded,
    LoopLag,
    Overloaded,
    PauseHistogram,
)
from warmstart.serving.memory import keep_freed_memory
from warmstart.serving.models import load_models
from warmstart.serving.pipelines import (
    Recommendation,
    RecommendPipeline,
    RecommendRequest,
    SearchPipeline,
    SearchRequest,
)
from warmstart.serving.store import TieredStore, build_store
from warmstart.serving.trafficlog import TrafficLog, attach, usable_cpus

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_K = 100
MAX_USER_ID_CHARS = 128
MAX_INTERACTIONS = 1000
MAX_EXCLUDE = 5000
MAX_CANDIDATES = 5000
MAX_QUERY_CHARS = 2000
MAX_DEADLINE_MS = 10_000.0

RawId = StrictInt | StrictStr  # a raw dataset id: never a bool or a float
MIN_DEADLINE_MS = 1.0


# --------------------------------------------------------------------------- schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interaction(_Strict):
    item: RawId = Field(description="raw item id (e.g. a MovieLens MovieID)")
    rating: float = Field(description="the user's rating/label, within the model's range")


class RecommendBody(_Strict):
    user_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_USER_ID_CHARS,
        description="a known user: with no interactions, its stored state is used",
    )
    interactions: list[Interaction] = Field(default_factory=list, max_length=MAX_INTERACTIONS)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[RawId] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    n_candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES)
    deadline_ms: float | None = Field(None, ge=MIN_DEADLINE_MS, le=MAX_DEADLINE_MS)


class ScoredItem(BaseModel):
    id: RawId
    score: float
    title: str | None = None
    year: int | None = None
    genres: list[str] | None = None


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    state: str = Field(description="adapted | cached | cold")
    n_candidates: int
    degraded: list[str]
    model: str


class SearchBody(_Strict):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    rerank: bool = False
    deadline_ms: float | None = Field(None, ge=MIN_DEADLINE_MS, le=MAX_DEADLINE_MS)


class Passage(BaseModel):
    id: str
    score: float
    title: str
    text: str


class SearchResponse(BaseModel):
    hits: list[Passage]
    reranked: bool
    degraded: list[str]


class ReloadBody(_Strict):
    coldnas: str | None = None
    mf: str | None = None
    retriever: str | None = None
    knn: str | None = None


class ApiError(Exception):
    """An error answered with ``status`` and a JSON ``detail`` (and optional headers)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class FastJSON(JSONResponse):
    """JSON rendered by orjson (several times faster than the standard library here)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # e.g. an echoed input integer beyond 64 bits: the slow path copes
            return json.dumps(content, default=repr).encode()


def unprocessable(field: str, value: Any, message: str) -> ApiError:
    return ApiError(422, [{"loc": ["body", *field.split(".")], "msg": message, "input": value}])


# --------------------------------------------------------------------------- server state


class Server:
    """Everything one running server owns (no module-level state): pools, store, pipelines.

    Args:
        config: the validated configuration.
        admin_token: bearer token for admin routes (``None`` disables them).
        owns_process: the server is its process's only job (``warmstart serve``): it may then
            tune process-wide state beyond its own, the garbage collector (``compute.gc_freeze``,
            :func:`settle_heap`); a server run inside another program (tests, ``serve check``)
            leaves it alone.
    """

    def __init__(
        self, config: ServeConfig, admin_token: str | None = None, owns_process: bool = False
    ) -> None:
        self.config = config
        self.admin_token = admin_token
        self.owns_process = owns_process
        self.recommend: RecommendPipeline | None = None
        self.search: SearchPipeline | None = None
        self.ready = False
        self.draining = False
        self.compute: ComputePool | None = None
        self.io: ComputePool | None = None
        self.store: TieredStore | None = None
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self.traffic: TrafficLog | None = None
        self.loop_lag = LoopLag()  # the event loop's lateness, for admission (started with it)
        self.refusals = RefusalTimes()  # how long the hot route's 503s took inside the server
        # the collector's pauses, timed where the server owns its process (a gc.callbacks hook)
        self.gc_pauses = CollectorPauses() if owns_process else None
        self._item_json: weakref.WeakKeyDictionary[RecommendPipeline, ItemJSON] = (
            weakref.WeakKeyDictionary()
        )

    def recommend_json(self, pipeline: RecommendPipeline, out: Recommendation) -> bytes:
        """The JSON body of a recommend answer (``ItemJSON``, one per pipeline)."""
        renderer = self._item_json.get(pipeline)
        if renderer is None:
            renderer = self._item_json[pipeline] = ItemJSON(pipeline)
        return renderer.render(out)

    async def start(self) -> None:
        c = self.config
        sys.setswitchinterval(1e-3 * c.compute.switch_interval_ms)  # process-wide, like torch's
        if self.owns_process:
            keep_freed_memory(c.compute.keep_freed_mb)  # process-wide too (glibc's malloc)
        self.compute = ComputePool(
            c.compute.workers,
            c.compute.intra_op_threads,
            c.compute.nice,
            loop_yield_s=1e-3 * c.compute.loop_yield_ms if shares_a_core(c.compute) else 0.0,
        )
        self.io = ComputePool(c.compute.io_workers, None, name="ws-io")
        self.store = build_store(
            int(c.store.memory_mb * 2**20),
            c.store.lmdb_path,
            c.store.redis_url,
            **({"retry_s": c.store.redis_retry_s} if c.store.redis_url else {}),
        )
        if c.traffic_log.path is not None:
            self.traffic = TrafficLog(c.traffic_log, c.to_dict())
        self.loop_lag.start()
        if self.gc_pauses is not None:
            self.gc_pauses.install()
        self.recommend, self.search = await self._build(c.models)
        for p in (self.recommend, self.search):
            if p is not None:
                await p.start()
        self._settle_heap()
        self.ready = True

    def _settle_heap(self) -> None:
        if self.owns_process and self.config.compute.gc_freeze:
            settle_heap()

    async def _build(
        self, paths: ModelPaths
    ) -> tuple[RecommendPipeline | None, SearchPipeline | None]:
        """Load artifacts in a thread (seconds of I/O, never on the event loop)."""
        assert self.compute is not None and self.io is not None and self.store is not None
        rec = None
        if paths.coldnas and (paths.mf or paths.knn):
            c = self.config.recommend
            models = await asyncio.to_thread(
                load_models, paths.coldnas, paths.mf, paths.knn, c.recommender, c.precision
            )
            rec = RecommendPipeline(
                models, self.store, self.compute, self.io, self.config.recommend
            )
        search = None
        if paths.retriever:
            from warmstart.retrieval.inference import Retriever

            search_config = self.config.search
            retriever = await asyncio.to_thread(
                Retriever.load,
                Path(paths.retriever),
                threads=self.config.compute.intra_op_threads,
                bf16=search_config.use_bf16,
                rerank_max_length=search_config.rerank_max_length,
            )
            search = SearchPipeline(retriever, self.compute, self.config.search)
        attach(self.traffic, rec, "recommend")
        attach(self.traffic, search, "search")
        for p in (rec, search):
            if p is not None:
                p.admission.loop_lag = self.loop_lag
        return rec, search

    async def reload(self, paths: ModelPaths) -> dict[str, Any]:
        """Swap in pipelines over new artifacts; the old ones finish their requests first."""
        async with self._reload_lock:
            rec, search = await self._build(paths)
            old = [self.recommend, self.search]
            for p in (rec, search):
                if p is not None:
                    await p.start()
            self.recommend, self.search = rec, search
            self.config = replace(self.config, models=paths)
            self.reloads += 1
        await asyncio.gather(*(p.drain() for p in old if p is not None))
        del old
        self._settle_heap()  # the old models' objects become collectable, the new ones frozen
        return {"models": paths.__dict__, "reloads": self.reloads}

    async def stop(self) -> None:
        self.ready = False
        self.draining = True
        self.loop_lag.stop()
        if self.gc_pauses is not None:
            self.gc_pauses.remove()
        for p in (self.recommend, self.search):
            if p is not None:
                await p.drain()
        if self.store is not None:
            self.store.close()
        if self.traffic is not None:
            self.traffic.close()
        for pool in (self.compute, self.io):
            if pool is not None:
                pool.shutdown()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ready": self.ready,
            "models": self.config.models.__dict__,
            "reloads": self.reloads,
            "loop_lag_ms": 1e3 * self.loop_lag.value,
            "loop_lateness": self.loop_lag.histogram.snapshot(),
            "refusal_times": self.refusals.snapshot(),
        }
        if self.compute is not None:
            out["loop_yield"] = {
                "ms": 1e3 * self.compute.loop_yield_s,
                "yields": self.compute.loop_yields,
            }
        if self.gc_pauses is not None:
            out["gc_pauses"] = self.gc_pauses.snapshot()
        if self.recommend is not None:
            out["recommend"] = self.recommend.snapshot()
            out["recommend"]["model"] = self.recommend.models.version
            out["recommend"]["models"] = self.recommend.models.source
            out["recommend"]["example_item_ids"] = list(self.recommend.models.item_ids.ids[:5])
            out["recommend"]["rating_range"] = list(self.recommend.models.ranker.rec.rating_range)
        if self.search is not None:
            out["search"] = self.search.snapshot()
        return out


class RefusalTimes:
    """How long the hot route's refusals (503) took inside the server, from the request's
    arrival (its first bytes read by the event loop) to its answer being handed to the
    transport, a ``PauseHistogram`` per kind: ``front`` (refused before the body is parsed),
    ``admission`` (refused when admitted, after parsing), ``queued`` (admitted, then refused:
    its deadline passed in a queue, or a stage's queue was full). What the client sees adds the
    time before the loop read the request (the loop's lateness, ``LoopLag``) and the way back.
    """

    KINDS = ("front", "admission", "queued")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.by_kind = {kind: PauseHistogram() for kind in self.KINDS}

    def add(self, kind: str, arrived: float) -> None:
        """A refusal of ``kind`` answered now, of a request that arrived at ``arrived``."""
        self.by_kind[kind].add(max(0.0, self.clock() - arrived))

    def snapshot(self) -> dict[str, Any]:
        return {kind: h.snapshot() for kind, h in self.by_kind.items()}


class CollectorPauses:
    """How long the cyclic garbage collector's collections took (each holds the GIL: the
    event loop waits), a ``PauseHistogram`` per generation, from a ``gc.callbacks`` hook."""

    def __init__(self) -> None:
        self.by_generation = [PauseHistogram() for _ in range(3)]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.by_generation[info["generation"]].add(time.perf_counter() - self._start)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def snapshot(self) -> dict[str, Any]:
        return {f"gen{g}": h.snapshot() for g, h in enumerate(self.by_generation)}


def shares_a_core(compute: ComputeConfig) -> bool:
    """Whether the event loop must share a core with the model threads: the process may run
    on fewer CPUs (``usable_cpus``) than those threads plus the loop."""
    return usable_cpus() < compute.workers * compute.intra_op_threads + 1


def settle_heap() -> None:
    """Collect every generation once, then freeze what is alive (``gc.freeze``), so the
    collector's later full collections skip the long-lived objects (models, libraries).

    Frozen objects are unfrozen first, so objects frozen earlier (an old model after a reload)
    that have since become garbage are collected. One call costs one full collection (0.1-0.2
    s on one core for a server's heap): at start-up and after a reload, never per request."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- request mapping


def recommend_request(body: RecommendBody, pipeline: RecommendPipeline) -> RecommendRequest:
    """Raw ids → rows, ratings checked against the model's range; 422 names the field.

    One id-map pass and one vectorised range test for a valid body; only an invalid one is
    walked item by item, to name the first bad field."""
    ids = pipeline.models.item_ids
    low, high = pipeline.models.ranker.rec.rating_range
    ratings64 = np.fromiter((it.rating for it in body.interactions), np.float64)
    try:
        items = ids.to_rows([it.item for it in body.interactions], "interactions")
        exclude = ids.to_rows(body.exclude, "exclude")
        valid = bool(np.all((ratings64 >= low) & (ratings64 <= high)))  # False for NaN
    except ValueError:
        valid = False
    if not valid:
        _name_the_bad_field(body, ids, low, high)
    return RecommendRequest(
        body.user_id,
        items,
        ratings64.astype(np.float32),
        body.k,
        exclude,
        body.n_candidates,
        body.deadline_ms,
    )


_BODY_FIELDS = frozenset(RecommendBody.model_fields)
_INTERACTION_FIELDS = frozenset(Interaction.model_fields)
_ID_TYPES = (int, str)
_NUMBER_TYPES = (int, float)


def fast_recommend_request(raw: bytes, pipeline: RecommendPipeline) -> RecommendRequest | None:
    """``recommend_request`` of a body in its plain form, straight from the bytes, or ``None``.

    The hot route's parser: one ``orjson.loads`` and a walk over the parsed values that checks
    the types and limits of ``RecommendBody`` and maps the ids in the same pass (about half
    the CPU of pydantic's validation plus the id-map pass: 20.6 against 20.0 + 24.8 us in a
    warm probe of a body with 20 interactions). It accepts only
    what ``RecommendBody`` accepts as it is: JSON strings, integers (never ``true``) and
    numbers where the schema has them, no extra field, every limit met, known ids, ratings in
    the model's range. Anything else (a coercion pydantic would make, such as ``"k": 10.0`` or
    a rating given as a string; an invalid body; an unknown id) is ``None``, and the caller
    takes the full path (pydantic, then its answer or its 422), so both paths give the same
    request or the same error. ``tests/serving/test_fast_parse.py`` checks that against
    pydantic on valid and broken bodies.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or not _BODY_FIELDS.issuperset(body):
        return None
    get = body.get
    user_id, k, n_cands, deadline = get("user_id"), get("k", 10), get("n_candidates"), None
    if user_id is not None and (
        type(user_id) is not str or not 1 <= len(user_id) <= MAX_USER_ID_CHARS
    ):
        return None
    if type(k) is not int or not 1 <= k <= MAX_K:
        return None
    if n_cands is not None and (type(n_cands) is not int or not 1 <= n_cands <= MAX_CANDIDATES):
        return None
    if "deadline_ms" in body:
        deadline = body["deadline_ms"]
        if deadline is not None:
            if type(deadline) not in _NUMBER_TYPES:
                return None
            deadline = float(deadline)
            if not MIN_DEADLINE_MS <= deadline <= MAX_DEADLINE_MS:
                return None
    interactions, exclude = get("interactions", []), get("exclude", [])
    if type(interactions) is not list or len(interactions) > MAX_INTERACTIONS:
        return None
    if type(exclude) is not list or len(exclude) > MAX_EXCLUDE:
        return None
    ids = pipeline.models.item_ids
    row_of = ids.row_of
    low, high = pipeline.models.ranker.rec.rating_range
    items, ratings = [], []
    for it in interactions:
        if type(it) is not dict or len(it) != 2 or not _INTERACTION_FIELDS.issuperset(it):
            return None
        item, rating = it["item"], it["rating"]
        if type(item) not in _ID_TYPES or type(rating) not in _NUMBER_TYPES:
            return None
        if not low <= rating <= high:
            return None
        items.append(row_of(item, -1))
        ratings.append(rating)
    excluded = []
    for raw_id in exclude:
        if type(raw_id) not in _ID_TYPES:
            return None
        excluded.append(row_of(raw_id, -1))
    if -1 in items or -1 in excluded:
        return None
    return RecommendRequest(
        user_id,
        np.array(items, dtype=np.int64),
        np.array(ratings, dtype=np.float64).astype(np.float32),
        k,
        np.array(excluded, dtype=np.int64),
        n_cands,
        deadline,
    )


def _name_the_bad_field(body: RecommendBody, ids: Any, low: float, high: float) -> None:
    """Raise the 422 for the first unknown id or out-of-range rating of ``body``."""
    for i, it in enumerate(body.interactions):
        if it.item not in ids:
            raise unprocessable(f"interactions.{i}.item", it.item, f"unknown item id {it.item!r}")
        if not (math.isfinite(it.rating) and low <= it.rating <= high):
            raise unprocessable(
                f"interactions.{i}.rating",
                it.rating,
                f"rating must lie in [{low:g}, {high:g}] for this model",
            )
    for i, raw in enumerate(body.exclude):
        if raw not in ids:
            raise unprocessable(f"exclude.{i}", raw, f"unknown item id {raw!r}")
    raise AssertionError("recommend_request: a body failed validation but no field is bad")


class ItemJSON:
    """Each item's display fields as a JSON fragment, rendered once per item and model:
    ``{"id":..,"title":..,"year":..,"genres":[..],"score":`` (the score and ``}`` follow).

    An answer is then these fragments joined with its scores (one orjson call for all ten):
    ~4x less CPU per response than building and rendering ten dicts (``recommend_payload``,
    whose JSON it equals).
    """

    def __init__(self, pipeline: RecommendPipeline) -> None:
        self.rec = pipeline.models.ranker.rec
        self.version = pipeline.models.version
        self._parts: list[bytes | None] = [None] * self.rec.n_items

    def _part(self, row: int) -> bytes:
        part = self._parts[row]
        if part is None:
            (d,) = self.rec.describe([row])
            part = self._parts[row] = orjson.dumps(_display(d))[:-1] + b',"score":'
        return part

    def render(self, out: Recommendation) -> bytes:
        scores = orjson.dumps(out.scores.tolist())[1:-1].split(b",") if out.scores.size else []
        items = b",".join(
            self._part(r) + s + b"}" for r, s in zip(out.rows.tolist(), scores, strict=True)
        )
        tail = orjson.dumps(
            {
                "state": out.state,
                "n_candidates": out.n_candidates,
                "degraded": list(out.degraded),
                "model": self.version,
            }
        )
        return b'{"items":[' + items + b"]," + tail[1:]


def recommend_payload(pipeline: RecommendPipeline, out: Recommendation) -> dict[str, Any]:
    """The JSON body of a recommend answer (raw ids, scores, display fields)."""
    described = pipeline.models.ranker.rec.describe(out.rows)
    items = [
        {**_display(d), "score": float(s)}
        for d, s in zip(described, out.scores.tolist(), strict=True)
    ]
    return {
        "items": items,
        "state": out.state,
        "n_candidates": out.n_candidates,
        "degraded": list(out.degraded),
        "model": pipeline.models.version,
    }


DEGRADED_HEADER = "x-degraded"


def degraded_headers(degraded: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``X-Degraded: n_candidates=100`` on an answer computed with less work (also in the
    body's ``degraded``), so a client or a load generator sees it without parsing the body."""
    return {DEGRADED_HEADER: ",".join(degraded)} if degraded else {}


def _overloaded(err: Overloaded | DeadlineExceeded) -> ApiError:
    retry = err.retry_after_s if isinstance(err, Overloaded) else 1.0
    return ApiError(503, str(err), {"Retry-After": str(max(1, math.ceil(retry)))})


# --------------------------------------------------------------------------- app


class BodyLimit:
    """ASGI middleware: 413 for a declared or streamed body over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


_PASSED = "warmstart.fast_path.passed"  # scope key: a FastPath already tried this request
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_JSON_HEADERS = [(b"content-type", b"application/json")]
_HEALTHZ = b'{"status":"ok"}'


Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, JSON body, extra headers
HEALTHZ_REPLY: Reply = (200, _HEALTHZ, [])


class HotRoutes:
    """The hot routes answered from the raw body bytes, without FastAPI's per-request
    machinery: by the protocol front (``serving.front``, what ``warmstart serve`` runs) and by
    the ASGI fast path (``FastPath``, for any other ASGI server).

    ``POST /v1/recommend``: first, for a body that asks for no deadline of its own, whether
    admission would refuse *any* request now (``RecommendPipeline.refusal``: in-flight limit,
    or the model stage's predicted wait past the default deadline): then 503 + ``Retry-After``
    without parsing the body, so a flood costs the server little more than reading it. Else
    the body is validated by pydantic-core straight from the bytes (~15 us), its ids mapped,
    and it is **admitted or refused at once** (nothing is queued for a refused request; the
    time since the request reached the server counts against its deadline), and answered
    from per-item JSON fragments. ``None`` means "not a clean success or refusal" (invalid
    body, unknown ids, no pipeline): the caller passes the request on to the FastAPI app,
    so every error, the schema and the docs stay FastAPI's. Under overload an invalid body
    may so get the 503 rather than its 422 (refusing first is what keeps refusals cheap).
    """

    def __init__(self, server: Server, observe: Callable[[str, float], None]) -> None:
        self.server = server
        self.observe = observe

    def recommend(self, body: bytes, arrived: float) -> Reply | Awaitable[Reply] | None:
        """The answer now (a refusal), an awaitable of it (admitted), or ``None`` (pass on).

        ``arrived``: ``time.monotonic()`` when the request reached the server. Either way the
        loop may then yield the core to a running batch (``ComputePool.yield_loop``)."""
        reply = self._recommend(body, arrived)
        if self.server.compute is not None:
            self.server.compute.yield_loop()
        return reply

    def _recommend(self, body: bytes, arrived: float) -> Reply | Awaitable[Reply] | None:
        start = time.perf_counter()
        pipeline = self.server.recommend
        if pipeline is None:
            return None
        refusals = self.server.refusals
        if b'"deadline_ms"' not in body:
            refused = pipeline.refusal(arrived)
            if refused is not None:
                refusals.add("front", arrived)
                return refusal_reply(refused)
        req = fast_recommend_request(body, pipeline)
        if req is None:  # not in its plain form: pydantic's validation, which may coerce
            try:
                req = recommend_request(RecommendBody.model_validate_json(body), pipeline)
            except (ValueError, ApiError):  # ValidationError, unknown ids: FastAPI's 422
                return None
        try:
            run = pipeline.begin(req, arrived)
        except Overloaded as err:
            refusals.add("admission", arrived)
            return refusal_reply(err)
        return self._answer(pipeline, run, start, arrived)

    async def _answer(
        self,
        pipeline: RecommendPipeline,
        run: Awaitable[Recommendation],
        start: float,
        arrived: float,
    ) -> Reply:
        try:
            out = await run
        except (Overloaded, DeadlineExceeded) as err:
            self.server.refusals.add("queued", arrived)
            return refusal_reply(err)
        except ValueError as err:
            return 422, orjson.dumps({"detail": str(err)}), []
        self.observe("recommend", time.perf_counter() - start)
        headers = _raw(degraded_headers(out.degraded))
        return 200, self.server.recommend_json(pipeline, out), headers


def refusal_reply(err: Overloaded | DeadlineExceeded) -> Reply:
    """503 with ``Retry-After`` and the reason."""
    api = _overloaded(err)
    return 503, orjson.dumps({"detail": api.detail}), _raw(api.headers)


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as the raw (lower-case name, value) byte pairs of a ``Reply``."""
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


class FastPath:
    """ASGI middleware that serves the hot routes (``HotRoutes``) without FastAPI's
    per-request machinery; ``GET /healthz`` gets a fixed reply. Anything else, and whatever
    ``HotRoutes`` passes on, goes on to the FastAPI app with the body replayed. (Under
    ``warmstart serve`` the protocol front, ``serving.front``, answers these routes before any
    ASGI work; this middleware serves them on other ASGI servers, e.g. behind Ray Serve.)
    """

    def __init__(self, app: Any, server: Server, observe: Callable[[str, float], None]) -> None:
        self.app = app
        self.server = server
        self.routes = HotRoutes(server, observe)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _PASSED not in scope:
            path, method = scope["path"], scope["method"]
            if path == "/v1/recommend" and method == "POST" and self.server.recommend is not None:
                await self._recommend(scope, receive, send)
                return
            if path == "/healthz" and method == "GET":
                await _send_json(send, *HEALTHZ_REPLY)
                return
        await self.app(scope, receive, send)

    async def _recommend(
        self, scope: MutableMapping[str, Any], receive: Receive, send: Send
    ) -> None:
        arrived = time.monotonic()
        body = await _read_body(receive, MAX_BODY_BYTES)
        reply = None if body is None else self.routes.recommend(body, arrived)
        if reply is None:  # too large, disconnected, invalid, or no pipeline: the app answers
            scope[_PASSED] = True  # an inner FastPath (see create_app) passes it on at once
            await self.app(scope, _replay(body or b""), send)
            return
        if not isinstance(reply, tuple):
            reply = await reply
        await _send_json(send, *reply)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` past ``limit`` bytes or on a disconnect."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A ``receive`` that hands ``body`` over once (for passing a read request on)."""
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _too_large(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], n: int) -> None:
    body = b'{"detail":"request body over %d bytes"}' % n
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(server: Server) -> FastAPI:
    """The FastAPI app over ``server``; its lifespan starts and drains the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(
        title="warmstart serving",
        version="1",
        default_response_class=FastJSON,
        lifespan=lifespan,
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    app.state.server = server
    from warmstart.serving.metrics import MetricsExporter

    exporter = MetricsExporter(server)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> Response:
        return FastJSON({"detail": err.detail}, err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> Response:
        detail = [
            {
                "loc": list(e.get("loc", ())),
                "msg": e.get("msg", ""),
                "input": _jsonable(e.get("input")),
            }
            for e in err.errors()
        ]
        return FastJSON({"detail": detail}, 422)

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses={422: {"description": "bad input"}, 503: {"description": "overloaded"}},
    )
    async def recommend(body: RecommendBody) -> Any:
        start = time.perf_counter()
        pipeline = server.recommend
        if pipeline is None:
            raise ApiError(404, "recommend is not configured on this server (models.coldnas/mf)")
        req = recommend_request(body, pipeline)
        try:
            out = await pipeline.recommend(req)
        except (Overloaded, DeadlineExceeded) as err:
            raise _overloaded(err) from None
        except ValueError as err:
            raise ApiError(422, str(err)) from None
        exporter.observe("recommend", time.perf_counter() - start)
        return Response(
            server.recommend_json(pipeline, out),
            media_type="application/json",
            headers=degraded_headers(out.degraded),
        )

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        responses={422: {"description": "bad input"}, 503: {"description": "overloaded"}},
    )
    async def search(body: SearchBody) -> Any:
        start = time.perf_counter()
        pipeline = server.search
        if pipeline is None:
            raise ApiError(404, "search is not configured on this server (models.retriever)")
        if body.rerank and not pipeline.can_rerank:
            raise unprocessable("rerank", True, "this retriever has no cross-encoder")
        try:
            out = await pipeline.run(
                SearchRequest(body.query, body.k, body.rerank, body.deadline_ms)
            )
        except (Overloaded, DeadlineExceeded) as err:
            raise _overloaded(err) from None
        exporter.observe("search", time.perf_counter() - start)
        hits = [
            {"id": h.doc_id, "score": float(h.score), "title": h.title, "text": h.text}
            for h in out.hits
        ]
        return FastJSON(
            {"hits": hits, "reranked": out.reranked, "degraded": list(out.degraded)},
            headers=degraded_headers(out.degraded),
        )

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "starting or draining"}})
    async def readyz() -> Any:
        if not server.ready or server.draining:
            raise ApiError(503, "not ready", {"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Any:
        payload, content_type = exporter.render()
        return Response(payload, media_type=content_type)

    @app.get("/v1/stats")
    async def stats() -> Any:
        return server.stats()

    @app.post("/v1/admin/reload", responses={401: {}, 403: {}})
    async def reload(body: ReloadBody, authorization: str | None = Header(None)) -> Any:
        _check_admin(server, authorization)
        current = server.config.models
        paths = ModelPaths(
            body.coldnas or current.coldnas,
            body.mf or current.mf,
            body.retriever or current.retriever,
            body.knn or current.knn,
        )
        try:
            return await server.reload(paths)
        except (ValueError, FileNotFoundError) as err:
            raise ApiError(422, str(err)) from None

    app.add_middleware(BodyLimit)
    app.add_middleware(FastPath, server=server, observe=exporter.observe)
    # the same fast path in front of the whole app, for an ASGI server that runs it alone:
    # hot requests then skip FastAPI's own per-request layers (its telemetry check, body limit
    # and error middleware, Starlette's dispatch); whatever it passes on reaches the app, whose
    # FastPath passes it on at once
    app.state.hot_path = FastPath(app, server, exporter.observe)
    # the hot routes for the protocol front (``serving.front``: uvicorn under ``runner``)
    app.state.hot_routes = HotRoutes(server, exporter.observe)
    return app


def _check_admin(server: Server, authorization: str | None) -> None:
    if server.admin_token is None:
        raise ApiError(403, "admin routes are disabled: no admin token configured")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401, "admin routes need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(token.encode(), server.admin_token.encode()):
        raise ApiError(403, "wrong admin token")


def _display(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("id", "title", "year", "genres") if d.get(k) is not None}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return repr(value)
