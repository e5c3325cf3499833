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


@pytest.mark.parametrize("durability", ["none", "async", "sync"])
def test_get_connection_is_a_point_read_that_sees_every_commit_before_it(store_path, durability):
    # get_connection reads LMDB in the shared point-read transaction (no snapshot): it must
    # still see each commit that returned before it, the overlay's included, in any mode.
    with ngstore.open(store_path, durability=durability) as s:
        for i in range(50):
            c = _conns([(i, i + 1)], 0x10 + i % 3)
            c["confidence"] = i
            s.put_connections(c)
            got = s.get_connection(i + 1, i)  # either order
            assert (got.token_a, got.token_b, got.connection_type, got.confidence_raw) == (i, i + 1, 0x10 + i % 3, i)
            assert s.get_connection(i, i + 1, np.uint8(0x10 + i % 3)).confidence_raw == i  # a numpy type
            with pytest.raises(KeyError, match="of type 0x13"):
                s.get_connection(i, i + 1, 0x13)
        s.put_connections(_conns([(7, 8)], 0x15))  # a second type of the pair (7, 8)
        with pytest.raises(ValueError, match="2 connections join 8 and 7"):
            s.get_connection(8, 7)
        assert s.get_connection(7, 8, 0x15).connection_type == 0x15
        assert s.get_connection(7, 8, 0x10 + 7 % 3).confidence_raw == 7
        s.delete_connections([(7, 8, 0x15)])
        assert s.get_connection(8, 7).connection_type == 0x10 + 7 % 3
        for bad_type in (256, -1, 0x10 + 0.5, "0x10"):  # no connection has such a type
            with pytest.raises(KeyError):
                s.get_connection(0, 1, bad_type)
        with pytest.raises(KeyError):
            s.get_connection(0, 2)
        with pytest.raises(ValueError):
            s.get_connection(-1, 2)
        with pytest.raises(ValueError):
            s.get_connection(0, 2**32)
        assert s.get_connection(np.uint32(1), np.int64(0)).token_b == 1
    with ngstore.open(store_path, readonly=True) as r:  # a reader begins a transaction per read
        assert r.get_connection(10, 9).confidence_raw == 9
        assert r.get_connection(8, 7).connection_type == 0x10 + 7 % 3
        with pytest.raises(KeyError):
            r.get_connection(99, 98)


def test_reads_of_connections_wait_for_connection_commits_only(store_path):
    # A read of connections alone (get_connection(s), connections_between, neighbors,
    # k_hop, shortest_path) waits for the applier only while a commit that wrote
    # connections is pending: token commits alone stay in the overlay, not applied for it.
    # (stats() would apply them: the pending entries are read off the writer's overlay.)
    with ngstore.open(store_path, durability="none", apply_interval=3600.0) as s:
        pending = s._writer.overlay  # type: ignore[union-attr]
        s.put_connections(_conns([(1, 2), (2, 3)]))
        s.put_tokens(ngstore.Token.create_batch(3, start=1))
        assert pending.entries == 2
        assert s.get_connection(2, 1).token_b == 2  # waits for the connections' apply
        assert pending.entries == 0  # (which took the token commit along, one group)
        s.put_tokens(ngstore.Token.create_batch(1, start=9))
        s.put_tokens(ngstore.Token.create_batch(1, start=10))
        assert s.get_connection(1, 2).token_a == 1
        assert len(s.get_connections([(1, 2, 0x50), (2, 3, 0x50)])) == 2
        assert len(s.connections_between(3, 2)) == 1 and len(s.neighbors(2)) == 2
        assert s.k_hop([1], 2).ids.tolist() == [1, 2, 3]
        assert s.shortest_path(1, 3) is not None
        assert pending.entries == 2  # no read of connections applied the token commits
        assert s.get_token(10).id == 10 and pending.entries == 2  # point reads merge the overlay
        s.delete_connections([(1, 2, 0x50)])
        with pytest.raises(KeyError):
            s.get_connection(1, 2)  # the delete is seen
        assert pending.entries == 0
        s.put_tokens(ngstore.Token.create_batch(1, start=11))
        assert s.neighbors(2).token_b.tolist() == [3] and pending.entries == 1
        with s.snapshot() as snap:  # a snapshot waits for every commit
            assert snap.tokens.count() == 6
        assert pending.entries == 0


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
