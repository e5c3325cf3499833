"""The reflex table's memory is counted and follows its reflexes (issue 16's C side).

``IntuitionEngine.with_defaults()`` used to allocate a 1,048,576-reflex table (128 MiB of
RSS) before any reflex existed. The table now starts with room for a few dozen reflexes and
grows by rebuilding, and ``memory_bytes`` reports what it occupies."""
from __future__ import annotations

import os

import numpy as np

import ngstore
from ngstore.records import CONNECTION_DTYPE
from ngstore.reflex import ReflexTable


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _conns(n: int) -> np.ndarray:
    c = np.zeros(n, CONNECTION_DTYPE)
    c["token_a"] = np.arange(n)
    c["token_b"] = np.arange(n) + 1
    c["confidence"] = 230
    c["mutability"] = 1
    return c


def test_with_defaults_stays_small_until_reflexes_arrive():
    before = _rss_bytes()
    engines = [ngstore.IntuitionEngine.with_defaults() for _ in range(4)]
    grown = _rss_bytes() - before
    for e in engines:
        t = e.table
        assert t is not None and t.capacity == 1 << 20 and len(t) == 0
        assert t.memory_bytes < 16 * 1024
    assert grown < 32 * 2**20  # four engines; the old table alone was 128 MiB each
    e = engines[0]
    rng = np.random.default_rng(0)
    e.consolidate_reflex(rng.uniform(-1, 1, (10, 8)).astype(np.float32), _conns(10))
    assert e.table.memory_bytes < 16 * 1024
    e.consolidate_reflex(rng.uniform(-1, 1, (10_000, 8)).astype(np.float32), _conns(10_000))
    t = e.table
    assert len(t) == 10_010 and t.room < 2 * len(t) + 64
    assert t.memory_bytes < 2 * len(t) * (128 + 8 * 4 / 3) + 16 * 1024  # at most twice what the reflexes need


def test_memory_bytes_follows_growth_and_resize():
    t = ReflexTable.create(100_000)
    small = t.memory_bytes
    rng = np.random.default_rng(1)
    t.insert_batch(rng.uniform(-1, 1, (50_000, 8)).astype(np.float32), _conns(50_000))
    big = t.memory_bytes
    assert big > 50_000 * 128 > 100 * small
    segments = sum(len(s) for s in t.all_segments())
    assert segments + 256 < big < segments + 256 + 64 * 1024  # + the header and the C handle
    t.resize(50_000)  # fits the allocation to the live reflexes
    assert t.memory_bytes <= big and len(t) == 50_000


def test_a_store_engine_stays_small_until_reflexes_arrive(tmp_path):
    with ngstore.open(str(tmp_path / "store"), event_capacity=1000) as s:
        before = _rss_bytes()
        engine = s.intuition()  # the store's engine: its reflexes are the store's
        assert engine.table is None and s.stats()["memory_reflex_table_bytes"] == 0
        assert _rss_bytes() - before < 8 * 2**20
        rng = np.random.default_rng(2)
        engine.consolidate_reflex(rng.uniform(-1, 1, (10, 8)).astype(np.float32), _conns(10))
        st = s.stats()
        assert st["reflexes_live"] == 10 and st["reflex_capacity"] == 65_536
        assert st["memory_reflex_table_bytes"] == engine.table.memory_bytes < 16 * 1024
        engine.consolidate_reflex(rng.uniform(-1, 1, (10_000, 8)).astype(np.float32), _conns(10_000))
        t = engine.table
        assert len(t) == 10_010 and s.stats()["memory_reflex_table_bytes"] == t.memory_bytes
        assert t.memory_bytes < 2 * len(t) * (128 + 8 * 4 / 3) + 16 * 1024
    with ngstore.open(str(tmp_path / "store")) as s:  # reopened: the table is mapped, the same size
        assert s.stats()["memory_reflex_table_bytes"] == t.memory_bytes
