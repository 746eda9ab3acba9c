"""The two serving pipelines as chains of stages (JIZHI's staged event-driven pipeline).

``recommend`` (the industrial two-stage shape)::

    request ─► lookup (tiered store, I/O pool) ─► adapt (ColdNAS adapt_many + MF ridge fit,
    micro-batched; written back to the store) ─► candidates (MF top-N over the ALS item factors,
    exact index, micro-batched) ─► rank (ColdNAS score_many, micro-batched) ─► exclude rated ─► top-k

A known user with no new interactions skips adaptation (its record comes from the store); new
interactions re-adapt and overwrite the record. ``search``::

    query ─► encode (micro-batched) ─► index search (batched) ─► rerank (optional, micro-batched) ─► top-k

Each pipeline owns its stages (no global state) so several can run side by side, and a model
reload swaps in a new pipeline while the old one finishes its in-flight requests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warmstart.serving.admission import Admission, AdmissionConfig, Ticket
from warmstart.serving.engine import ComputePool, Overloaded, Stage, StageConfig
from warmstart.serving.models import RecommendModels, UserRecord
from warmstart.serving.store import TieredStore

_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0, dtype=np.float32)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest ``scores``, best first (stable for ties)."""
    k = min(k, scores.size)
    if k <= 0:
        return _NO_ROWS
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    return part[np.argsort(-scores[part], kind="stable")]


def top_k_rows(
    cands: list[np.ndarray], scores: list[np.ndarray], ks: list[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each request's ``k`` best candidates and their scores, best first: what
    ``top_k`` picks from each, one numpy pass per group of requests with the same number of
    candidates and the same ``k`` (row-wise ``argpartition`` and stable ``argsort`` give each
    row exactly what the one-row call gives), not five calls per request."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (c, k) in enumerate(zip(cands, ks, strict=True)):
        groups.setdefault((c.size, min(k, c.size)), []).append(i)
    out: list[tuple[np.ndarray, np.ndarray]] = [(_NO_ROWS, _NO_SCORES)] * len(cands)
    for (size, k), members in groups.items():
        if k <= 0:
            continue
        if len(members) == 1:  # one row: ``top_k`` itself (~4x cheaper than the row-wise pass)
            (i,) = members
            row_scores = np.asarray(scores[i])
            best = top_k(row_scores, k)
            out[i] = (cands[i][best], row_scores[best])
            continue
        rows = np.stack([cands[i] for i in members])
        neg = -np.stack([np.asarray(scores[i]) for i in members])
        if k < size:
            part = np.argpartition(neg, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(size), (len(members), size))
        order = np.argsort(np.take_along_axis(neg, part, 1), axis=1, kind="stable")
        best = np.take_along_axis(part, order, 1)
        best_rows, best_scores = (
            np.take_along_axis(rows, best, 1),
            -np.take_along_axis(neg, best, 1),
        )
        for j, i in enumerate(members):
            out[i] = (best_rows[j], best_scores[j])
    return out


def without(
    cands: np.ndarray,
    n: int,
    scratch: np.ndarray,
    *excluded: np.ndarray,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """The best ``n`` of ``cands`` not in any of ``excluded``: the first ``n`` (``cands`` best
    first), or with ``scores`` (``cands`` in any order) the ``n`` highest-scored, unordered.

    ``scratch`` is an all-False boolean row per item, left all-False again: marking the
    excluded rows in it makes the test one gather (a few us, where ``np.union1d`` + ``np.isin``
    sorted both sets on every request).
    """
    for rows in excluded:
        scratch[rows] = True
    keep = ~scratch[cands]
    for rows in excluded:
        scratch[rows] = False
    kept = cands[keep]
    if scores is None or kept.size <= n:
        return kept[:n]
    return kept[np.argpartition(-scores[keep], n - 1)[:n]]


class Staged:
    """A pipeline made of stages: start and stop them together (subclasses list ``stages``)."""

    admission: Admission

    @property
    def stages(self) -> list[Stage[Any, Any]]:
        raise NotImplementedError

    async def start(self) -> None:
        for s in self.stages:
            await s.start()

    async def stop(self) -> None:
        for s in self.stages:
            await s.stop()

    async def drain(self) -> None:
        """Wait for every admitted request to finish, then stop the stages."""
        await self.admission.idle()
        await self.stop()


# --------------------------------------------------------------------------- recommend


def request_work(n: float, request_cost: float, n_candidates: float) -> float:
    """A recommend request's work at the fused model stage when it ranks ``n`` candidates, a
    full one (``n_candidates``) 1.0 (``RecommendConfig.request_cost``; the planner's simulator
    weighs its requests with the same function)."""
    return (request_cost + n) / (request_cost + n_candidates)


@dataclass(frozen=True)
class RecommendConfig:
    """Attributes:
    n_candidates: candidates ranked per request (the default N).
    degraded_candidates: N under load (see admission).
    recommender: which models serve (``models.load_models``): ``knn`` (item-kNN candidates in
        their own score order, the top-k table's measured best), ``coldnas`` (MF top-N ranked
        by ColdNAS), ``auto`` (``knn`` when ``models.knn`` holds an artifact, else ``coldnas``).
    fused: run adapt → candidates → rank as one micro-batched stage (``model``, configured by
        ``rank``; the default): the three share one compute pool anyway, and each stage boundary
        costs two thread hand-offs, which on a contended core cost more than they give (ML-1M,
        one shared core: 120 requests/s at p99 121 ms fused, while the 3-stage chain missed
        100 ms at 12/s). ``False`` runs them as three stages (adapt/candidates/rank settings).
    precision: the ColdNAS ranking's matrix products, ``float32`` (the default) or
        ``bfloat16`` (~2.5x less CPU per candidate on CPUs with AVX-512 BF16, scores within
        ~1e-3 on a 1-5 scale; ``coldstart.inference.ColdStartRecommender``).
    lookup / adapt / candidates / rank: each stage's batching and queueing.
    admission: deadlines and shedding.
    request_cost: what a request costs the fused model stage besides its ranking (adaptation,
        MF fit, candidate search), in ranked candidates: the stage weighs a request ranking
        ``n`` candidates ``(request_cost + n) / (request_cost + n_candidates)`` (a full one 1.0),
        so its wait prediction follows the work queued, not the number of requests, when
        degraded and full requests mix (``engine.Stage``'s ``weight``). Measured on ML-1M
        ColdNAS, one core, batches of 64: ~0.76 ms CPU a request at 500 candidates, ~0.35 ms at
        100: ~0.25 ms fixed, ~1 us a candidate, so ~250.
    """

    n_candidates: int = 500
    degraded_candidates: int = 100
    recommender: str = "auto"
    precision: str = "float32"
    lookup: StageConfig = field(default_factory=lambda: StageConfig(64, 0.0, 2048, 2))
    adapt: StageConfig = field(default_factory=lambda: StageConfig(32, 0.001, 2048, 1))
    candidates: StageConfig = field(default_factory=lambda: StageConfig(64, 0.001, 2048, 1))
    rank: StageConfig = field(default_factory=lambda: StageConfig(32, 0.001, 2048, 1))
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    fused: bool = True
    request_cost: float = 250.0

    def __post_init__(self) -> None:
        from warmstart.coldstart.inference import PRECISIONS
        from warmstart.serving.models import RECOMMENDERS

        if self.precision not in PRECISIONS:
            raise ValueError(f"recommend.precision={self.precision!r}: allowed values {PRECISIONS}")
        if self.recommender not in RECOMMENDERS:
            raise ValueError(
                f"recommend.recommender={self.recommender!r}: allowed values {RECOMMENDERS}"
            )
        if not 0 <= self.request_cost < math.inf:
            raise ValueError(f"recommend.request_cost must be >= 0, got {self.request_cost}")
        if not 1 <= self.degraded_candidates <= self.n_candidates:
            raise ValueError(
                "RecommendConfig: need 1 <= degraded_candidates <= n_candidates, got "
                f"{self.degraded_candidates} and {self.n_candidates}"
            )


@dataclass(frozen=True)
class RecommendRequest:
    """One request in dense rows (the HTTP layer maps raw ids).

    Attributes:
        user_id: key of a known user in the store, or ``None`` for an anonymous new user.
        items / ratings: ``(S,)`` the user's support interactions (may be empty).
        k: results wanted.
        exclude: ``(E,)`` rows never to return (rated items are always excluded).
        n_candidates: override of the configured N.
        deadline_ms: override of the configured deadline.
    """

    user_id: str | None = None
    items: np.ndarray = field(default_factory=lambda: _NO_ROWS)
    ratings: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    k: int = 10
    exclude: np.ndarray = field(default_factory=lambda: _NO_ROWS)
    n_candidates: int | None = None
    deadline_ms: float | None = None


@dataclass(frozen=True)
class Recommendation:
    """Top-k rows with predicted ratings; how the user state was obtained; any degradation."""

    rows: np.ndarray
    scores: np.ndarray
    state: str  # "adapted" | "cached" | "cold" (unknown user without interactions)
    n_candidates: int
    degraded: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Adapt:
    key: bytes | None
    items: np.ndarray
    ratings: np.ndarray


@dataclass(frozen=True)
class _Model:
    """One request through the fused stage: adapt unless ``record``, then candidates, rank,
    and the ``k`` best."""

    adapt: _Adapt
    record: UserRecord | None
    exclude: np.ndarray
    n: int
    k: int = 10


class RecommendPipeline(Staged):
    """The recommend stages over one set of models; see the module docstring.

    Args:
        models: ranking + candidate models and the item id map.
        store: the tiered store of user records.
        compute: thread pool for model stages.
        io: thread pool for store lookups (blocking I/O off the event loop).
    """

    def __init__(
        self,
        models: RecommendModels,
        store: TieredStore,
        compute: ComputePool,
        io: ComputePool,
        config: RecommendConfig | None = None,
    ) -> None:
        self.models = models
        self.store = store
        self.config = config or RecommendConfig()
        c = self.config
        self.lookup: Stage[bytes, UserRecord | None] = Stage(
            "lookup", self._lookup_batch, c.lookup, io
        )
        self.adapt: Stage[_Adapt, UserRecord] = Stage("adapt", self._adapt_batch, c.adapt, compute)
        self.candidates: Stage[tuple[np.ndarray, int], np.ndarray] = Stage(
            "candidates", self._candidates_batch, c.candidates, compute
        )
        self.rank: Stage[tuple[Any, np.ndarray], np.ndarray] = Stage(
            "rank", self._rank_batch, c.rank, compute
        )
        self.model: Stage[_Model, tuple[np.ndarray, np.ndarray, int]] = Stage(
            "model", self._model_batch, c.rank, compute, weight=self._work
        )
        self.admission = Admission(c.admission)

    @property
    def stages(self) -> list[Stage[Any, Any]]:
        if self.config.fused:
            return [self.lookup, self.model]
        return [self.lookup, self.adapt, self.candidates, self.rank]

    def _work(self, req: _Model) -> float:
        """A request's work at the fused model stage, a full one 1.0 (``request_cost``)."""
        return request_work(req.n, self.config.request_cost, self.config.n_candidates)

    # ------------------------------------------------------------------ batch functions

    def _lookup_batch(self, keys: list[bytes]) -> list[UserRecord | None]:
        return [None if v is None else UserRecord.from_bytes(v) for v in self.store.get_many(keys)]

    def _adapt_batch(self, reqs: list[_Adapt]) -> list[UserRecord]:
        supports = [(r.items, r.ratings) for r in reqs]
        states = self.models.ranker.adapt_many(supports)
        rows = self.models.candidates.fit_users(supports)
        records = [
            UserRecord(s, row, r.items) for s, row, r in zip(states, rows, reqs, strict=True)
        ]
        known = [(r.key, rec.to_bytes()) for r, rec in zip(reqs, records, strict=True) if r.key]
        self.store.put_many(known)
        return records

    def _candidates_batch(self, reqs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        users = np.stack([row for row, _ in reqs])
        _, rows = self.models.candidates.candidates(users, max(n for _, n in reqs))
        return [r[:n] for r, (_, n) in zip(rows, reqs, strict=True)]

    def _rank_batch(self, reqs: list[tuple[Any, np.ndarray]]) -> list[np.ndarray]:
        """Scores of each request's candidates, one ``score_many`` call per candidate count.

        ``score_many`` pads a pass to its widest list, so a degraded request (fewer candidates)
        batched with full ones would cost a full one: the batch's requests are grouped by their
        number of candidates (first-seen order within a group) and the results put back in
        the batch's order. An error of any group fails the whole batch (every waiter gets it).
        """
        groups: dict[int, list[int]] = {}
        for i, (_, c) in enumerate(reqs):
            groups.setdefault(len(c), []).append(i)
        out: dict[int, np.ndarray] = {}
        for members in groups.values():
            scores = self.models.ranker.score_many(
                [reqs[i][0] for i in members], [reqs[i][1] for i in members]
            )
            for i, s in zip(members, scores, strict=True):
                out[i] = s
        return [out[i] for i in range(len(reqs))]

    def _model_batch(self, reqs: list[_Model]) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """The three model steps on one micro-batch, with the same functions as the stages,
        then each request's top k (``top_k_rows``): its rows and scores, best first, and its
        number of candidates."""
        new = [r.adapt for r in reqs if r.record is None]
        adapted = iter(self._adapt_batch(new) if new else [])
        records = [r.record if r.record is not None else next(adapted) for r in reqs]
        n_items = self.models.candidates.n_items
        wanted = [  # enough to leave n after the exclusions (duplicates only fetch a few more)
            (rec.mf_row, min(r.n + rec.rated.size + r.exclude.size, n_items))
            for rec, r in zip(records, reqs, strict=True)
        ]
        users = np.stack([row for row, _ in wanted])
        # the candidate sets unordered (ranking re-scores them): no sort in the index
        mf_scores, rows = self.models.candidates.candidates(users, max(n for _, n in wanted), False)
        scratch = np.zeros(n_items, dtype=bool)
        cands = [
            without(c, r.n, scratch, rec.rated, r.exclude, scores=v)
            for c, v, rec, r in zip(rows, mf_scores, records, reqs, strict=True)
        ]
        scores = self._rank_batch([(rec.state, c) for rec, c in zip(records, cands, strict=True)])
        best = top_k_rows(cands, scores, [r.k for r in reqs])
        return [(rows, s, c.size) for (rows, s), c in zip(best, cands, strict=True)]

    # ------------------------------------------------------------------ one request

    def _paths(self, req: RecommendRequest) -> list[Stage[Any, Any]]:
        first: list[Stage[Any, Any]] = (
            [self.lookup] if req.user_id is not None and req.items.size == 0 else []
        )
        if self.config.fused:
            return [*first, self.model]
        return [*first, self.adapt, self.candidates, self.rank]

    def user_key(self, user_id: str) -> bytes:
        return f"user:{self.models.version}:{user_id}".encode()

    def admit(self, req: RecommendRequest, arrived: float | None = None) -> tuple[Ticket, float]:
        """Admission decision and the absolute deadline (``time.monotonic()``).

        ``arrived`` (monotonic seconds) is when the request reached the server: the deadline
        runs from then, and the time already spent counts against the predicted wait.
        """
        now = time.monotonic()
        start = now if arrived is None else min(arrived, now)
        budget = 1e-3 * (req.deadline_ms or self.config.admission.deadline_ms)
        path = self._paths(req)
        ticket = self.admission.admit(path, path, budget - (now - start))
        return ticket, start + budget

    def refusal(self, arrived: float) -> Overloaded | None:
        """``Overloaded`` when admission would refuse any request with the default deadline
        that reached the server at ``arrived`` (before its body is parsed), else ``None``."""
        common: list[Stage[Any, Any]] = (
            [self.model] if self.config.fused else [self.candidates, self.rank]
        )
        budget = 1e-3 * self.config.admission.deadline_ms
        return self.admission.refusal(common, budget - (time.monotonic() - arrived))

    def begin(
        self, req: RecommendRequest, arrived: float | None = None
    ) -> Coroutine[Any, Any, Recommendation]:
        """Admit ``req`` now (raises ``Overloaded`` here, with nothing queued) and return the
        coroutine that runs it; the caller must run it (it releases the admission slot)."""
        ticket, deadline = self.admit(req, arrived)
        self.admission.enter()
        return self._admitted(req, ticket, deadline, time.monotonic())

    async def _admitted(
        self, req: RecommendRequest, ticket: Ticket, deadline: float, admitted: float
    ) -> Recommendation:
        try:
            return await self._recommend(req, ticket, deadline)
        finally:
            self.admission.leave()
            self.admission.observe(ticket, time.monotonic() - admitted)

    async def recommend(
        self, req: RecommendRequest, arrived: float | None = None
    ) -> Recommendation:
        """Run one request through the stages (raises ``Overloaded`` / ``DeadlineExceeded``)."""
        return await self.begin(req, arrived)

    async def _recommend(
        self, req: RecommendRequest, ticket: Ticket, deadline: float
    ) -> Recommendation:
        key = None if req.user_id is None else self.user_key(req.user_id)
        record, state = None, "adapted"
        if key is not None and req.items.size == 0:
            record = await self.lookup.submit(key, deadline)
            state = "cached" if record is not None else "cold"
        elif req.items.size == 0:
            state = "cold"
        n, degraded = req.n_candidates or self.config.n_candidates, []
        if ticket.degrade and n > self.config.degraded_candidates:
            n = self.config.degraded_candidates
            degraded.append(f"n_candidates={n}")
        if self.config.fused:
            todo = _Model(_Adapt(key, req.items, req.ratings), record, req.exclude, n, req.k)
            rows, scores, n_cands = await self.model.submit(todo, deadline)
            return Recommendation(rows, scores, state, n_cands, tuple(degraded))
        if record is None:
            record = await self.adapt.submit(_Adapt(key, req.items, req.ratings), deadline)
        n_items = self.models.candidates.n_items
        n_total = min(n + record.rated.size + req.exclude.size, n_items)
        cands = await self.candidates.submit((record.mf_row, n_total), deadline)
        cands = without(cands, n, np.zeros(n_items, dtype=bool), record.rated, req.exclude)
        scores = await self.rank.submit((record.state, cands), deadline)
        best = top_k(np.asarray(scores), req.k)
        return Recommendation(
            cands[best], np.asarray(scores)[best], state, cands.size, tuple(degraded)
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "stages": [s.snapshot() for s in self.stages],
            "admission": self.admission.snapshot(),
            "store": self.store.snapshot(),
        }


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchConfig:
    """Attributes:
    rerank_n: hits reranked by the cross-encoder when a request asks for rerank (the rerank's
        cost is linear in it).
    bf16: query encoding and rerank in bf16 autocast: ``"auto"`` (the default) turns it on
        when the CPU has native bf16 units (``retrieval.encoding.native_bf16``), ``true`` /
        ``false`` force it. Inference only: scores differ from fp32 in the 2nd-3rd digit (the
        measured nDCG@10 change is in docs/serving.md); on a CPU without native bf16 it is slower.
    rerank_max_length: tokens per (query, passage) pair the cross-encoder reads (``None``: the
        length it was trained with).
    degrade_rerank: under load, answer a rerank request without the rerank (said in the
        response, ``degraded``) rather than refuse it; ``false``: a rerank request is reranked
        or refused (503), never answered unreranked.
    encode / index / rerank: each stage's batching and queueing. The rerank does not wait for
        more requests (``max_wait_s`` 0): the cross-encoder is compute-bound, a batch of n
        requests costs ~n single ones on a CPU core (35 ms per query's top 3 in bf16; batches of
        2 / 4 / 8 save 9 / 7 / 4%), so waiting only adds latency; requests queued while it runs
        still go in one call.
    admission: deadlines and shedding (degrading skips the rerank).
    """

    rerank_n: int = 5  # best SciFact test nDCG@10 of depths 3/5/10 (docs/serving.md)
    bf16: bool | str = "auto"
    rerank_max_length: int | None = None
    degrade_rerank: bool = True
    encode: StageConfig = field(default_factory=lambda: StageConfig(32, 0.002, 2048, 1))
    index: StageConfig = field(default_factory=lambda: StageConfig(64, 0.0, 2048, 1))
    rerank: StageConfig = field(default_factory=lambda: StageConfig(8, 0.0, 512, 1))
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)

    def __post_init__(self) -> None:
        if (
            isinstance(self.rerank_n, bool)
            or not isinstance(self.rerank_n, int)
            or self.rerank_n < 1
        ):
            raise ValueError(f"search.rerank_n must be an int >= 1, got {self.rerank_n!r}")
        if not isinstance(self.bf16, bool) and self.bf16 != "auto":
            raise ValueError(f'search.bf16 must be true, false or "auto", got {self.bf16!r}')
        length = self.rerank_max_length
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int) or length < 8
        ):
            raise ValueError(
                f"search.rerank_max_length must be null or an int >= 8, got {length!r}"
            )

    @property
    def use_bf16(self) -> bool:
        """``bf16`` resolved: ``"auto"`` is whether this CPU has native bf16."""
        if self.bf16 == "auto":
            from warmstart.retrieval.encoding import native_bf16

            return native_bf16()
        return bool(self.bf16)


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int = 10
    rerank: bool = False
    deadline_ms: float | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Any]  # retrieval.inference.Hit
    reranked: bool
    degraded: tuple[str, ...] = ()


class SearchPipeline(Staged):
    """Encode → index → optional rerank, over one loaded ``Retriever``."""

    def __init__(
        self, retriever: Any, compute: ComputePool, config: SearchConfig | None = None
    ) -> None:
        self.retriever = retriever
        self.config = config or SearchConfig()
        c = self.config
        self.encode: Stage[str, np.ndarray] = Stage("encode", self._encode_batch, c.encode, compute)
        self.index: Stage[tuple[np.ndarray, int], list[Any]] = Stage(
            "index", self._search_batch, c.index, compute
        )
        self.rerank: Stage[tuple[str, list[Any]], list[Any]] = Stage(
            "rerank", self._rerank_batch, c.rerank, compute
        )
        self.admission = Admission(c.admission)

    @property
    def can_rerank(self) -> bool:
        return getattr(self.retriever, "cross", None) is not None

    @property
    def stages(self) -> list[Stage[Any, Any]]:
        return [self.encode, self.index, self.rerank]

    def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.retriever.encode_queries(texts))

    def _search_batch(self, reqs: list[tuple[np.ndarray, int]]) -> list[list[Any]]:
        hits = self.retriever.search(np.stack([e for e, _ in reqs]), max(k for _, k in reqs))
        return [h[:k] for h, (_, k) in zip(hits, reqs, strict=True)]

    def _rerank_batch(self, reqs: list[tuple[str, list[Any]]]) -> list[list[Any]]:
        return list(self.retriever.rerank_many([q for q, _ in reqs], [h for _, h in reqs]))

    async def run(self, req: SearchRequest) -> SearchResult:
        if req.rerank and not self.can_rerank:
            raise ValueError("rerank: this retriever has no cross-encoder")
        budget = 1e-3 * (req.deadline_ms or self.config.admission.deadline_ms)
        base: list[Stage[Any, Any]] = [self.encode, self.index]
        full = [*base, self.rerank] if req.rerank else base
        skip_ok = self.config.degrade_rerank
        # a search without rerank has no lesser form: nothing to degrade (nor to count as shed)
        lesser = (base if skip_ok else full) if req.rerank else None
        ticket = self.admission.admit(full, lesser, budget)
        deadline = time.monotonic() + budget
        self.admission.enter()
        try:
            emb = await self.encode.submit(req.query, deadline)
            depth = max(req.k, self.config.rerank_n) if req.rerank else req.k
            hits = await self.index.submit((emb, depth), deadline)
            if req.rerank and ticket.degrade and skip_ok:
                return SearchResult(hits[: req.k], False, ("rerank skipped",))
            if req.rerank:
                hits = await self.rerank.submit((req.query, hits[: self.config.rerank_n]), deadline)
            return SearchResult(hits[: req.k], req.rerank)
        finally:
            self.admission.leave()

    def snapshot(self) -> dict[str, Any]:
        return {
            "stages": [s.snapshot() for s in self.stages],
            "admission": self.admission.snapshot(),
        }
