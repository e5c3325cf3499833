"""Capacity that speaks up (issue 16): what a full reflex table does, and says.

``reflex_eviction="evict"`` (the default) pushes the weakest reflex out and counts it
(``reflex_evictions_total``, a Prometheus counter), logging once per batch that did;
``"refuse"`` raises QuotaExceededError before anything of the batch is written.
``store.resize_reflexes(n)`` changes the capacity as one logged batch."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from conftest import make_tokens
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import ngstore
from ngstore.records import CONNECTION_DTYPE


def conns(n: int, start: int = 0) -> np.ndarray:
    c = np.zeros(n, CONNECTION_DTYPE)
    c["token_a"] = np.arange(start, start + n)
    c["token_b"] = c["token_a"] + 1
    c["confidence"] = 230
    c["mutability"] = ngstore.Mutability.LEARNABLE
    return c


def states(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8)).astype(np.float32)


def put(s: ngstore.Store, st: np.ndarray, c: np.ndarray, **extra) -> int:
    with s.batch() as b:
        b.put_reflexes(st, c)
        if "tokens" in extra:
            b.put_tokens(extra["tokens"])
        if "delete" in extra:
            b.delete_reflexes(*extra["delete"])
    assert b.position is not None
    return b.position


def scrape(s: ngstore.Store, name: str) -> float:
    from prometheus_client import generate_latest

    reg = CollectorRegistry()
    reg.register(s.metrics_collector())
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for sample in fam.samples:
            if sample.name == name:
                return float(sample.value)
    raise KeyError(name)


# -- refuse ---------------------------------------------------------------------------------

def test_refuse_raises_before_anything_is_written_once_the_table_is_full(store_path):
    with ngstore.open(store_path, reflex_capacity=100, reflex_eviction="refuse") as s:
        full = states(100, 0)
        put(s, full, conns(100))
        before = s.stats()
        with pytest.raises(ngstore.QuotaExceededError) as exc:
            put(s, states(1, 1), conns(1, 1000), tokens=make_tokens([7]))
        assert exc.value.quota == "reflex_capacity" and "resize_reflexes" in str(exc.value)
        after = s.stats()
        assert after["wal_position"] == before["wal_position"]  # not logged: the whole batch refused
        assert after["reflexes_live"] == 100 and 7 not in s and after["reflex_evictions_total"] == 0
        assert after["quota_exceeded_total"] == before["quota_exceeded_total"] + 1
        put(s, full[:10], conns(10))  # upserts of reflexes it holds push nothing out: accepted
        assert s.stats()["reflexes_live"] == 100
        assert s.check().ok
    with ngstore.open(store_path) as s:
        assert s.stats()["reflexes_live"] == 100


def test_refuse_also_refuses_a_fifth_reflex_in_a_full_cell(store_path):
    with ngstore.open(store_path, reflex_eviction="refuse") as s:
        one = np.repeat(states(1, 2), 5, axis=0)  # one state, five identities: a cell holds four
        put(s, one[:4], conns(4))
        with pytest.raises(ngstore.QuotaExceededError, match="cell holds 4"):
            put(s, one[4:], conns(1, 10))
        assert s.stats()["reflexes_live"] == 4


def test_refuse_counts_a_delete_earlier_in_the_same_batch_as_room(store_path):
    with ngstore.open(store_path, reflex_capacity=50, reflex_eviction="refuse") as s:
        full = states(50, 3)
        put(s, full, conns(50))
        with pytest.raises(ngstore.QuotaExceededError):  # a delete after the puts frees nothing for them
            put(s, states(2, 4), conns(2, 500), delete=(full[:2], conns(2)))
        with s.batch() as b:  # the deletes first: planned on a copy of the table, in order
            b.delete_reflexes(full[:2], conns(2))
            b.put_reflexes(states(2, 4), conns(2, 500))
        assert s.stats()["reflexes_live"] == 50 and s.stats()["reflex_evictions_total"] == 0


def test_refuse_holds_for_concurrent_committers_grouped_together(store_path):
    with ngstore.open(store_path, reflex_capacity=64, reflex_eviction="refuse") as s:
        refused = []

        def work(t: int) -> None:
            for j in range(10):
                try:
                    put(s, states(2, 100 + 10 * t + j), conns(2, 1000 * t + 10 * j))
                except ngstore.QuotaExceededError:
                    refused.append((t, j))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        st = s.stats()
        assert st["reflex_evictions_total"] == 0
        assert st["reflexes_live"] == 64 and len(refused) == 80 - 32


def test_evict_is_the_default_and_refuse_is_chosen_per_open(store_path):
    with ngstore.open(store_path, reflex_capacity=10) as s:
        assert s.options.reflex_eviction == "evict"
        put(s, states(10, 5), conns(10))
    with ngstore.open(store_path, reflex_eviction="refuse") as s, pytest.raises(ngstore.QuotaExceededError):
        put(s, states(1, 6), conns(1, 100))
    with pytest.raises(ngstore.InvalidArgumentError, match="reflex_eviction"):
        ngstore.open(store_path, reflex_eviction="drop")


# -- evict: counted, logged once per batch ------------------------------------------------------

def test_evictions_are_counted_in_a_metric_and_logged_once_per_batch(store_path, caplog):
    with ngstore.open(store_path, reflex_capacity=100, tracing=False) as s:
        put(s, states(100, 7), conns(100))
        assert scrape(s, "neurograph_reflex_evictions_total") == 0
        caplog.set_level(logging.WARNING, logger="ngstore")
        first = put(s, states(30, 8), conns(30, 1000))  # 30 new reflexes into a full table
        second = put(s, states(5, 9), conns(5, 2000))
        st = s.stats()
        assert st["reflexes_live"] == 100 and st["reflex_evictions_total"] == 35
        assert scrape(s, "neurograph_reflex_evictions_total") == 35
        logged = [r.getMessage() for r in caplog.records if "pushed" in r.getMessage()]
        assert len(logged) == 2  # one line per batch, not one per eviction
        assert f"log position {first} pushed 30" in logged[0] and f"log position {second} pushed 5" in logged[1]
        events = [e for e in s.obs.blackbox.get_events() if e["event_type"] == "reflex_evicted"]
        fields = [dict(e["data"]) for e in events]  # the dump's shape: [key, value as text] pairs
        assert [(f["position"], f["count"]) for f in fields] == [(str(first), "30"), (str(second), "5")]


# -- resize -----------------------------------------------------------------------------------

def test_resize_makes_room_as_a_logged_batch_and_persists(store_path):
    with ngstore.open(store_path, reflex_capacity=100, reflex_eviction="refuse") as s:
        put(s, states(100, 10), conns(100))
        memory = s.stats()["memory_reflex_table_bytes"]
        wal = s.stats()["wal_position"]
        s.resize_reflexes(1000)
        st = s.stats()
        assert st["wal_position"] == wal + 1 and st["reflex_capacity"] == 1000
        assert st["memory_reflex_table_bytes"] == memory  # memory follows the reflexes, not the capacity
        put(s, states(400, 11), conns(400, 1000))
        assert s.stats()["reflexes_live"] == 500 and s.stats()["reflex_evictions_total"] == 0
        with pytest.raises(ngstore.InvalidArgumentError, match="holds 500"):
            s.resize_reflexes(499)
        for bad in (0, -1, 1 << 33, 2.5, True):
            with pytest.raises(ngstore.InvalidArgumentError):
                s.resize_reflexes(bad)
        s.resize_reflexes(500)  # down to the live count: nothing lost, the allocation fits it
        assert s.stats()["reflex_capacity"] == 500 and s.stats()["reflexes_live"] == 500
        assert s.check().ok
    with ngstore.open(store_path) as s:
        assert s.stats()["reflex_capacity"] == 500 and s.stats()["reflexes_live"] == 500


def test_resize_before_the_first_reflex_sets_the_capacity_the_table_is_made_with(store_path):
    with ngstore.open(store_path, reflex_capacity=10) as s:
        s.resize_reflexes(20)
        assert s.reflex_table() is None and s.stats()["reflex_capacity"] == 20
    with ngstore.open(store_path) as s:
        assert s.stats()["reflex_capacity"] == 20
        put(s, states(20, 12), conns(20))
        assert s.reflex_table().capacity == 20 and s.stats()["reflex_evictions_total"] == 0


def test_a_reader_is_refused_a_resize(store_path):
    ngstore.open(store_path).close()
    with ngstore.open(store_path, readonly=True) as r, pytest.raises(ngstore.NgStoreError, match="read-only"):
        r.resize_reflexes(10)
