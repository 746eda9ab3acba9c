"""HTTP API: endpoints, 422 naming field and value, limits, auth, reload, metrics, OpenAPI."""

from __future__ import annotations

import gc
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from warmstart.serving.app import Server, create_app, shares_a_core
from warmstart.serving.config import ComputeConfig, ServeConfig
from warmstart.serving.engine import MIN_SAMPLES

TOKEN = "s3cret-token"


def serve_config(tiny_artifacts, tmp_path, **overrides):
    data = {
        "models": {
            "coldnas": str(tiny_artifacts.coldnas),
            "mf": str(tiny_artifacts.mf),
            "knn": None,  # MF -> ColdNAS; the item-kNN default has its own test
        },
        "store": {"memory_mb": 1, "lmdb_path": str(tmp_path / "lmdb")},
        "compute": {"workers": 1, "intra_op_threads": 1},
        "admission": {"deadline_ms": 5000},
        **overrides,
    }
    return ServeConfig.from_dict(data)


@pytest.fixture
def client(tiny_artifacts, tmp_path):
    app = create_app(Server(serve_config(tiny_artifacts, tmp_path), admin_token=TOKEN))
    with TestClient(app) as c:
        yield c


def support(tiny_artifacts, i=0):
    t = tiny_artifacts.split.test[i]
    ids = tiny_artifacts.split.dataset.items.ids
    return [
        {"item": int(ids[r]), "rating": float(y)}
        for r, y in zip(t.support_items, t.support_labels, strict=True)
    ]


def test_recommend_returns_k_unseen_items(client, tiny_artifacts):
    inter = support(tiny_artifacts)
    r = client.post("/v1/recommend", json={"interactions": inter, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 5 and body["state"] == "adapted" and body["degraded"] == []
    seen = {x["item"] for x in inter}
    assert not seen & {x["id"] for x in body["items"]}
    scores = [x["score"] for x in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_known_user_is_cached_across_requests(client, tiny_artifacts):
    inter = support(tiny_artifacts, 1)
    a = client.post("/v1/recommend", json={"user_id": "alice", "interactions": inter}).json()
    b = client.post("/v1/recommend", json={"user_id": "alice"}).json()
    assert (a["state"], b["state"]) == ("adapted", "cached") and a["items"] == b["items"]


def test_unknown_item_is_422_naming_field_and_value(client, tiny_artifacts):
    inter = support(tiny_artifacts)
    inter[2] = {"item": 987654, "rating": 3.0}
    r = client.post("/v1/recommend", json={"interactions": inter})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "interactions", "2", "item"] and err["input"] == 987654
    assert "987654" in err["msg"]
    r = client.post("/v1/recommend", json={"exclude": [555555]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "exclude", "0"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": 10_000}, "k"),
        ({"interactions": [{"item": 1, "rating": 3.0}] * 1001}, "interactions"),
        ({"interactions": [{"item": 1}]}, "rating"),
        ({"surprise": 1}, "surprise"),
        ({"deadline_ms": -1}, "deadline_ms"),
    ],
)
def test_limits_are_422_with_the_field(client, body, field):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])


def test_rating_outside_the_model_range_is_422(client, tiny_artifacts):
    inter = support(tiny_artifacts)
    inter[0]["rating"] = 99.0
    r = client.post("/v1/recommend", json={"interactions": inter})
    assert r.status_code == 422 and "rating" in r.json()["detail"][0]["loc"]


def test_overload_is_refused_at_once_with_503_and_queues_nothing(tiny_artifacts, tmp_path):
    config = serve_config(tiny_artifacts, tmp_path, admission={"deadline_ms": 100})
    server = Server(config)
    with TestClient(create_app(server)) as c:
        model = server.recommend.model
        for _ in range(MIN_SAMPLES):  # as if every batch so far had taken 1 s
            model.metrics.observe_service(1.0)
        r = c.post("/v1/recommend", json={"interactions": support(tiny_artifacts)})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "deadline" in r.json()["detail"]
        assert model.metrics.submitted == 0 and server.recommend.admission.rejected == 1
        # refused before its body is parsed: an invalid one too (that keeps a refusal cheap)
        bad = [{"item": "nope", "rating": 4}]
        r = c.post("/v1/recommend", json={"interactions": bad})
        assert r.status_code == 503 and server.recommend.admission.rejected == 2
        # a body with its own deadline is parsed first: invalid input is its 422 at any load
        r = c.post("/v1/recommend", json={"interactions": bad, "deadline_ms": 100})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "item"
        assert model.metrics.submitted == 0


def test_rendered_answer_equals_the_payload(client):
    """The response bytes (per-item JSON fragments + scores) parse to ``recommend_payload``."""
    from warmstart.serving.app import recommend_payload
    from warmstart.serving.pipelines import Recommendation

    server = client.app.state.server
    pipeline = server.recommend
    scores = np.array([4.5, 3.123456789, 1.0], np.float32)
    for out in (
        Recommendation(np.array([3, 1, 2]), scores, "adapted", 50, ("n_candidates=100",)),
        Recommendation(np.array([3, 0]), scores[:2], "cached", 2),
        Recommendation(np.zeros(0, np.int64), np.zeros(0, np.float32), "cold", 0),
    ):
        body = server.recommend_json(pipeline, out)
        assert json.loads(body) == recommend_payload(pipeline, out)
    assert server.recommend_json(pipeline, out) == body  # cached fragments, same bytes


def test_degraded_answer_says_so_in_a_header_too(tiny_artifacts, tmp_path):
    """Degraded (fewer candidates): in the body's ``degraded`` and an ``X-Degraded`` header,
    which the benchmark's load generator counts without parsing bodies."""
    config = serve_config(tiny_artifacts, tmp_path, admission={"deadline_ms": 10_000})
    server = Server(config)
    with TestClient(create_app(server)) as c:
        body = {"interactions": support(tiny_artifacts), "k": 3}
        r = c.post("/v1/recommend", json=body)
        assert r.status_code == 200 and "x-degraded" not in r.headers
        for _ in range(MIN_SAMPLES):  # 6 s per batch: over 50% of the deadline, under 80%
            server.recommend.model.metrics.observe_service(6.0)
        r = c.post("/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["degraded"] == [r.headers["x-degraded"]] == ["n_candidates=100"]


@pytest.mark.parametrize("recommender", ["auto", "coldnas"])
def test_item_knn_serves_when_its_artifact_exists(tiny_artifacts, tmp_path, recommender):
    from warmstart.coldstart.knn_inference import load_knn

    config = serve_config(tiny_artifacts, tmp_path, recommend={"recommender": recommender})
    models = {**config.models.__dict__, "knn": str(tiny_artifacts.knn)}
    config = ServeConfig.from_dict({**config.to_dict(), "models": models})
    inter = support(tiny_artifacts, 2)
    with TestClient(create_app(Server(config))) as c:
        body = c.post("/v1/recommend", json={"interactions": inter, "k": 5}).json()
        served = c.get("/v1/stats").json()["recommend"]["models"]
    if recommender == "coldnas":  # asked for explicitly: MF candidates -> ColdNAS
        assert set(served) == {"coldnas", "mf"}
        return
    assert set(served) == {"coldnas", "knn"}  # auto: item-kNN, in its own score order
    knn = load_knn(tiny_artifacts.knn)
    ids = knn.item_ids
    rows = ids.to_rows([x["item"] for x in inter])
    (user,) = knn.fit_users([(rows, np.array([x["rating"] for x in inter], np.float32))])
    got = ids.to_rows([x["id"] for x in body["items"]])
    np.testing.assert_allclose([x["score"] for x in body["items"]], knn.predict(user, got), 1e-5)
    unseen = np.setdiff1d(np.arange(knn.n_items), rows)
    assert body["items"][0]["score"] == pytest.approx(knn.predict(user, unseen).max(), 1e-5)


def test_oversized_body_is_413(client):
    r = client.post(
        "/v1/recommend",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_health_ready_stats_metrics_openapi(client, tiny_artifacts):
    client.post("/v1/recommend", json={"interactions": support(tiny_artifacts)})
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    stats = client.get("/v1/stats").json()
    names = [s["name"] for s in stats["recommend"]["stages"]]
    assert names == ["lookup", "model"]  # adapt → candidates → rank fused (the default)
    metrics = client.get("/metrics").text
    assert 'warmstart_stage_items_total{outcome="completed",stage="model"} 1.0' in metrics
    assert "warmstart_request_seconds_bucket" in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/search", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_search_answer_without_its_rerank_says_so_in_a_header(client):
    """A rerank skipped under load is a degraded answer (the benchmark counts it as one)."""
    from warmstart.retrieval.inference import Hit
    from warmstart.serving.pipelines import SearchResult

    class Skipping:  # a search pipeline whose admission always skips the rerank
        can_rerank = True

        async def run(self, req):
            return SearchResult([Hit("d1", 1.0, "t", "x")], False, ("rerank skipped",))

    server = client.app.state.server
    server.search = Skipping()
    r = client.post("/v1/search", json={"query": "hello", "rerank": True})
    server.search = None
    assert r.status_code == 200 and r.headers["x-degraded"] == "rerank skipped"
    assert r.json()["degraded"] == ["rerank skipped"] and not r.json()["reranked"]


def test_search_not_configured_is_404(client):
    r = client.post("/v1/search", json={"query": "hello"})
    assert r.status_code == 404 and "not configured" in r.json()["detail"]


def test_admin_reload_needs_the_bearer_token(client, tiny_artifacts):
    body = {"coldnas": str(tiny_artifacts.coldnas)}
    assert client.post("/v1/admin/reload", json=body).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert client.post("/v1/admin/reload", json=body, headers=bad).status_code == 403
    ok = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/v1/admin/reload", json=body, headers=ok)
    assert r.status_code == 200 and r.json()["reloads"] == 1
    r = client.post("/v1/admin/reload", json={"mf": "/nonexistent"}, headers=ok)
    assert r.status_code == 422 and "nonexistent" in r.json()["detail"]


def test_admin_disabled_without_a_token(tiny_artifacts, tmp_path):
    app = create_app(Server(serve_config(tiny_artifacts, tmp_path), admin_token=None))
    with TestClient(app) as c:
        r = c.post("/v1/admin/reload", json={}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 403 and "disabled" in r.json()["detail"]


def test_reload_under_load_fails_no_request(client, tiny_artifacts):
    inter = support(tiny_artifacts)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def one(i):
        return client.post("/v1/recommend", json={"interactions": inter, "k": 3}).status_code

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(one, i) for i in range(60)]
        reloads = [
            client.post(
                "/v1/admin/reload", json={"coldnas": str(tiny_artifacts.coldnas)}, headers=headers
            ).status_code
            for _ in range(2)
        ]
        codes = [f.result() for f in futures]
    assert reloads == [200, 200]
    assert codes == [200] * 60


@pytest.mark.parametrize(
    ("owns_process", "gc_freeze", "settles"), [(True, True, 2), (True, False, 0), (False, True, 0)]
)
def test_heap_is_settled_at_start_and_reload_only_by_a_server_owning_its_process(
    tiny_artifacts, tmp_path, monkeypatch, owns_process, gc_freeze, settles
):
    calls = []
    monkeypatch.setattr("warmstart.serving.app.settle_heap", lambda: calls.append(1))
    config = serve_config(tiny_artifacts, tmp_path, compute={"gc_freeze": gc_freeze})
    server = Server(config, admin_token=TOKEN, owns_process=owns_process)
    with TestClient(create_app(server)) as c:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = {"coldnas": str(tiny_artifacts.coldnas)}
        assert c.post("/v1/admin/reload", json=body, headers=headers).status_code == 200
        assert c.post("/v1/recommend", json={"interactions": support(tiny_artifacts)}).is_success
    assert len(calls) == settles
    stats = server.stats()
    assert "loop_lateness" in stats and ("gc_pauses" in stats) == owns_process


def test_collector_pauses_are_timed_per_generation_while_installed():
    from warmstart.serving.app import CollectorPauses

    pauses = CollectorPauses()
    pauses.install()
    try:
        gc.collect(1)
    finally:
        pauses.remove()
    gc.collect(1)  # removed: no longer counted
    assert pauses not in gc.callbacks
    snap = pauses.snapshot()
    assert sum(snap["gen1"]["counts"].values()) == 1 and snap["gen1"]["longest_ms"] >= 0


def test_settle_heap_unfreezes_collects_then_freezes(monkeypatch):
    calls = []
    for name in ("unfreeze", "collect", "freeze"):
        monkeypatch.setattr(f"gc.{name}", lambda name=name: calls.append(name))
    from warmstart.serving.app import settle_heap

    settle_heap()
    assert calls == ["unfreeze", "collect", "freeze"]


def test_lmdb_tier_survives_a_server_restart(tiny_artifacts, tmp_path):
    config = serve_config(tiny_artifacts, tmp_path)
    inter = support(tiny_artifacts, 2)
    with TestClient(create_app(Server(config))) as c:
        first = c.post("/v1/recommend", json={"user_id": "bob", "interactions": inter}).json()
    with TestClient(create_app(Server(config))) as c:  # a new process's memory tier is empty
        again = c.post("/v1/recommend", json={"user_id": "bob"}).json()
        tiers = c.get("/v1/stats").json()["recommend"]["store"]
    assert again["state"] == "cached" and again["items"] == first["items"]
    assert tiers["memory"]["misses"] == 1 and tiers["lmdb"]["hits"] == 1


@pytest.mark.redis
def test_redis_stopped_under_load_then_restarted(redis_server, tiny_artifacts, tmp_path):
    import httpx
    import redis

    from warmstart.serving.runner import running

    config = serve_config(
        tiny_artifacts,
        tmp_path,
        store={
            "memory_mb": 1,
            "lmdb_path": None,
            "redis_url": redis_server.url,
            "redis_retry_s": 0.05,
        },
    )
    inter = support(tiny_artifacts)
    with running(create_app(Server(config))) as url, httpx.Client(base_url=url) as http:

        def one(i):
            body = {"user_id": f"u{i}", "interactions": inter, "k": 3}
            return http.post("/v1/recommend", json=body).status_code

        with ThreadPoolExecutor(4) as ex:
            before = list(ex.map(one, range(40)))
            redis_server.stop()  # under load: the requests keep coming
            during = list(ex.map(one, range(40, 120)))
            redis_server.start()
            after = list(ex.map(one, range(120, 160)))
        assert before + during + after == [200] * 160  # zero client errors
        # reconnected: new users' records reach the restarted server (bounded retries, no sleep)
        client = redis.Redis.from_url(redis_server.url)
        for i in range(160, 400):
            one(i)
            if client.exists(
                f"ws:user:{http.get('/v1/stats').json()['recommend']['model']}:u{i - 1}"
            ):
                break
        else:
            pytest.fail("the server never wrote to the restarted Redis")
        client.close()


def test_hot_path_in_front_of_the_app_serves_and_passes_on(tiny_artifacts, tmp_path):
    """``app.state.hot_path`` (what ``warmstart serve`` runs): the same answers; invalid
    and oversized bodies still get FastAPI's 422 / the 413, other routes the app's."""
    server = Server(serve_config(tiny_artifacts, tmp_path))
    app = create_app(server)
    with TestClient(app.state.hot_path) as hot:  # its lifespan reaches the app
        body = {"interactions": support(tiny_artifacts), "k": 4}
        a = hot.post("/v1/recommend", json=body)
        assert a.status_code == 200 and len(a.json()["items"]) == 4
        assert server.recommend.admission.admitted == 1
        bad = hot.post("/v1/recommend", json={"interactions": [{"item": "nope", "rating": 4}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "item"
        big = hot.post("/v1/recommend", content=b"x" * (2 << 20))
        assert big.status_code == 413
        assert hot.get("/readyz").status_code == 200 and hot.get("/healthz").status_code == 200


def test_the_loop_yields_the_core_only_where_it_shares_one(monkeypatch):
    """``compute.loop_yield_ms`` applies where the process has fewer CPUs than model threads
    plus the loop (the benchmark's one-core server), never where the loop has its own."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert shares_a_core(ComputeConfig())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert not shares_a_core(ComputeConfig())
    assert shares_a_core(ComputeConfig(workers=2)) and shares_a_core(
        ComputeConfig(intra_op_threads=2)
    )
    with pytest.raises(ValueError, match="loop_yield_ms"):
        ComputeConfig(loop_yield_ms=-1.0)
