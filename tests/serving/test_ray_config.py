"""Ray Serve deployment without a cluster: the documented Serve config file builds the app, the
proxy middleware turns a lost replica into one resend and then a retryable 503."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="needs Ray Serve (pip install 'ray[serve]')")

from warmstart.serving.ray_serve import (
    ReplicaHeader,
    ReplicaLossRetry,
    app_builder,
    proxy_middlewares,
)

DOC_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "serve-ray.yaml"


def test_documented_serve_config_validates_and_builds(tmp_path, monkeypatch):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(DOC_CONFIG.read_text()))
    (app,) = schema.applications
    module, _, name = app.import_path.partition(":")
    assert (module, name) == ("warmstart.serving.ray_serve", "app_builder")
    (tmp_path / "serve.json").write_text(json.dumps({"models": {"coldnas": "m", "mf": "f"}}))
    monkeypatch.chdir(tmp_path)
    built = app_builder(app.args)._bound_deployment
    assert built.num_replicas == app.args["replicas"]
    assert built.ray_actor_options["num_cpus"] == app.args["num_cpus"]
    # model paths are the user_config (a new one is a rolling in-place reload), made absolute
    assert built.user_config["models"]["coldnas"] == str(tmp_path / "m")
    assert built.init_args[0].models.coldnas is None
    with pytest.raises(ValueError, match="replicsa"):
        app_builder({"replicsa": 2})


def test_proxy_callback_names_this_module():
    from warmstart.serving.ray_serve import PROXY_CALLBACK

    module, _, name = PROXY_CALLBACK.partition(":")
    assert __import__(module, fromlist=[name]).proxy_middlewares is proxy_middlewares
    assert proxy_middlewares()[0].cls is ReplicaLossRetry


class FlakyProxy:
    """Stands in for Ray Serve's proxy: the first ``lose`` requests get no response at all
    (what the proxy does when the replica dies), later ones echo the body."""

    def __init__(self, lose: int, status: int = 200) -> None:
        self.lose = lose
        self.status = status
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        if len(self.bodies) <= self.lose:
            return
        body = message.get("body", b"")
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": body})


def post(app: Any, body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return await client.post("/v1/recommend", content=body)

    return asyncio.run(go())


def test_a_lost_replica_is_resent_once_with_the_same_body():
    proxy = FlakyProxy(lose=1)
    r = post(ReplicaLossRetry(proxy), b'{"k": 3}')
    assert r.status_code == 200 and r.content == b'{"k": 3}'
    assert proxy.bodies == [b'{"k": 3}', b'{"k": 3}']


def test_lost_twice_is_a_retryable_503():
    proxy = FlakyProxy(lose=5)
    r = post(ReplicaLossRetry(proxy), b"{}")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert len(proxy.bodies) == 2


def test_an_answer_from_the_app_is_never_resent():
    proxy = FlakyProxy(lose=0, status=500)  # the app's own 500 (a bug) is passed through
    r = post(ReplicaLossRetry(proxy), b"{}")
    assert r.status_code == 500 and len(proxy.bodies) == 1


class HangingProxy(FlakyProxy):
    """The first request waits forever inside the proxy (a replica killed as it was routed)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.bodies:
            self.bodies.append((await receive()).get("body", b""))
            await asyncio.sleep(3600)
        await super().__call__(scope, receive, send)


def test_an_attempt_not_answered_in_time_is_resent():
    proxy = HangingProxy(lose=0)
    r = post(ReplicaLossRetry(proxy, answer_timeout_s=0.05), b'{"k": 3}')
    assert r.status_code == 200 and r.content == b'{"k": 3}'
    assert proxy.bodies == [b'{"k": 3}', b'{"k": 3}']


def test_replica_header_only_adds_a_header():
    r = post(ReplicaHeader(FlakyProxy(lose=0), "abc123"), b'{"x": 1}')
    assert r.headers["x-warmstart-replica"] == "abc123" and r.content == b'{"x": 1}'


def test_a_client_that_went_away_is_never_resent():
    calls = []

    async def proxy(scope: Any, receive: Any, send: Any) -> None:  # Ray's proxy on a 499
        calls.append(await receive())
        assert (await receive())["type"] == "http.disconnect"

    incoming = iter([{"type": "http.request", "body": b"{}"}, {"type": "http.disconnect"}])
    sent: list[Any] = []

    async def receive() -> Any:
        return next(incoming)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/recommend"}
    asyncio.run(ReplicaLossRetry(proxy)(scope, receive, send))
    assert len(calls) == 1 and sent == []
