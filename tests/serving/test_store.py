"""Tiered store: LRU byte bound, read-through, write-back, LMDB persistence, Redis degradation."""

from __future__ import annotations

import logging

import pytest

from warmstart.serving.store import LMDBTier, MemoryTier, RedisTier, TieredStore, build_store


def kv(i: int, size: int = 10) -> tuple[bytes, bytes]:
    return f"k{i:04d}".encode(), bytes([i % 256]) * size


def test_memory_lru_is_bounded_in_bytes_and_evicts_least_recent():
    tier = MemoryTier(max_bytes=10 * (5 + 10 + 100))  # exactly ten entries
    tier.put_many([kv(i) for i in range(10)])
    assert len(tier) == 10 and tier.nbytes <= tier.max_bytes
    tier.get_many([kv(0)[0]])  # touch k0: now the most recent
    tier.put_many([kv(10), kv(11)])
    assert tier.nbytes <= tier.max_bytes and tier.evictions == 2
    assert tier.get_many([kv(0)[0], kv(1)[0], kv(2)[0], kv(11)[0]]) == [
        kv(0)[1],
        None,
        None,
        kv(11)[1],
    ]
    tier.put_many([(b"huge", b"x" * 10_000)])  # larger than the tier: not cached, nothing lost
    assert tier.get_many([b"huge"]) == [None] and len(tier) == 10


def test_memory_overwrite_keeps_the_byte_count_exact():
    tier = MemoryTier(max_bytes=1000, entry_overhead=0)
    tier.put_many([(b"a", b"x" * 100)])
    tier.put_many([(b"a", b"y" * 10)])
    assert tier.nbytes == 11 and tier.get_many([b"a"]) == [b"y" * 10]


def test_read_through_fills_faster_tiers_and_counts_hits(tmp_path):
    memory, disk = MemoryTier(1 << 20), LMDBTier(tmp_path / "db")
    disk.put_many([kv(1), kv(2)])
    store = TieredStore([memory, disk])
    assert store.get_many([kv(1)[0], kv(3)[0]]) == [kv(1)[1], None]
    assert memory.get_many([kv(1)[0]]) == [kv(1)[1]]  # filled on the way up
    store.get_many([kv(1)[0]])
    stats = store.snapshot()
    assert stats["memory"]["hits"] == 1 and stats["memory"]["misses"] == 2
    assert stats["lmdb"]["hits"] == 1 and stats["lmdb"]["misses"] == 1
    store.close()


def test_write_back_reaches_every_tier_after_flush(tmp_path):
    store = build_store(1 << 20, lmdb_path=tmp_path / "db")
    store.put_many([kv(i) for i in range(50)])
    store.flush()
    disk = store.tiers[1]
    assert disk.get_many([kv(i)[0] for i in range(50)]) == [kv(i)[1] for i in range(50)]
    store.close()


def test_write_back_queue_full_writes_synchronously(tmp_path):
    store = TieredStore([MemoryTier(1 << 20), LMDBTier(tmp_path / "db")], write_queue=1)
    for i in range(20):  # far more batches than the queue holds: none may be lost
        store.put_many([kv(i)])
    store.flush()
    assert None not in store.tiers[1].get_many([kv(i)[0] for i in range(20)])
    store.close()


def test_lmdb_survives_reopening(tmp_path):
    tier = LMDBTier(tmp_path / "db")
    tier.put_many([kv(i) for i in range(5)])
    tier.close()
    again = LMDBTier(tmp_path / "db")
    assert again.get_many([kv(i)[0] for i in range(6)]) == [kv(i)[1] for i in range(5)] + [None]
    assert len(again) == 5
    again.close()


def test_store_needs_distinct_tiers():
    with pytest.raises(ValueError, match="at least one"):
        TieredStore([])
    with pytest.raises(ValueError, match="distinct"):
        TieredStore([MemoryTier(10), MemoryTier(10)])


@pytest.mark.redis
def test_redis_tier_shares_state_between_stores(redis_server, tmp_path):
    a = TieredStore([MemoryTier(1 << 20, name="mem"), RedisTier(redis_server.url)])
    b = TieredStore([MemoryTier(1 << 20, name="mem"), RedisTier(redis_server.url)])
    a.put_many([kv(1)])
    a.flush()
    assert b.get_many([kv(1)[0]]) == [kv(1)[1]]
    assert b.snapshot()["redis"]["hits"] == 1
    a.close()
    b.close()


@pytest.mark.redis
def test_redis_down_degrades_once_and_reconnects(redis_server, caplog):
    clock = [0.0]
    tier = RedisTier(redis_server.url, retry_s=5.0, clock=lambda: clock[0])
    tier.put_many([kv(1)])
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="warmstart.serving.store"):
        for _ in range(20):  # every call answers (misses), none raises
            assert tier.get_many([kv(1)[0]]) == [None]
            tier.put_many([kv(2)])
    assert not tier.available and tier.degradations == 1
    assert sum("unreachable" in r.message for r in caplog.records) == 1
    redis_server.start()
    assert tier.get_many([kv(3)[0]]) == [None]  # still inside retry_s: not tried yet
    clock[0] += 6.0
    tier.put_many([kv(3)])
    assert tier.available and tier.get_many([kv(3)[0]]) == [kv(3)[1]]
    tier.close()
