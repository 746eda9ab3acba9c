"""Scale-out on Ray Serve: the same server (stage engine, pipelines, tiered store, FastAPI app)
inside each replica, behind Ray Serve's HTTP proxy.

JIZHI (Liu et al., KDD 2021, arXiv 2106.01674) runs its staged pipelines on many machines that
share per-user state through a remote store; here the distributed engine is Ray Serve and the
shared store is the Redis tier of ``serving/store.py``::

    client ─► Ray Serve HTTP proxy (one per node; ``proxy_middlewares`` below)
                 │  router: power of two choices over the replicas' queue lengths
                 ▼
    replica 1..N: ``Server`` + ``create_app`` unchanged (admission, stages, compute pool)
                 │  memory tier (per replica) → LMDB (per host, optional) → Redis (shared)

- **Same API, same responses**: the replica is ``@serve.ingress`` over ``create_app(Server)``;
  it only adds an ``x-warmstart-replica`` header (which replica answered).
- **Health**: Serve's controller calls ``check_health`` every ``health_check_period_s``; it asks
  the app's own ``GET /readyz`` in-process, so a replica that is starting, draining or lost its
  models is replaced by the controller.
- **Rolling model reload**: the model paths are the deployment's ``user_config``; a new one
  (``rolling_reload``, SIGHUP to ``warmstart serve --ray``, or ``serve deploy`` of the YAML in
  ``docs/serve-ray.yaml``) makes Serve call ``reconfigure`` on each replica in place, which loads
  the new artifacts beside the old ones and swaps them once loaded (``Server.reload``: in-flight
  requests finish on the old models), so no request fails.
- **A lost replica**: Ray Serve's proxy answers a request in flight on a replica that died with
  a bare 500. ``ReplicaLossRetry`` (installed in the proxy through Ray's
  ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, passed in the job's runtime environment) sends
  such a request again, once, to a live replica, and if that fails too answers 503 with
  ``Retry-After``: a client sees success or a retryable 503, never a 500 for a lost replica.
  The replay is safe because every route is idempotent (a recommend with interactions
  overwrites the user's record with the same one).

Usage::

    start_ray(num_cpus=2)
    url = deploy(ServeConfig.from_file("serve.json"), RayServeConfig(replicas=2))
    rolling_reload(new_config, RayServeConfig(replicas=2))
    shutdown()
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import warmstart
from warmstart.serving.app import (
    MAX_BODY_BYTES,
    ApiError,
    ReloadBody,
    Server,
    _check_admin,
    create_app,
)
from warmstart.serving.config import ModelPaths, ServeConfig

log = logging.getLogger(__name__)

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "warmstart.serving.ray_serve:proxy_middlewares"
REPLICA_HEADER = b"x-warmstart-replica"
LOST = b'{"detail":"the replica serving this request was lost; retry"}'
NO_MODELS = ModelPaths(**{f.name: None for f in dataclasses.fields(ModelPaths)})
# no per-request access log lines in the proxy and the replicas (as uvicorn's is off in the
# single-process server: it costs ~10% there, and here fills the log folder under load)
RELOAD_PATH = "/v1/admin/reload"
AGENT_NAME, AGENT_NAMESPACE = "warmstart-reload-agent", "warmstart"
NO_AGENT = (
    "no reload agent: this deployment was not started by `warmstart serve --ray`; "
    "reload with `serve deploy` of a new user_config (docs/serve-ray.yaml)"
)
QUIET = {"enable_access_log": False, "log_level": "WARNING"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class RayServeConfig:
    """The Ray Serve deployment around one ``ServeConfig``.

    Attributes:
        replicas: number of replicas (each one whole ``Server``).
        num_cpus: Ray CPUs reserved per replica; fractional so that 2 replicas fit on 2 cores
            beside the proxy and the controller (the replica's own threads are set by
            ``compute``).
        max_ongoing_requests: requests Serve lets into one replica at a time; above the
            admission controller's own bound (``admission.max_in_flight``) so that admission,
            not Serve's queue, decides who waits and who is refused.
        health_check_period_s / health_check_timeout_s: how often the controller asks each
            replica's ``/readyz`` and how long it waits for an answer.
        graceful_shutdown_timeout_s: how long a replica being stopped may drain.
        app_name: the Serve application's name.
    """

    replicas: int = 2
    num_cpus: float = 0.5
    max_ongoing_requests: int = 1024
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 10.0
    graceful_shutdown_timeout_s: float = 10.0
    app_name: str = "warmstart"

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"RayServeConfig.replicas must be >= 1, got {self.replicas}")
        if self.num_cpus <= 0:
            raise ValueError(f"RayServeConfig.num_cpus must be > 0, got {self.num_cpus}")


# --------------------------------------------------------------------------- proxy side


RESENDABLE = frozenset({"/v1/recommend", "/v1/search"})
ANSWER_TIMEOUT_S = 3.0


class ReplicaLossRetry:
    """ASGI middleware for Ray Serve's HTTP proxy: a lost replica becomes a retry, then a 503.

    The proxy answers a request whose replica died mid-flight by sending nothing (uvicorn then
    writes a bare 500). A request that reached the app always gets a response start from it,
    so "the wrapped proxy returned without starting a response" means the replica was lost:
    the buffered request is sent again (the router picks a live replica), at most ``retries``
    times, then 503 + ``Retry-After``.

    A request of the read-only API (``RESENDABLE``: recommend, search) whose attempt has not
    started a response within ``answer_timeout_s`` counts as lost too: the attempt is cancelled
    and the request resent. (A request routed to a replica as it was killed sometimes waited
    about 10 s inside the proxy before it was given up; the server's own deadlines answer in
    well under a second, with a 503 at worst.) Other paths (admin reloads) are never resent on
    a timeout.

    Args:
        app: the proxy's ASGI app.
        retries: resends after the first attempt.
        max_body: bodies larger than this are not buffered for replay (sent once).
        answer_timeout_s: seconds without a response start after which an attempt of a
            ``RESENDABLE`` request is lost (``None``: wait for the proxy).
    """

    def __init__(
        self,
        app: Any,
        retries: int = 1,
        max_body: int = MAX_BODY_BYTES,
        answer_timeout_s: float | None = ANSWER_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.retries = retries
        self.max_body = max_body
        self.answer_timeout_s = answer_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:  # buffer the request body (bounded) so that it can be replayed
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
            if size > self.max_body:
                if await self._once(scope, messages, receive, send) == "lost":
                    await send_json(send, 503, LOST, [(b"retry-after", b"1")])
                return
        for attempt in range(1 + self.retries):
            if await self._once(scope, messages, receive, send) != "lost":
                return  # answered, or the client went away (never resend for a gone client)
            if attempt < self.retries:
                log.warning(
                    "ray serve: %s %s lost its replica: resent", scope["method"], scope["path"]
                )
        log.warning(
            "ray serve: %s %s lost its replica %d times: 503",
            scope["method"],
            scope["path"],
            1 + self.retries,
        )
        await send_json(send, 503, LOST, [(b"retry-after", b"1")])

    async def _once(
        self, scope: Scope, messages: list[Message], receive: Receive, send: Send
    ) -> str:
        """One pass through the proxy: ``"answered"`` (a response was started, and so
        finished), ``"gone"`` (the client disconnected first) or ``"lost"`` (neither)."""
        replay = iter(list(messages))
        started = gone = False

        async def replayed() -> Message:
            nonlocal gone
            for message in replay:
                return message
            message = await receive()  # then the client's disconnect, as the proxy expects
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        timeout = self.answer_timeout_s if scope.get("path") in RESENDABLE else None
        attempt = asyncio.ensure_future(self.app(scope, replayed, tracked))
        try:
            await asyncio.wait({attempt}, timeout=timeout)
            if not attempt.done() and not started:
                log.warning(
                    "ray serve: %s %s not answered within %.1f s: treated as lost",
                    scope["method"],
                    scope["path"],
                    timeout,
                )
                attempt.cancel()
                await asyncio.wait({attempt})
                return "gone" if gone else "lost"
            await attempt  # finished, or a response is under way: its outcome
        except asyncio.CancelledError:
            raise
        except Exception:
            if started:
                raise
            log.warning("ray serve: proxy failed before responding", exc_info=True)
        finally:
            if not attempt.done():
                attempt.cancel()
        return "answered" if started else "gone" if gone else "lost"


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Any]:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names: the proxy's middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLossRetry)]


# --------------------------------------------------------------------------- replica side


class ReplicaHeader:
    """ASGI middleware: adds ``x-warmstart-replica: <id>`` to every response (nothing else)."""

    def __init__(self, app: Any, replica_id: str) -> None:
        self.app = app
        self.value = replica_id.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (REPLICA_HEADER, self.value)],
                }
            await send(message)

        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


class WarmstartReplica:
    """One Serve replica: a whole ``Server``; models arrive through ``reconfigure``.

    The init arguments never change between reloads (the server config without its model
    paths), so a new ``user_config`` is a lightweight in-place update, not a replica restart.
    """

    def __init__(self, config: ServeConfig, admin_token: str | None = None) -> None:
        from ray import serve

        self.server = Server(dataclasses.replace(config, models=NO_MODELS), admin_token)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.http_app: Any = None  # (`app` is the Serve wrapper's)

    def __serve_build_asgi_app__(self) -> Any:
        self.http_app = create_app(self.server)
        reload_on_every_replica(self.http_app, self.server)
        return ReplicaHeader(self.http_app, self.replica_id)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load (at start) or swap in (on a rolling reload) the models named by user_config."""
        paths = ModelPaths(**user_config.get("models", {}))
        if paths != self.server.config.models:
            result = await self.server.reload(paths)
            log.warning(
                "replica %s: models %s (reload %d)", self.replica_id, paths, result["reloads"]
            )

    async def check_health(self) -> None:
        """Serve's health check: the app's own ``GET /readyz`` must answer 200."""
        import httpx

        transport = httpx.ASGITransport(app=self.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            r = await client.get("/readyz")
        if r.status_code != 200:
            raise RuntimeError(f"replica {self.replica_id}: /readyz answered {r.status_code}")


def reload_on_every_replica(app: Any, server: Server) -> None:
    """``POST /v1/admin/reload`` (same body, auth and answer) reloads every replica, not only
    the one that got the request: it asks the driver's ``ReloadAgent`` for a rolling reload."""
    from fastapi import Header

    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != RELOAD_PATH]

    @app.post(RELOAD_PATH, responses={401: {}, 403: {}})  # the schema of app.py's route
    async def reload(body: ReloadBody, authorization: str | None = Header(None)) -> Any:
        import ray

        _check_admin(server, authorization)
        try:
            agent = ray.get_actor(AGENT_NAME, namespace=AGENT_NAMESPACE)
        except ValueError:
            raise ApiError(409, NO_AGENT) from None
        try:
            return await agent.reload.remote(body.model_dump())
        except ray.exceptions.RayTaskError as err:
            raise ApiError(422, str(err.cause)) from None


class ReloadAgent:
    """Held beside the deployment (``deploy`` starts it): rolling reloads on request of a
    replica's admin route or of the driver, one at a time. It keeps the deployment object the
    driver built, so a reload changes ``user_config`` only (an in-place ``reconfigure``; any
    other difference, e.g. a runtime environment computed here, would restart the replicas)."""

    def __init__(
        self,
        deployment: Any,
        init_args: tuple[Any, ...],
        models: ModelPaths,
        ray_config: RayServeConfig,
    ) -> None:
        self.deployment, self.init_args = deployment, init_args
        self.models, self.ray_config = models, ray_config
        self.reloads = 0

    def reload(self, models: dict[str, str | None]) -> dict[str, Any]:
        """New paths for the given fields (``None`` keeps the current one); raises on bad paths."""
        current = dataclasses.asdict(self.models)
        paths = ModelPaths(**{k: models.get(k) or v for k, v in current.items()})
        _check_paths(paths)
        user_config = {"models": dataclasses.asdict(paths)}
        app = self.deployment.options(user_config=user_config).bind(*self.init_args)
        _run(app, self.ray_config, 120.0)
        self.models, self.reloads = paths, self.reloads + 1
        return {"models": dataclasses.asdict(paths), "reloads": self.reloads}


def _runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray workers (proxy and replicas) import this checkout's ``warmstart``; the proxy loads
    ``proxy_middlewares``; torch in a replica uses the threads its config sets."""
    src = str(Path(warmstart.__file__).resolve().parents[1])
    # the same value in the driver and inside Ray workers (whose PYTHONPATH is this one):
    # a changed runtime_env would make a reload restart the replicas instead of reconfiguring
    parts = [src, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in parts if p))
    env = {"PYTHONPATH": pythonpath, PROXY_CALLBACK_ENV: PROXY_CALLBACK, "OMP_NUM_THREADS": "1"}
    return {"env_vars": {**env, **(extra_env or {})}}


def absolute_paths(config: ServeConfig) -> ServeConfig:
    """Relative artifact and LMDB paths resolved here (replicas run in another directory)."""

    def resolve(path: str | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    models = ModelPaths(*(resolve(p) for p in dataclasses.astuple(config.models)))
    store = dataclasses.replace(config.store, lmdb_path=resolve(config.store.lmdb_path))
    return dataclasses.replace(config, models=models, store=store)


def application(
    config: ServeConfig, ray_config: RayServeConfig, admin_token: str | None = None
) -> Any:
    """The bound Serve application (no cluster needed to build it)."""
    deployment, init_args = _deployment(config, ray_config, admin_token)
    return deployment.bind(*init_args)


def _deployment(
    config: ServeConfig, ray_config: RayServeConfig, admin_token: str | None
) -> tuple[Any, tuple[Any, ...]]:
    """The Serve deployment and its init arguments (constant across reloads)."""
    from ray import serve

    config = absolute_paths(config)
    options = serve.deployment(
        name="warmstart",
        num_replicas=ray_config.replicas,
        ray_actor_options={"num_cpus": ray_config.num_cpus, "runtime_env": _runtime_env()},
        max_ongoing_requests=ray_config.max_ongoing_requests,
        health_check_period_s=ray_config.health_check_period_s,
        health_check_timeout_s=ray_config.health_check_timeout_s,
        graceful_shutdown_timeout_s=ray_config.graceful_shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        user_config={"models": dataclasses.asdict(config.models)},
        logging_config=QUIET,
    )
    deployment = options(serve.ingress()(WarmstartReplica))
    init_config = dataclasses.replace(config, models=NO_MODELS)
    # Serve gives a deployment run from Python a random code version on every serve.run, so
    # any redeploy would restart every replica; a version fixed by what replicas are built
    # from makes a new user_config (the models) an in-place reconfigure instead. (Serve reads
    # this private attribute as the code version; it has no public setting for it.)
    built_from = repr((init_config, ray_config, _runtime_env(), warmstart.__file__))
    deployment._version = hashlib.sha256(built_from.encode()).hexdigest()[:16]
    return deployment, (init_config, admin_token)


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for Ray's own CLI (``serve run`` / ``serve deploy`` of a YAML file).

    ``args``: ``config`` (path of the server JSON), optional ``replicas`` and ``num_cpus``;
    the YAML's ``deployments`` section may override replicas, resources and ``user_config``.
    """
    unknown = sorted(set(args) - {"config", "replicas", "num_cpus"})
    if unknown:
        raise ValueError(f"app_builder: unknown args {unknown}; allowed config, replicas, num_cpus")
    config = ServeConfig.from_file(args["config"]) if args.get("config") else ServeConfig()
    fields = {k: args[k] for k in ("replicas", "num_cpus") if k in args}
    token = os.environ.get(config.admin_token_env) or None
    return application(config, RayServeConfig(**fields), token)


# --------------------------------------------------------------------------- driver side


def start_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Start (``address=None``) or join a Ray cluster with the runtime environment above.

    Serve's proxy and controller take the environment of the job that starts Serve, so call
    this before ``deploy`` in the process that starts Serve.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"runtime_env": _runtime_env(), "log_to_driver": False}
    if address is None:  # "local": a new cluster, never one another user `ray start`ed here
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(address=address or "local", **kwargs)


def deploy(
    config: ServeConfig,
    ray_config: RayServeConfig,
    admin_token: str | None = None,
    timeout_s: float = 120.0,
) -> str:
    """Start Serve's proxy on ``config.host:port`` and run the replicas; returns the base URL.

    Waits until every replica is running (loaded its models), at most ``timeout_s``.
    """
    from ray import serve

    if config.models.coldnas is None and config.models.retriever is None:
        raise ValueError("models: nothing to serve (set models.coldnas/mf or models.retriever)")
    import ray

    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=QUIET)
    _run(application(config, ray_config, admin_token), ray_config, timeout_s)
    _kill_agent()
    agent = ray.remote(num_cpus=0)(ReloadAgent).options(
        name=AGENT_NAME,
        namespace=AGENT_NAMESPACE,
        lifetime="detached",  # a non-detached one dies with its handle; shutdown() ends it
        runtime_env=_runtime_env(),
    )
    deployment, init_args = _deployment(config, ray_config, admin_token)
    agent.remote(deployment, init_args, absolute_paths(config).models, ray_config)
    return f"http://{config.host}:{config.port}"


def reload_models(models: ModelPaths | dict[str, str | None]) -> dict[str, Any]:
    """Rolling reload through the deployed ``ReloadAgent`` (what the admin route does)."""
    import ray

    if isinstance(models, ModelPaths):
        models = dataclasses.asdict(models)
    models = {k: None if v is None else str(Path(v).resolve()) for k, v in models.items()}
    agent = ray.get_actor(AGENT_NAME, namespace=AGENT_NAMESPACE)
    return dict(ray.get(agent.reload.remote(models)))


def rolling_reload(
    config: ServeConfig,
    ray_config: RayServeConfig,
    admin_token: str | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Swap every replica to ``config.models`` in place (a new ``user_config``); no request
    fails: each replica serves on its old models until the new ones are loaded.

    Paths that do not exist here are refused before anything changes (a replica that cannot
    load its models is restarted by Serve, and would fail again).
    """
    _check_paths(absolute_paths(config).models, config.recommend.recommender)
    _run(application(config, ray_config, admin_token), ray_config, timeout_s)


def _check_paths(models: ModelPaths, recommender: str = "auto") -> None:
    optional = set() if recommender == "knn" else {"knn"}  # auto falls back without one
    missing = [
        p
        for name, p in dataclasses.asdict(models).items()
        if p and name not in optional and not Path(p).exists()
    ]
    if missing:
        raise ValueError(f"rolling reload: model paths do not exist: {missing}")


def _run(app: Any, ray_config: RayServeConfig, timeout_s: float) -> None:
    import time

    from ray import serve

    # submitted without waiting (the controller marks the application DEPLOYING at once),
    # then its status is polled with a bound: serve.run would wait without one
    target = serve.RunTarget(app, name=ray_config.app_name, route_prefix="/")
    serve.run_many([target], wait_for_applications_running=False)
    end = time.monotonic() + timeout_s
    while True:  # the controller offers no event to await: poll the application's status
        status = serve.status().applications.get(ray_config.app_name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            why = {n: d.message for n, d in status.deployments.items() if d.message}
            raise RuntimeError(f"ray serve: {ray_config.app_name} {status.status}: {why}")
        if time.monotonic() > end:
            raise RuntimeError(
                f"ray serve: {ray_config.app_name} not running after {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def replica_actors(app_name: str = "warmstart") -> dict[str, Any]:
    """The application's live replica actors by replica id (for operations and chaos tests);
    the id is what the ``x-warmstart-replica`` header carries."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#"
    names = ray.util.list_named_actors(all_namespaces=True)
    return {
        a["name"].rsplit("#", 1)[-1]: ray.get_actor(a["name"], namespace=a["namespace"])
        for a in names
        if a["name"].startswith(prefix)
    }  # (a named actor's name is its only link to the replica id)


def shutdown() -> None:
    """Stop Serve (replicas drain) and the Ray cluster this process started or joined."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            _kill_agent()
            serve.shutdown()
        finally:
            ray.shutdown()


def _kill_agent() -> None:
    import contextlib

    import ray

    with contextlib.suppress(ValueError):  # ValueError: none deployed
        ray.kill(ray.get_actor(AGENT_NAME, namespace=AGENT_NAMESPACE))
