"""Ray Serve scale-out on a real local Ray cluster and a real redis-server (one each per module).

Two replicas of the whole server behind Ray Serve's HTTP proxy, sharing user state through
Redis: same responses as the single-process server; a user adapted on one replica is read by
the other; a rolling model reload fails no request; and the chaos tests of the issue, under
constant light load: Redis stopped for 10 s (zero client errors), a replica restarted (the
user's state written through the old one is served by the new one), one of the two replicas
killed every 10 s for 60 s (every request succeeds or gets a retryable 503, none hangs).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fixtures.load import ConstantLoad
from serving.conftest import REDIS_HINT, RedisServer, free_port  # the redis-server fixture's class

ray = pytest.importorskip("ray", reason="needs Ray Serve (pip install 'warmstart[serve]')")
pytest.importorskip("ray.serve", reason="needs Ray Serve (pip install 'ray[serve]')")
pytest.importorskip("redis", reason="pip install redis (the `serve` extra)")

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.timeout(300)]

TOKEN = "ray-admin-token"
WAIT_S = 60.0  # bound of every wait on the cluster (replica start-up on a loaded 2-core box)


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(REDIS_HINT)
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    from warmstart.serving.ray_serve import shutdown, start_ray

    start_ray(num_cpus=2)
    try:
        yield
    finally:
        shutdown()  # no stray raylet or replica outlives the module


def serve_config(tiny_artifacts: Any, redis_url: str) -> Any:
    from warmstart.serving.config import ServeConfig

    return ServeConfig.from_dict(
        {
            "port": free_port(),
            "models": {"coldnas": str(tiny_artifacts.coldnas), "mf": str(tiny_artifacts.mf)},
            # no LMDB: the replicas share state through Redis only (what is being tested)
            "store": {
                "memory_mb": 1,
                "lmdb_path": None,
                "redis_url": redis_url,
                "redis_retry_s": 0.2,
            },
            "compute": {"workers": 1, "intra_op_threads": 1, "io_workers": 1},
            "admission": {"deadline_ms": 5000},
        }
    )


@pytest.fixture(scope="module")
def deployed(cluster: None, redis_module: RedisServer, tiny_artifacts: Any) -> Iterator[Any]:
    from warmstart.serving.ray_serve import RayServeConfig, deploy

    config = serve_config(tiny_artifacts, redis_module.url)
    ray_config = RayServeConfig(replicas=2, num_cpus=0.5, health_check_period_s=1.0)
    url = deploy(config, ray_config, admin_token=TOKEN, timeout_s=120)
    yield {"url": url, "config": config, "ray_config": ray_config}


def support(tiny_artifacts: Any, i: int = 0) -> list[dict[str, Any]]:
    t = tiny_artifacts.split.test[i % len(tiny_artifacts.split.test)]
    ids = tiny_artifacts.split.dataset.items.ids
    return [
        {"item": int(ids[r]), "rating": float(y)}
        for r, y in zip(t.support_items, t.support_labels, strict=True)
    ]


def replica_of(r: httpx.Response) -> str:
    value = r.headers.get("x-warmstart-replica")
    assert value, f"no replica header: {r.status_code} {r.text[:200]}"
    return value


def until(what: str, check: Any, timeout_s: float = WAIT_S, every_s: float = 0.1) -> Any:
    """``check()`` until it returns a truthy value (a cluster has no event to await), bounded."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


def stored(redis_url: str, version: str, user: str) -> bool:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return bool(client.exists(f"ws:user:{version}:{user}"))
    finally:
        client.close()


def adapt_until_shared(
    http: httpx.Client, redis_url: str, user: str, interactions: list[dict[str, Any]]
) -> httpx.Response:
    """Adapt ``user`` until its record is in Redis. The Redis tier drops a write when a call
    misses its 50 ms timeout (it then counts the server as down for ``redis_retry_s``), which
    happens on a loaded box; re-adapting writes the same record again. Bounded."""
    body = {"user_id": user, "interactions": interactions}
    for _ in range(10):
        r = http.post("/v1/recommend", json=body)
        assert r.status_code == 200 and r.json()["state"] == "adapted", r.text
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            if stored(redis_url, r.json()["model"], user):
                return r
            time.sleep(0.1)
    stats = http.get("/v1/stats").json()["recommend"]["store"]
    pytest.fail(f"{user}'s record never reached Redis; store of a replica: {stats}")


def answered_by_other(
    http: httpx.Client, body: dict[str, Any], not_from: set[str]
) -> httpx.Response:
    """Send ``body`` until a replica outside ``not_from`` answers (routing is random), bounded."""

    def attempt() -> httpx.Response | None:
        r = http.post("/v1/recommend", json=body)
        return r if replica_of(r) not in not_from else None

    return until(f"an answer from a replica other than {not_from}", attempt, every_s=0.0)


# --------------------------------------------------------------------------- behaviour


def test_same_api_and_responses_as_the_single_process_server(deployed, tiny_artifacts, tmp_path):
    from warmstart.serving.app import Server, create_app

    single = dataclasses.replace(
        deployed["config"],
        store=dataclasses.replace(deployed["config"].store, redis_url=None),
    )
    bodies = [
        {"interactions": support(tiny_artifacts, 0), "k": 5},
        {
            "interactions": support(tiny_artifacts, 1),
            "k": 3,
            "exclude": [support(tiny_artifacts, 2)[0]["item"]],
        },
        {"interactions": [{"item": 987654, "rating": 3.0}]},  # 422 naming the field
        {"k": 0},
    ]
    with (
        TestClient(create_app(Server(single))) as local,
        httpx.Client(base_url=deployed["url"]) as http,
    ):
        for body in bodies:
            a, b = local.post("/v1/recommend", json=body), http.post("/v1/recommend", json=body)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), body
        for path in ("/healthz", "/readyz"):
            assert http.get(path).json() == local.get(path).json()
        assert (
            http.get("/openapi.json").json()["paths"] == local.get("/openapi.json").json()["paths"]
        )


def test_state_adapted_on_one_replica_is_read_by_the_other(deployed, tiny_artifacts, redis_module):
    with httpx.Client(base_url=deployed["url"], timeout=30) as http:
        first = adapt_until_shared(http, redis_module.url, "alice", support(tiny_artifacts, 3))
        again = answered_by_other(http, {"user_id": "alice"}, {replica_of(first)})
    assert again.status_code == 200
    assert again.json()["state"] == "cached" and again.json()["items"] == first.json()["items"]


def test_rolling_model_reload_fails_no_request(deployed, tiny_artifacts, tmp_path):
    """Two rolling reloads under load, one from the driver (what SIGHUP does), one through
    ``POST /v1/admin/reload`` on whichever replica gets it: every replica switches, no
    request fails."""
    from warmstart.serving.ray_serve import reload_models, replica_actors

    replicas = set(replica_actors())
    copy = tmp_path / "coldnas-copy"
    shutil.copytree(tiny_artifacts.coldnas, copy)
    inter = support(tiny_artifacts, 4)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        ConstantLoad(deployed["url"], lambda i: {"interactions": inter, "k": 3}, rate=20) as load,
        httpx.Client(base_url=deployed["url"], timeout=120) as http,
    ):

        def every_replica_on(path: Any) -> None:
            seen: set[str] = set()

            def check() -> bool:
                r = http.get("/v1/stats")
                if r.json()["models"]["coldnas"] == str(path):
                    seen.add(replica_of(r))
                return len(seen) >= 2

            until(f"both replicas on {path}", check, every_s=0.0)

        time.sleep(1.0)  # load before, during and after the reloads
        assert reload_models({"coldnas": str(copy)})["models"]["coldnas"] == str(copy)
        every_replica_on(copy)
        r = http.post("/v1/admin/reload", json={"coldnas": str(tiny_artifacts.coldnas)})
        assert r.status_code == 401
        r = http.post(
            "/v1/admin/reload", json={"coldnas": str(tiny_artifacts.coldnas)}, headers=headers
        )
        assert r.status_code == 200 and r.json()["reloads"] == 2, r.text
        every_replica_on(tiny_artifacts.coldnas)
        r = http.post("/v1/admin/reload", json={"mf": str(tmp_path / "none")}, headers=headers)
        assert r.status_code == 422 and "none" in r.text
        time.sleep(1.0)
    print("two rolling reloads under load:", load.summary())
    assert load.counts() == {200: len(load.results)} and len(load.results) > 20
    assert set(replica_actors()) == replicas  # reconfigured in place, not restarted


# --------------------------------------------------------------------------- chaos


def test_chaos_redis_stopped_for_10_s_gives_zero_client_errors(
    deployed, tiny_artifacts, redis_module
):
    inter = support(tiny_artifacts, 5)
    body_of = lambda i: {"user_id": f"r{i % 50}", **({"interactions": inter} if i % 2 else {})}  # noqa: E731
    with ConstantLoad(deployed["url"], body_of, rate=20) as load:
        time.sleep(2.0)
        redis_module.stop()
        time.sleep(10.0)
        redis_module.start()
        time.sleep(2.0)
    print("redis stopped for 10 s under load:", load.summary())
    assert load.counts() == {200: len(load.results)} and len(load.results) > 200


def test_chaos_restarted_replica_serves_state_written_through_the_old_one(
    deployed, tiny_artifacts, redis_module
):
    from warmstart.serving.ray_serve import replica_actors

    with httpx.Client(base_url=deployed["url"], timeout=30) as http:
        first = adapt_until_shared(http, redis_module.url, "bob", support(tiny_artifacts, 6))
        old = replica_of(first)
        before = {replica_of(http.get("/healthz")) for _ in range(20)}
        ray.kill(replica_actors()[old], no_restart=True)  # the controller starts a replacement
        # the replacement answers (a replica id never seen before), then bob from it
        again = answered_by_other(http, {"user_id": "bob"}, before | {old})
    assert again.status_code == 200
    assert again.json()["state"] == "cached" and again.json()["items"] == first.json()["items"]


def proxy_warnings() -> dict[str, int]:
    """The proxy middleware's warnings so far in this cluster's worker logs
    (``ReplicaLossRetry``): requests resent after their replica was lost, attempts not answered
    within ``answer_timeout_s`` (then resent), 503s after the last resend; empty where Ray's
    session folder cannot be found (diagnostics only)."""
    from pathlib import Path

    try:
        from ray._private.worker import global_worker

        logs = Path(global_worker.node.get_session_dir_path()) / "logs"
    except (ImportError, AttributeError):
        return {}
    text = "".join(f.read_text(errors="replace") for f in logs.glob("worker-*.err"))
    return {
        "resent": text.count("lost its replica: resent"),
        "not answered in time": text.count("not answered within"),
        "503 after resends": text.count("times: 503"),
    }


def test_chaos_kill_one_of_two_replicas_every_10_s_for_60_s(deployed, tiny_artifacts):
    from warmstart.serving.ray_serve import replica_actors

    inter = support(tiny_artifacts, 7)
    rng = random.Random(0)
    killed = 0
    before = proxy_warnings()
    with ConstantLoad(deployed["url"], lambda i: {"interactions": inter, "k": 5}, rate=20) as load:
        for _ in range(6):
            time.sleep(10.0)
            live = sorted(replica_actors().items())
            if live:
                ray.kill(rng.choice(live)[1], no_restart=True)
                killed += 1
        time.sleep(2.0)
    counts = load.counts()
    print(f"killed {killed} replicas in 60 s under load: {load.summary()}")
    after = proxy_warnings()
    print(f"  proxy middleware: { {k: n - before.get(k, 0) for k, n in after.items()} }")
    assert killed == 6 and sum(counts.values()) > 600
    assert set(counts) <= {200, 503}, counts  # no hang (-1), no lost connection (0), no 500
