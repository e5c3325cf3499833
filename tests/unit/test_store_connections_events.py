"""Connections and experience events kept in the store, across reopen."""
from __future__ import annotations

import numpy as np
import pytest

import ngstore
from ngstore.connections import Connection, ConnectionArray, new_connections
from ngstore.experience import new_events


def _conns(pairs, t=0x50):
    a = np.array([p[0] for p in pairs], dtype=np.uint32)
    b = np.array([p[1] for p in pairs], dtype=np.uint32)
    arr = new_connections(a, b, t)
    arr = arr.data if isinstance(arr, ConnectionArray) else arr
    arr["pull_strength"] = 1.0
    return arr


def test_connections_round_trip_and_neighbours(store_path):
    with ngstore.open(store_path) as s:
        s.put_connections(_conns([(1, 2), (1, 3), (2, 3), (3, 3)]))
        assert s.count_connections() == 4
        assert sorted(s.neighbors(1, "out").token_b.tolist()) == [2, 3]
        assert sorted(s.neighbors(3, "in").token_a.tolist()) == [1, 2, 3]
        assert len(s.neighbors(3, "both")) == 3  # (1,3), (2,3), and the self-loop once
    with ngstore.open(store_path) as s:
        c = s.get_connection(3, 1)
        assert (c.token_a, c.token_b) == (1, 3)
        s.delete_connections([(1, 3, 0x50)])
        assert s.count_connections() == 3
        with pytest.raises(KeyError):
            s.get_connection(1, 3)
        assert s.neighbors(1, "both").token_b.tolist() == [2]


def test_several_types_per_pair_are_distinct_connections(store):
    store.put_connections(np.concatenate([_conns([(5, 6)], 0x50), _conns([(5, 6)], 0x10)]))
    assert len(store.connections_between(6, 5)) == 2
    with pytest.raises(ValueError, match="connection_type"):
        store.get_connection(5, 6)
    assert store.get_connection(5, 6, 0x10).connection_type == 0x10


def test_overwriting_a_connection_does_not_count_twice(store):
    store.put_connections(_conns([(1, 2)]))
    c = _conns([(1, 2)])
    c["confidence"] = 200
    store.put_connections(c)
    assert store.count_connections() == 1
    assert store.get_connection(1, 2).confidence_raw == 200


def test_out_of_order_connection_is_refused(store):
    c = Connection(1, 2)
    arr = c.record.copy()
    arr["token_a"], arr["token_b"] = 9, 4
    with pytest.raises(ValueError):
        store.put_connections(arr)
    assert store.count_connections() == 0


def test_invalid_connection_is_refused_with_its_reasons(store):
    c = _conns([(1, 2)])
    c["pull_strength"] = np.nan
    with pytest.raises(ngstore.ValidationError):
        store.put_connections(c)
    assert store.count_connections() == 0


def test_events_get_consecutive_sequence_numbers_and_survive_reopen(store_path):
    with ngstore.open(store_path, event_capacity=100) as s:
        first = s.write_events(new_events(30, event_type=0x201))
        assert first == 0
        assert s.write_events(new_events(5)) == 30
        stream = s.experience()
        assert stream.total_written == 35 and stream.size() == 35
    with ngstore.open(store_path) as s:
        stream = s.experience()
        assert stream.total_written == 35
        ev = stream.read(34)
        assert ev is not None and ev.sequence == 34
        assert stream.write_event({"event_type": 0x201}) == 35
        assert s.stats()["events_written_total"] == 36


def test_event_retention_trims_the_oldest_and_counts_them(store_path):
    with ngstore.open(store_path, event_capacity=50) as s:
        for _ in range(4):
            s.write_events(new_events(20))
        st = s.stats()
        assert st["events_live"] == 50 and st["events_trimmed_total"] == 30
        stream = s.experience()
        assert stream.read(29) is None and stream.read(30) is not None
    with ngstore.open(store_path) as s:
        stream = s.experience()
        assert stream.size() == 50 and stream.read(30).sequence == 30


def test_a_batch_commits_tokens_connections_and_events_together(store):
    from conftest import make_tokens

    with store.batch() as b:
        b.put_tokens(make_tokens([1, 2]))
        b.put_connections(_conns([(1, 2)]))
        b.append_events(new_events(3))
    st = store.stats()
    assert (st["tokens_live"], st["connections_live"], st["events_live"]) == (2, 1, 3)
    assert store.check().ok


def test_aggressive_cleanup_trims_old_events_near_the_byte_quota(store_path):
    # refusal point: 0.8 * 128_000 = 102_400 bytes = 800 events; cleanup from 90 % = 720
    # (observability off: no black box ring counted beside the events)
    with ngstore.open(store_path, max_bytes=128_000, max_tokens=None, observability=False) as s:
        s.write_events(new_events(700))
        assert s.stats()["aggressive_cleanups_total"] == 0
        s.write_events(new_events(40))      # 740 events > 720: cleanup trims 185
        st = s.stats()
        assert st["aggressive_cleanups_total"] == 1
        assert st["events_live"] == 740 - 185 and st["events_trimmed_total"] == 185
        assert s.experience().read(184) is None and s.experience().read(185) is not None
        assert s.check().ok
    with ngstore.open(store_path) as s:
        assert s.stats()["events_live"] == 555 and s.check().ok


def test_get_connections_gathers_many_keys_in_order(store):
    store.put_connections(_conns([(1, 2), (1, 3), (2, 3)]))
    got = store.get_connections([(2, 3, 0x50), (1, 2, 0x50)])
    assert list(zip(got.token_a.tolist(), got.token_b.tolist(), strict=False)) == [(2, 3), (1, 2)]
    with pytest.raises(KeyError, match="9"):
        store.get_connections([(1, 9, 0x50)])
    assert len(store.get_connections([(1, 9, 0x50), (1, 3, 0x50)], missing="skip")) == 1
