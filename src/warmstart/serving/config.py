"""The server's configuration: one JSON file, validated on load with errors naming the field.

Every section is optional; the defaults below are the documented default config (it points at
the artifacts the README's commands write). Example::

    {
      "host": "127.0.0.1", "port": 8000,
      "models": {"coldnas": "runs/serve/coldnas", "mf": "runs/serve/mf", "retriever": null},
      "store": {"memory_mb": 64, "lmdb_path": "runs/serve/lmdb", "redis_url": null},
      "compute": {"workers": 1, "intra_op_threads": 1, "io_workers": 2},
      "recommend": {"n_candidates": 500, "adapt": {"max_batch": 32, "max_wait_s": 0.001}},
      "search": {"rerank_n": 5},
      "admission": {"deadline_ms": 100}
    }
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from warmstart.serving.admission import AdmissionConfig
from warmstart.serving.engine import StageConfig
from warmstart.serving.pipelines import RecommendConfig, SearchConfig
from warmstart.serving.trafficlog import TrafficLogConfig

C = TypeVar("C")


@dataclass(frozen=True)
class ModelPaths:
    """Artifact directories (``None`` disables the pipeline that needs them)."""

    coldnas: str | None = "runs/serve/coldnas/seed0/model"
    mf: str | None = "runs/serve/mf"
    retriever: str | None = None
    knn: str | None = "runs/serve/knn"


@dataclass(frozen=True)
class StoreConfig:
    """Attributes:
    memory_mb: in-process LRU tier size.
    lmdb_path: local LMDB tier (``None``: no LMDB tier).
    redis_url: shared Redis tier (``None``: none).
    redis_retry_s: seconds between reconnect attempts while Redis is down.
    """

    memory_mb: float = 64.0
    lmdb_path: str | None = "runs/serve/lmdb"
    redis_url: str | None = None
    redis_retry_s: float = 1.0

    def __post_init__(self) -> None:
        if self.memory_mb < 0:
            raise ValueError(f"store.memory_mb must be >= 0, got {self.memory_mb}")


@dataclass(frozen=True)
class ComputeConfig:
    """Attributes:
    workers: model threads (each runs one batch at a time).
    intra_op_threads: torch threads per model call (fixed at start-up).
    io_workers: threads for store I/O.
    nice: niceness of the model threads relative to the event loop (Linux per-thread
        priority; 0 = equal): the loop keeps admitting and refusing at once while a batch runs.
        0 by default: a niced model thread also loses the core to every other process on it,
        so use it only where the server has its cores to itself.
    switch_interval_ms: the interpreter's GIL switch interval (``sys.setswitchinterval``; 5 ms
        by default in CPython): how long the event loop may wait for the GIL while a model
        thread runs Python code between torch calls. Set once at start-up.
    gc_freeze: when the server owns its process (``warmstart serve``), collect once after the
        models are loaded (and after a reload) and move every object then alive out of the
        cyclic garbage collector's reach (``gc.freeze``): its full collections then scan only
        what requests allocate, not the models' and libraries' ~240,000 objects (a full
        collection of those held the GIL for 110-170 ms of CPU every ~10 s under load, and every
        request arriving meanwhile, refusals included, waited for it).
    keep_freed_mb: when the server owns its process, keep up to this many MB of freed heap
        memory per malloc arena for reuse, and serve blocks below 32 MiB from the heap (glibc
        ``mallopt``; ``serving.memory``), so a scoring pass reuses warm pages instead of
        faulting in fresh ones (~42 page faults per ML-1M recommend request with glibc's
        defaults, ~0.5 with this). ``0`` leaves the allocator as it is; ignored off glibc.
    loop_yield_ms: where the event loop shares a core with the model threads (the process
        may run on fewer CPUs than ``workers * intra_op_threads + 1``), the loop sleeps this
        long after taking in a request or handing a batch to the pool while a batch is still
        running (``ComputePool.yield_loop``): the batch keeps the core for that slice and the
        loop then reads the requests that arrived meanwhile in one pass. ``0`` (the default)
        never; with a core of its own the loop never sleeps. Measured on one core at 700
        requests/s: 1 ms cut the core's CPU per answer by 7-9% but raised the p99 from
        18-33 ms to 28-65 ms (fuller batches take longer), and capacity is bounded by the p99,
        so it is off unless CPU matters more than latency.
    """

    workers: int = 1
    intra_op_threads: int = 1
    io_workers: int = 2
    nice: int = 0
    switch_interval_ms: float = 0.5
    gc_freeze: bool = True
    keep_freed_mb: int = 256
    loop_yield_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.loop_yield_ms <= 20:
            raise ValueError(f"compute.loop_yield_ms must lie in [0, 20], got {self.loop_yield_ms}")
        if self.keep_freed_mb < 0:
            raise ValueError(f"compute.keep_freed_mb must be >= 0, got {self.keep_freed_mb}")
        for name in ("workers", "intra_op_threads", "io_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"compute.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.switch_interval_ms <= 100:
            raise ValueError(
                f"compute.switch_interval_ms must lie in (0, 100], got {self.switch_interval_ms}"
            )
        if not 0 <= self.nice <= 19:
            raise ValueError(f"compute.nice must lie in [0, 19], got {self.nice}")


@dataclass(frozen=True)
class ServeConfig:
    """The whole server.

    Attributes:
        host / port: bind address (loopback by default; expose deliberately).
        admin_token_env: environment variable holding the admin bearer token (read by the CLI);
            admin routes are disabled when it is unset.
        drain_s: how long shutdown waits for in-flight requests.
        traffic_log: per-stage timings for the planner (off unless ``traffic_log.path``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    models: ModelPaths = field(default_factory=ModelPaths)
    store: StoreConfig = field(default_factory=StoreConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    admin_token_env: str = "WARMSTART_ADMIN_TOKEN"
    drain_s: float = 10.0
    traffic_log: TrafficLogConfig = field(default_factory=TrafficLogConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must lie in [0, 65536), got {self.port}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        config = _build(cls, data, "")
        # one admission section for both pipelines unless a pipeline sets its own
        rec = config.recommend
        if "admission" not in data.get("recommend", {}):
            rec = dataclasses.replace(rec, admission=config.admission)
        search = config.search
        if "admission" not in data.get("search", {}):
            search = dataclasses.replace(search, admission=config.admission)
        return dataclasses.replace(config, recommend=rec, search=search)

    @classmethod
    def from_file(cls, path: Path | str) -> ServeConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {err.lineno}: {err.msg}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a JSON object")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NESTED: dict[str, type] = {
    "models": ModelPaths,
    "store": StoreConfig,
    "compute": ComputeConfig,
    "recommend": RecommendConfig,
    "search": SearchConfig,
    "admission": AdmissionConfig,
    "traffic_log": TrafficLogConfig,
    "lookup": StageConfig,
    "adapt": StageConfig,
    "candidates": StageConfig,
    "rank": StageConfig,
    "encode": StageConfig,
    "index": StageConfig,
    "rerank": StageConfig,
}


def _build(cls: type[C], data: Any, where: str) -> C:
    """``cls(**data)`` with nested sections built recursively; unknown keys name the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected an object, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{where or 'config'}: unknown field(s) {unknown}; allowed {sorted(fields)}"
        )
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        nested = _NESTED.get(key)
        kwargs[key] = _build(nested, value, name) if nested is not None else value
    return cls(**kwargs)
