"""Memory that is counted (issue 16): the Guardian's byte quota and ``stats()`` count the
store's records and every large allocation it makes -- the reflex table, the overlay, the
black box, the stats page, the experience ring -- each part known before a batch is
written, and ``memory_used_bytes`` is their sum."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.guardian import RESERVATIONS
from ngstore.ops import OP_TOKEN_PUT, Op, encode_ops
from ngstore.overlay import INDEX_ENTRY_BYTES, Overlay
from ngstore.records import CONNECTION_DTYPE, TOKEN_DTYPE
from ngstore.reflex import INITIAL_ROOM, plan_room

PARTS = ("records", "reflex_table", "overlay", *RESERVATIONS)


def conns(n: int, start: int = 0) -> np.ndarray:
    c = np.zeros(n, CONNECTION_DTYPE)
    c["token_a"] = np.arange(start, start + n)
    c["token_b"] = c["token_a"] + 1
    c["confidence"] = 230
    c["mutability"] = ngstore.Mutability.LEARNABLE
    return c


def put_reflexes(s: ngstore.Store, n: int, start: int) -> None:
    with s.batch() as b:
        b.put_reflexes(np.random.default_rng(start).uniform(-1, 1, (n, 8)).astype(np.float32), conns(n, start))


def parts(st: dict) -> dict[str, int]:
    return {p: st[f"memory_{p}_bytes"] for p in PARTS}


def test_memory_used_is_the_sum_of_its_parts_and_each_part_is_what_it_says(store_path):
    with ngstore.open(store_path) as s:
        st = s.stats()
        assert st["memory_used_bytes"] == sum(parts(st).values())
        assert parts(st)["blackbox"] == s.obs.blackbox.memory_bytes == 4096 + 1000 * 256
        assert parts(st)["stats_page"] == 32768 and parts(st)["reflex_table"] == 0
        s.put_tokens(make_tokens(range(100)))
        s.put_connections(conns(10))
        s.write_events({"event_type": 1})
        put_reflexes(s, 10, 0)
        st = s.stats()
        assert parts(st)["records"] == 100 * 64 + 10 * 64 + 128
        assert parts(st)["reflex_table"] == s.reflex_table().memory_bytes > 0
        assert parts(st)["experience_ring"] == 0
        ring = s.experience()
        st = s.stats()
        assert parts(st)["experience_ring"] == ring.memory_bytes == min(s.event_capacity, 1 << 20) * 128
        assert st["memory_used_bytes"] == sum(parts(st).values())


def test_a_reader_counts_the_table_it_maps_and_its_own_black_box(store_path):
    with ngstore.open(store_path) as s:
        put_reflexes(s, 50, 0)
        table = s.reflex_table().memory_bytes
    with ngstore.open(store_path, readonly=True) as r:
        st = r.stats()
        assert parts(st)["reflex_table"] == table and parts(st)["stats_page"] == 0
        assert st["memory_used_bytes"] == sum(parts(st).values())


def test_the_byte_quota_refuses_when_the_reflex_table_would_pass_it_not_the_records(store_path):
    capacity = 1 << 16
    small = plan_room(capacity, INITIAL_ROOM)             # the table's first allocation
    grown = plan_room(capacity, 2 * small.room)           # after its first doubling
    limit = (small.memory_bytes + grown.memory_bytes) // 2  # between the two
    max_bytes = int(limit / 0.8) + 1
    with ngstore.open(store_path, max_bytes=max_bytes, max_tokens=None, observability=False,
                      reflex_capacity=capacity) as s:
        put_reflexes(s, small.room, 0)                     # fills the first allocation
        st = s.stats()
        assert parts(st)["reflex_table"] == small.memory_bytes and parts(st)["records"] == 0
        with pytest.raises(ngstore.QuotaExceededError) as exc:
            put_reflexes(s, 1, 10_000)                     # one more reflex: the table would double
        assert exc.value.quota == "max_bytes"
        assert exc.value.current == small.memory_bytes
        assert exc.value.requested == grown.memory_bytes - small.memory_bytes
        st = s.stats()
        assert st["reflexes_live"] == small.room and parts(st)["reflex_table"] == small.memory_bytes
        # records are cheap beside it: 64 bytes a token still fit
        room_left = (limit - st["memory_used_bytes"]) // 64
        assert room_left > 10
        s.put_tokens(make_tokens(range(10)))
        s.resize_reflexes(small.room)  # a resize allocates nothing: accepted at the limit
        assert s.stats()["reflex_capacity"] == small.room


def test_the_black_box_counts_against_the_quota(store_path, tmp_path):
    ring = 4096 + 1000 * 256
    max_bytes = int((ring + 32768) / 0.8)  # the black box and the stats page fill the quota
    with ngstore.open(store_path, max_bytes=max_bytes, max_tokens=None) as s, \
            pytest.raises(ngstore.QuotaExceededError):
        s.put_tokens(make_tokens(range(10)))
    with ngstore.open(str(tmp_path / "quiet"), max_bytes=max_bytes, max_tokens=None, observability=False) as s:
        s.put_tokens(make_tokens(range(10)))  # without observability there is room


def test_the_overlay_counts_its_ops_and_its_token_index():
    o = Overlay(1 << 20)
    assert o.memory_bytes == 0
    recs = np.zeros(3, TOKEN_DTYPE)
    recs["id"] = [1, 2, 3]
    raw = recs.tobytes()
    ops = [Op.of_bytes(OP_TOKEN_PUT, raw)]
    payload = encode_ops(ops)
    assert len(payload) == len(raw) + 24
    o.add(1, ops, payload, [(i, raw[64 * i:64 * i + 64]) for i in range(3)])
    assert o.memory_bytes == len(raw) + 24 + 3 * INDEX_ENTRY_BYTES
    o.drop(1)
    assert o.memory_bytes == 0


def test_a_refusal_near_the_limit_does_not_depend_on_the_applier(store_path):
    # 80 % of 64 000 = 51 200 bytes = 800 tokens; commits wait in the overlay for 10 s, and
    # their overlay memory counts -- but the exact recount applies the overlay first
    with ngstore.open(store_path, max_bytes=64_000, max_tokens=None, observability=False,
                      apply_interval=10.0) as s:
        for i in range(8):
            s.put_tokens(make_tokens(range(100 * i, 100 * i + 100)))
        assert s.count() == 800
        with pytest.raises(ngstore.QuotaExceededError):
            s.put_tokens(make_tokens([800]))
        s.put_tokens(make_tokens(range(50)))  # overwrites add nothing: counted exactly, accepted
