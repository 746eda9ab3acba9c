"""Recommend pipeline: equals the models called directly; store write-back; shedding."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from warmstart.serving.admission import AdmissionConfig
from warmstart.serving.engine import MIN_SAMPLES, ComputePool, Overloaded, StageConfig, Window
from warmstart.serving.models import UserRecord, load_recommend_models
from warmstart.serving.pipelines import (
    _NO_ROWS,
    RecommendConfig,
    RecommendPipeline,
    RecommendRequest,
    _Adapt,
    _Model,
    top_k,
    top_k_rows,
    without,
)
from warmstart.serving.store import MemoryTier, TieredStore


@pytest.fixture(scope="module")
def models(tiny_artifacts):
    return load_recommend_models(tiny_artifacts.coldnas, tiny_artifacts.mf)


# functional tests: a deadline no loaded CI box misses (the shedding test sets its own)
RELAXED = RecommendConfig(admission=AdmissionConfig(deadline_ms=10_000))


def make_pipeline(models, config=RELAXED):
    compute, io = ComputePool(1, None), ComputePool(1, None)
    store = TieredStore([MemoryTier(1 << 20)])
    return RecommendPipeline(models, store, compute, io, config), (compute, io)


def run_requests(pipeline, requests):
    async def main():
        await pipeline.start()
        try:
            return await asyncio.gather(
                *(pipeline.recommend(r) for r in requests), return_exceptions=True
            )
        finally:
            await pipeline.stop()

    return asyncio.run(asyncio.wait_for(main(), 60))


def expected(models, items, ratings, k, n):
    """The same steps, one request, straight on the models."""
    rec = models.ranker.rec
    state = rec.adapt(items, ratings)
    (row,) = models.candidates.fit_users([(items, ratings)])
    _, cands = models.candidates.candidates(row[None], n + items.size)
    cands = cands[0][~np.isin(cands[0], items)][:n]
    scores = rec.score(state, cands)
    best = top_k(scores, k)
    return cands[best], scores[best]


@pytest.mark.parametrize("fused", [False, True])
def test_concurrent_requests_equal_the_unbatched_computation(models, tiny_artifacts, fused):
    tasks = tiny_artifacts.split.test[:12]
    reqs = [
        RecommendRequest(items=t.support_items, ratings=t.support_labels, k=5, n_candidates=20)
        for t in tasks
    ]
    pipeline, _ = make_pipeline(models, replace(RELAXED, fused=fused))
    out = run_requests(pipeline, reqs)
    for t, got in zip(tasks, out, strict=True):
        rows, scores = expected(models, t.support_items, t.support_labels, 5, 20)
        np.testing.assert_array_equal(got.rows, rows)
        np.testing.assert_allclose(got.scores, scores, rtol=1e-5, atol=1e-6)
        assert got.state == "adapted" and not set(got.rows) & set(t.support_items)
    sizes = pipeline.snapshot()["stages"][-1]["batch_sizes"]
    assert sum(s * n for s, n in sizes.items()) == 12


@pytest.mark.parametrize("fused", [False, True])
def test_known_user_is_written_back_then_served_from_the_store(models, tiny_artifacts, fused):
    t = tiny_artifacts.split.test[0]
    pipeline, _ = make_pipeline(models, replace(RELAXED, fused=fused))
    first = RecommendRequest("u1", t.support_items, t.support_labels, k=5, exclude=np.array([0]))
    (a,) = run_requests(pipeline, [first])
    (b,) = run_requests(pipeline, [RecommendRequest("u1", k=5, exclude=np.array([0]))])
    assert (a.state, b.state) == ("adapted", "cached")
    np.testing.assert_array_equal(a.rows, b.rows)
    assert 0 not in a.rows and not set(b.rows) & set(t.support_items)  # rated stay excluded
    stats = pipeline.store.snapshot()["memory"]
    assert stats["hits"] == 1 and stats["misses"] == 0 and stats["writes"] == 1


@pytest.mark.parametrize("fused", [False, True])
def test_exclusions_leave_the_best_remaining_candidates(models, tiny_artifacts, fused):
    """Excluded and rated items never come back; the N candidates ranked are the MF top N of
    the rest (the fused path takes them unordered from the index, then keeps the best)."""
    t = tiny_artifacts.split.test[1]
    mf = models.candidates
    (row,) = mf.fit_users([(t.support_items, t.support_labels)])
    _, order = mf.candidates(row[None], mf.n_items)
    exclude = order[0][[0, 2, 5]]  # some of the user's best candidates
    req = RecommendRequest(
        items=t.support_items, ratings=t.support_labels, k=mf.n_items, exclude=exclude,
        n_candidates=15,
    )  # fmt: skip
    pipeline, _ = make_pipeline(models, replace(RELAXED, fused=fused))
    (out,) = run_requests(pipeline, [req])
    banned = set(exclude) | set(t.support_items)
    want = [r for r in order[0] if r not in banned][:15]
    assert out.n_candidates == 15 and set(out.rows) == set(want)


def test_without_marks_and_clears_the_scratch_row():
    scratch = np.zeros(10, dtype=bool)
    cands = np.array([7, 3, 9, 1, 4])
    assert without(cands, 2, scratch, np.array([3]), np.array([9, 3])).tolist() == [7, 1]
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])  # cands in any order: the best n kept
    got = without(cands, 2, scratch, np.array([9]), scores=scores)
    assert sorted(got.tolist()) == [1, 3] and not scratch.any()
    assert without(cands, 9, scratch, np.array([7]), scores=scores).tolist() == [3, 9, 1, 4]


def _mixed_rank_requests(models, sizes):
    rec, rng = models.ranker.rec, np.random.default_rng(0)
    states = [rec.adapt(np.array([1, 2, 3]), np.array([4.0, 2.0, 5.0])) for _ in sizes]
    return [
        (s, rng.choice(rec.n_items, n, replace=False)) for s, n in zip(states, sizes, strict=True)
    ]


def test_rank_batch_groups_by_width_with_the_ungrouped_scores(models):
    """Mixed candidate counts (degraded and full requests) are scored per count: the same
    scores as one padded ``score_many`` over the batch, in the batch's order."""
    reqs = _mixed_rank_requests(models, [20, 5, 20, 8, 5, 20])
    pipeline, _ = make_pipeline(models)
    got = pipeline._rank_batch(reqs)
    ungrouped = models.ranker.score_many([s for s, _ in reqs], [c for _, c in reqs])
    assert len(got) == len(reqs)
    for g, u, (_, c) in zip(got, ungrouped, reqs, strict=True):
        assert g.shape == c.shape
        np.testing.assert_allclose(g, u, rtol=1e-6, atol=1e-6)


class _RecordingRanker:
    """Scores a candidate as its row number plus the user's tag; fails on one width."""

    def __init__(self, fail_width=None):
        self.calls, self.fail_width = [], fail_width

    def score_many(self, states, candidates):
        self.calls.append([len(c) for c in candidates])
        if self.fail_width in self.calls[-1]:
            raise ValueError("bad group")
        return [c + s for s, c in zip(states, candidates, strict=True)]


def test_rank_batch_calls_once_per_width_and_keeps_the_order(models):
    ranker = _RecordingRanker()
    pipeline, _ = make_pipeline(replace(models, ranker=ranker))
    sizes = [3, 1, 3, 2, 1]
    reqs = [(10.0 * i, np.arange(n, dtype=np.float64)) for i, n in enumerate(sizes)]
    got = pipeline._rank_batch(reqs)
    assert ranker.calls == [[3, 3], [1, 1], [2]]
    for i, (g, n) in enumerate(zip(got, sizes, strict=True)):
        np.testing.assert_array_equal(g, np.arange(n) + 10.0 * i)


def test_rank_batch_error_of_one_group_reaches_every_waiter(models):
    ranker = _RecordingRanker(fail_width=1)
    config = replace(RELAXED, rank=StageConfig(max_batch=8, max_wait_s=0.2))
    pipeline, _ = make_pipeline(replace(models, ranker=ranker), config)

    async def main():
        await pipeline.rank.start()
        try:
            return await asyncio.gather(
                *(pipeline.rank.submit((0.0, np.arange(n, dtype=np.float64))) for n in (3, 1, 2)),
                return_exceptions=True,
            )
        finally:
            await pipeline.rank.stop()

    out = asyncio.run(asyncio.wait_for(main(), 30))
    assert ranker.calls[0] == [3] and all(isinstance(e, ValueError) for e in out)


def test_model_stage_weighs_a_request_by_its_candidates(models):
    config = replace(RELAXED, n_candidates=50, degraded_candidates=10, request_cost=25.0)
    pipeline, _ = make_pipeline(models, config)
    assert pipeline.model.weight is not None
    work = {n: pipeline.model.weight(_Model(_Adapt(None, _NO_ROWS, _NO_ROWS), None, _NO_ROWS, n))
            for n in (50, 10)}  # fmt: skip
    assert work == {50: 1.0, 10: pytest.approx(35 / 75)}
    with pytest.raises(ValueError, match="request_cost"):
        replace(RELAXED, request_cost=-1.0)


def test_unknown_user_without_interactions_gets_the_cold_state(models):
    pipeline, _ = make_pipeline(models)
    (c,) = run_requests(pipeline, [RecommendRequest("nobody", k=5)])
    assert c.state == "cold" and c.rows.size == 5


def test_user_record_round_trip(models, tiny_artifacts):
    t = tiny_artifacts.split.test[0]
    state = models.ranker.rec.adapt(t.support_items, t.support_labels)
    rec = UserRecord(state, np.arange(5, dtype=np.float32), t.support_items)
    back = UserRecord.from_bytes(rec.to_bytes())
    np.testing.assert_array_equal(back.state.params, state.params)
    np.testing.assert_array_equal(back.mf_row, rec.mf_row)
    np.testing.assert_array_equal(back.rated, t.support_items)
    with pytest.raises(ValueError):
        UserRecord.from_bytes(b"\x01")


def test_shedding_rejects_before_the_queue_grows_and_degrades_first(models, tiny_artifacts):
    t = tiny_artifacts.split.test[0]
    config = RecommendConfig(
        fused=False, admission=AdmissionConfig(deadline_ms=100, degrade_at=0.5)
    )
    pipeline, _ = make_pipeline(models, config)

    def measured(seconds):  # as if every batch so far had taken `seconds`
        for stage in pipeline.stages:
            stage.metrics.recent = Window(MIN_SAMPLES)
            for _ in range(MIN_SAMPLES):
                stage.metrics.observe_service(seconds)

    measured(0.020)
    req = RecommendRequest(items=t.support_items, ratings=t.support_labels, k=3)
    # 3 stages x 20 ms = 60 ms > 50% of 100 ms: degraded to the smaller N, still answered
    (out,) = run_requests(pipeline, [req])
    assert out.degraded == ("n_candidates=100",) and out.n_candidates <= 100
    # 60 ms > a 50 ms deadline: refused at admission, nothing queued
    measured(0.020)
    (err,) = run_requests(
        pipeline, [RecommendRequest(items=req.items, ratings=req.ratings, deadline_ms=50)]
    )
    assert isinstance(err, Overloaded) and err.retry_after_s >= 1
    assert pipeline.adapt.metrics.submitted == 1 and pipeline.admission.rejected == 1


def test_bad_support_fails_the_request_with_value_error(models):
    pipeline, _ = make_pipeline(models)
    bad = RecommendRequest(items=np.array([10_000]), ratings=np.array([3.0], np.float32))
    (err,) = run_requests(pipeline, [bad])
    assert isinstance(err, ValueError)


def test_serving_imports_no_training_code():
    import subprocess
    import sys

    code = (
        "import sys, warmstart.serving.pipelines, warmstart.serving.models\n"
        "bad = [m for m in sys.modules if m.startswith('warmstart') and m.endswith('training')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class FakeRetriever:
    """encode = bag of letters; search = inner product; rerank = reverse order (visible)."""

    cross = object()

    def __init__(self, docs):
        self.docs = docs
        self.vectors = np.stack([self.vec(d) for d in docs])

    @staticmethod
    def vec(text):
        v = np.zeros(26, np.float32)
        for ch in text.lower():
            if ch.isalpha():
                v[ord(ch) - 97] += 1
        return v

    def encode_queries(self, texts):
        return np.stack([self.vec(t) for t in texts])

    def search(self, emb, k):
        scores = emb @ self.vectors.T
        return [[(self.docs[i], float(s[i])) for i in top_k(s, k)] for s in scores]

    def rerank_many(self, queries, hits):
        return [list(reversed(h)) for h in hits]


def test_search_pipeline_batches_and_reranks():
    from warmstart.serving.pipelines import SearchPipeline, SearchRequest

    docs = ["apple pie", "banana bread", "cherry tart", "apple crumble", "date cake"]
    retriever = FakeRetriever(docs)
    pool = ComputePool(1, None)
    pipeline = SearchPipeline(retriever, pool)
    queries = ["apple", "banana", "cherry", "apple pie"]

    async def main():
        await pipeline.start()
        plain = await asyncio.gather(*(pipeline.run(SearchRequest(q, k=2)) for q in queries))
        reranked = await pipeline.run(SearchRequest("apple", k=2, rerank=True))
        await pipeline.stop()
        return plain, reranked

    plain, reranked = asyncio.run(asyncio.wait_for(main(), 30))
    for q, got in zip(queries, plain, strict=True):
        assert got.hits == retriever.search(retriever.encode_queries([q]), 2)[0]
        assert not got.reranked
    depth = pipeline.config.rerank_n
    full = retriever.search(retriever.encode_queries(["apple"]), depth)[0]
    assert reranked.reranked and reranked.hits == list(reversed(full))[:2]
    pool.shutdown()


def _search_under_degrade(config, rerank=True):
    """A rerank request when admission says "degrade": (the result, the degraded path admit saw)."""
    from warmstart.serving.admission import Ticket
    from warmstart.serving.pipelines import SearchPipeline, SearchRequest

    retriever = FakeRetriever(["apple pie", "banana bread", "cherry tart"])
    pool = ComputePool(1, None)
    pipeline = SearchPipeline(retriever, pool, config)
    seen = []

    def admit(full, degraded, budget):
        seen.append((list(full), None if degraded is None else list(degraded)))
        return Ticket(True, 0.0)

    pipeline.admission.admit = admit  # type: ignore[method-assign]

    async def main():
        await pipeline.start()
        try:
            return await pipeline.run(SearchRequest("apple", k=2, rerank=rerank))
        finally:
            await pipeline.stop()

    result = asyncio.run(asyncio.wait_for(main(), 30))
    pool.shutdown()
    ((full, degraded),) = seen
    return result, full, degraded, pipeline


def test_search_skips_rerank_under_load_only_when_allowed():
    from warmstart.serving.pipelines import SearchConfig

    result, full, degraded, p = _search_under_degrade(SearchConfig())
    assert not result.reranked and result.degraded == ("rerank skipped",)
    assert p.rerank not in degraded  # the cheaper path admission may fall back to
    result, full, degraded, p = _search_under_degrade(SearchConfig(degrade_rerank=False))
    assert result.reranked and result.degraded == ()
    assert degraded == full and p.rerank in full  # refused rather than answered unreranked


def test_a_search_without_rerank_has_no_lesser_form_for_admission():
    """Degrading a search without rerank would change nothing: admission gets no degraded
    path (``None``), so such a search is never counted as degraded (nor as shedding)."""
    from warmstart.serving.pipelines import SearchConfig

    result, full, degraded, p = _search_under_degrade(SearchConfig(), rerank=False)
    assert degraded is None and p.rerank not in full and not result.reranked


@pytest.mark.parametrize(
    ("field", "value"),
    [("bf16", "yes"), ("bf16", 1), ("rerank_n", 0), ("rerank_max_length", 4)],
)
def test_search_config_rejects_bad_values(field, value):
    from warmstart.serving.pipelines import SearchConfig

    with pytest.raises(ValueError, match=f"search.{field}"):
        SearchConfig(**{field: value})


def test_search_config_speed_options_from_json():
    from warmstart.retrieval.encoding import native_bf16
    from warmstart.serving.config import ServeConfig

    c = ServeConfig.from_dict({"search": {"bf16": False, "rerank_max_length": 64, "rerank_n": 7}})
    assert (c.search.use_bf16, c.search.rerank_max_length, c.search.rerank_n) == (False, 64, 7)
    assert ServeConfig.from_dict({"search": {"bf16": True}}).search.use_bf16
    assert ServeConfig.from_dict({}).search.use_bf16 == native_bf16()  # "auto", the default


def test_batched_top_k_picks_what_top_k_picks_for_each_request():
    """``top_k_rows`` groups the batch by (candidates, k): each row gets exactly the rows and
    scores ``top_k`` gives it alone, ties (scores rounded to one or two decimals) included."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.choice([0, 1, 3, 10, 50], int(rng.integers(1, 7)))
        cands = [rng.permutation(1000)[:s].astype(np.int64) for s in sizes]
        scores = [
            np.round(rng.random(s), int(rng.integers(1, 3))).astype(np.float32) for s in sizes
        ]
        ks = [int(rng.choice([1, 3, 10, 60])) for _ in sizes]
        for c, s, k, (rows, best) in zip(
            cands, scores, ks, top_k_rows(cands, scores, ks), strict=True
        ):
            want = top_k(s, k)
            assert np.array_equal(rows, c[want]) and np.array_equal(best, s[want])
            assert rows.size == min(k, c.size)
