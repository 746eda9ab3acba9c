"""Tiered key-value store: in-process memory → local LMDB → shared Redis.

JIZHI (Liu et al., KDD 2021, arXiv 2106.01674) keeps sparse parameters and intermediate results
in heterogeneous, hierarchical storage: hot entries next to compute, warm ones on local fast
storage, the full table in a shared store. Each tier here offers the same two calls (the
``lookup``/``update`` pool shape of torchrec)::

    tier.get_many(keys) -> [value or None, ...]     # same length and order as keys
    tier.put_many([(key, value), ...])

``TieredStore`` composes tiers, fastest first. Reads go down until every key is found and fill
the faster tiers with what a slower tier returned (read-through). Writes go to the first tier at
once and to the slower tiers from a background writer (write-back), bounded: when its queue is
full the caller writes synchronously, so memory stays bounded. Keys and values are ``bytes``.

All calls block (LMDB and Redis do I/O), so the server calls them from a thread, never from the
event loop. A Redis tier that cannot be reached answers every key as a miss and drops writes,
logs the degradation once, and tries to reconnect every ``retry_s`` seconds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

Pair = tuple[bytes, bytes]


class Tier(Protocol):
    """One storage tier."""

    name: str

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[Pair]) -> None: ...

    def close(self) -> None: ...


@dataclass
class TierStats:
    """Per-tier counters (keys, not calls)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, float]:
        looked = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / looked if looked else 0.0,
            "writes": self.writes,
            "errors": self.errors,
        }


# --------------------------------------------------------------------------- memory


class MemoryTier:
    """A thread-safe LRU bounded in bytes (keys + values + a fixed per-entry overhead).

    Args:
        max_bytes: capacity; the least recently used entries are evicted beyond it.
        entry_overhead: bytes charged per entry on top of key and value (dict + list slots).
    """

    def __init__(self, max_bytes: int, entry_overhead: int = 100, name: str = "memory") -> None:
        if max_bytes < 0:
            raise ValueError(f"MemoryTier.max_bytes must be >= 0, got {max_bytes}")
        self.name = name
        self.max_bytes = max_bytes
        self.entry_overhead = entry_overhead
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def _cost(self, key: bytes, value: bytes) -> int:
        return len(key) + len(value) + self.entry_overhead

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                value = self._data.get(key)
                if value is not None:
                    self._data.move_to_end(key)
                out.append(value)
        return out

    def put_many(self, items: Sequence[Pair]) -> None:
        with self._lock:
            for key, value in items:
                old = self._data.pop(key, None)
                if old is not None:
                    self._bytes -= self._cost(key, old)
                cost = self._cost(key, value)
                if cost > self.max_bytes:
                    continue  # larger than the whole tier: never cached
                self._data[key] = value
                self._bytes += cost
            while self._bytes > self.max_bytes:
                key, value = self._data.popitem(last=False)
                self._bytes -= self._cost(key, value)
                self.evictions += 1

    def close(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


# --------------------------------------------------------------------------- LMDB


class LMDBTier:
    """A local LMDB environment (embedded, memory-mapped, survives restarts).

    Args:
        path: directory of the environment (created).
        map_size: the most bytes the database may grow to (address space, not RAM).
    """

    def __init__(self, path: Path | str, map_size: int = 1 << 32, name: str = "lmdb") -> None:
        import lmdb

        self.name = name
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # writemap + no metasync: fast writes; a crash can lose the last commits, not corrupt
        self._env = lmdb.open(
            str(self.path), map_size=map_size, max_readers=256, writemap=True, metasync=False
        )

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        with self._env.begin(buffers=False) as txn:
            return [txn.get(key) for key in keys]

    def put_many(self, items: Sequence[Pair]) -> None:
        if not items:
            return
        with self._env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value)

    def __len__(self) -> int:
        return int(self._env.stat()["entries"])

    def close(self) -> None:
        self._env.close()


# --------------------------------------------------------------------------- Redis


class RedisTier:
    """A shared Redis server; unreachable → misses and dropped writes, reconnect later.

    Args:
        url: ``redis://host:port/db``.
        prefix: prepended to every key (several stores can share one server).
        timeout_s: socket connect/read timeout: a dead server costs at most this per call.
        retry_s: how long to answer "down" before trying the server again.
        ttl_s: expiry of written keys (``None``: no expiry).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: bytes = b"ws:",
        timeout_s: float = 0.05,
        retry_s: float = 1.0,
        ttl_s: int | None = None,
        name: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.name = name
        self.url = url
        self.prefix = prefix
        self.retry_s = retry_s
        self.ttl_s = ttl_s
        self.clock = clock
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # no client-side retries with back-off: a dead server must cost one timeout, and
            # this tier decides itself when to try again
            retry=Retry(NoBackoff(), 0),
        )
        self._down_until: float | None = None
        self._lock = threading.Lock()
        self.degradations = 0

    @property
    def available(self) -> bool:
        return self._down_until is None

    def _usable(self) -> bool:
        with self._lock:
            if self._down_until is None:
                return True
            if self.clock() < self._down_until:
                return False
        try:
            self._client.ping()
        except self._errors:
            with self._lock:
                self._down_until = self.clock() + self.retry_s
            return False
        with self._lock:
            self._down_until = None
        log.warning("redis tier %s: reconnected to %s", self.name, self.url)
        return True

    def _mark_down(self, err: BaseException) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self.clock() + self.retry_s
        if first:
            self.degradations += 1
            log.warning(
                "redis tier %s: %s unreachable (%s); serving from the other tiers, retrying every %.1f s",
                self.name,
                self.url,
                err,
                self.retry_s,
            )

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys or not self._usable():
            return [None] * len(keys)
        try:
            values = self._client.mget([self.prefix + k for k in keys])
        except self._errors as err:
            self._mark_down(err)
            return [None] * len(keys)
        return [v if isinstance(v, bytes) or v is None else v.encode() for v in values]

    def put_many(self, items: Sequence[Pair]) -> None:
        if not items or not self._usable():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(self.prefix + key, value, ex=self.ttl_s)
            pipe.execute()
        except self._errors as err:
            self._mark_down(err)

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- composition


class TieredStore:
    """Tiers fastest first: read-through on ``get_many``, write-back on ``put_many``.

    Args:
        tiers: e.g. ``[MemoryTier(...), LMDBTier(...), RedisTier(...)]``.
        write_queue: pending write-back batches; when full, ``put_many`` writes the slower tiers
            itself (back-pressure instead of unbounded memory).
        write_back: ``False`` writes every tier synchronously (write-through).
    """

    def __init__(
        self, tiers: Sequence[Tier], write_queue: int = 256, write_back: bool = True
    ) -> None:
        if not tiers:
            raise ValueError("TieredStore needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"TieredStore: tier names must be distinct, got {names}")
        self.tiers = list(tiers)
        self.stats = {t.name: TierStats() for t in self.tiers}
        self._pending: queue.Queue[list[Pair] | None] = queue.Queue(write_queue)
        self._writer: threading.Thread | None = None
        if write_back and len(self.tiers) > 1:
            self._writer = threading.Thread(target=self._drain, name="ws-store-writer", daemon=True)
            self._writer.start()

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of ``keys`` (``None`` where no tier has one); fills faster tiers on a hit."""
        out: list[bytes | None] = [None] * len(keys)
        missing = list(range(len(keys)))
        for depth, tier in enumerate(self.tiers):
            if not missing:
                break
            values = self._get(tier, [keys[i] for i in missing])
            found = [(i, v) for i, v in zip(missing, values, strict=True) if v is not None]
            stats = self.stats[tier.name]
            stats.hits += len(found)
            stats.misses += len(missing) - len(found)
            for i, v in found:
                out[i] = v
            if found and depth > 0:
                self._fill(depth, [(keys[i], v) for i, v in found])
            missing = [i for i, v in zip(missing, values, strict=True) if v is None]
        return out

    def put_many(self, items: Sequence[Pair]) -> None:
        """Write to the first tier now, to the others via the write-back queue."""
        items = list(items)
        if not items:
            return
        self._put(self.tiers[0], items)
        if len(self.tiers) == 1:
            return
        if self._writer is None:
            self._write_lower(items)
            return
        try:
            self._pending.put_nowait(items)
        except queue.Full:
            self._write_lower(items)

    def flush(self) -> None:
        """Block until every queued write-back has reached the slower tiers."""
        if self._writer is not None:
            self._pending.join()

    def close(self) -> None:
        if self._writer is not None:
            self._pending.put(None)
            self._writer.join()
            self._writer = None
        for tier in self.tiers:
            tier.close()

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {name: s.as_dict() for name, s in self.stats.items()}

    # ------------------------------------------------------------------ internals

    def _fill(self, depth: int, items: list[Pair]) -> None:
        for tier in self.tiers[:depth]:
            self._put(tier, items)

    def _write_lower(self, items: list[Pair]) -> None:
        for tier in self.tiers[1:]:
            self._put(tier, items)

    def _drain(self) -> None:
        while True:
            items = self._pending.get()
            try:
                if items is None:
                    return
                self._write_lower(items)
            finally:
                self._pending.task_done()

    def _get(self, tier: Tier, keys: list[bytes]) -> list[bytes | None]:
        try:
            return tier.get_many(keys)
        except Exception as err:  # a broken tier degrades to misses; counted and logged
            self.stats[tier.name].errors += 1
            log.warning("store tier %s: get_many failed (%s)", tier.name, err)
            return [None] * len(keys)

    def _put(self, tier: Tier, items: list[Pair]) -> None:
        try:
            tier.put_many(items)
        except Exception as err:
            self.stats[tier.name].errors += 1
            log.warning("store tier %s: put_many failed (%s)", tier.name, err)
            return
        self.stats[tier.name].writes += len(items)


def build_store(
    memory_bytes: int,
    lmdb_path: Path | str | None = None,
    redis_url: str | None = None,
    **redis_options: Any,
) -> TieredStore:
    """The usual composition: memory, then LMDB when a path is given, then Redis when a URL is."""
    tiers: list[Tier] = [MemoryTier(memory_bytes)]
    if lmdb_path is not None:
        tiers.append(LMDBTier(lmdb_path))
    if redis_url is not None:
        tiers.append(RedisTier(redis_url, **redis_options))
    return TieredStore(tiers)
