"""The store against a plain in-memory model (``tests/model.py``): any sequence of
operations agrees.

Ids are drawn from a few clustered ranges so chunks fill, split into runs, empty and
disappear; connections and events are written and deleted beside them; reopen and
checkpoint are steps; every run ends with ``check()``.
"""
from __future__ import annotations

import shutil
import tempfile

import numpy as np
from conftest import make_tokens
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from model import ModelStore

import ngstore
from ngstore.connections import new_connections
from ngstore.experience import new_events

CHUNK = 16  # small chunks make every chunk-boundary case reachable quickly
ids_st = st.one_of(st.integers(0, 3 * CHUNK), st.integers(2**32 - 2 * CHUNK, 2**32 - 1),
                   st.integers(0, 2**32 - 1))
small_ids = st.integers(0, 12)
EVENT_CAPACITY = 25


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ngstore-model-")
        self.path = self.dir + "/s"
        self.store = ngstore.open(self.path, chunk_slots=CHUNK, durability="async",
                                  event_capacity=EVENT_CAPACITY)
        self.model = ModelStore(event_capacity=EVENT_CAPACITY)
        self.version = 0

    @rule(ids=st.lists(ids_st, min_size=1, max_size=40))
    def put(self, ids):
        self.version += 1
        recs = make_tokens(ids, weight=np.float32(self.version))
        self.store.put_tokens(recs)
        self.model.put_tokens(recs)

    @rule(ids=st.lists(ids_st, min_size=1, max_size=40), data=st.data())
    def put_placed(self, ids, data):
        """Tokens at drawn coordinates: a few values, so ties, equal cells and moves abound."""
        self.version += 1
        recs = make_tokens(ids, weight=np.float32(self.version))
        values = st.sampled_from([-32768, -5000, -64, -1, 0, 1, 63, 64, 700, 32767])
        recs["coordinates"] = np.array(data.draw(st.lists(st.lists(values, min_size=24, max_size=24),
                                                          min_size=len(ids), max_size=len(ids))),
                                       dtype=np.int16).reshape(-1, 8, 3)
        self.store.put_tokens(recs)
        self.model.put_tokens(recs)

    @rule(layer=st.integers(0, 7), a=st.tuples(*[st.sampled_from([-32768, -100, 0, 1, 64, 30000])] * 3),
          size=st.sampled_from([0, 1, 63, 700, 70000]), radius=st.sampled_from([0, 1, 64.5, 5000, 50000]))
    def spatial_queries(self, layer, a, size, radius):
        lo = np.array(a)
        hi = np.minimum(lo + size, 32767)
        with self.store.snapshot() as snap:
            assert snap.tokens.box(lo, hi, layer=layer).tolist() == self.model.box(layer, lo, hi)
            assert snap.tokens.within(lo, radius, layer=layer).tolist() == self.model.within(layer, lo, radius)

    @rule(data=st.data(), k=st.integers(1, 8))
    def nearest(self, data, k):
        q = np.array(data.draw(st.lists(st.sampled_from([-32768, -64, 0, 1, 700]), min_size=24, max_size=24)))
        with self.store.snapshot() as snap:
            got = snap.tokens.knn(q, k)
        ids, d = self.model.knn(q, k)
        assert got.ids.tolist() == ids.tolist() and got.distances.tolist() == d.tolist()

    @rule(seeds=st.lists(small_ids, min_size=1, max_size=3), k=st.integers(0, 3))
    def walk(self, seeds, k):
        got = self.store.k_hop(seeds, k)
        want = self.model.k_hop(seeds, k)
        assert dict(zip(got.ids.tolist(), got.depth.tolist(), strict=True)) == want

    @rule(ids=st.lists(ids_st, max_size=20), data=st.data())
    def delete(self, ids, data):
        if self.model.tokens and data.draw(st.booleans()):
            ids = ids + data.draw(st.lists(st.sampled_from(sorted(self.model.tokens)), max_size=10))
        if not ids:
            return
        self.store.delete_tokens(ids)
        self.model.delete_tokens(ids)

    @rule(data=st.data())
    @precondition(lambda self: self.model.tokens)
    def get_present(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model.tokens)), min_size=1, max_size=30))
        got = self.store.get_tokens(ids)
        assert [r.tobytes() for r in got.data] == self.model.get_tokens(ids)

    @rule(i=ids_st)
    def contains(self, i):
        assert (i in self.store) == (i in self.model)

    @rule(pairs=st.lists(st.tuples(small_ids, small_ids, st.sampled_from([0x50, 0x51])), min_size=1, max_size=6))
    def put_connections(self, pairs):
        self.version += 1
        a = np.array([p[0] for p in pairs], dtype=np.uint32)
        b = np.array([p[1] for p in pairs], dtype=np.uint32)
        recs = new_connections(np.minimum(a, b), np.maximum(a, b), 0x50, now=1_700_000_000)
        recs = recs if isinstance(recs, np.ndarray) else recs.data
        recs["connection_type"] = [p[2] for p in pairs]
        recs["pull_strength"] = np.float32(self.version % 7)
        self.store.put_connections(recs)
        self.model.put_connections(recs)

    @rule(keys=st.lists(st.tuples(small_ids, small_ids, st.sampled_from([0x50, 0x51])), min_size=1, max_size=4))
    def delete_connections(self, keys):
        self.store.delete_connections(keys)
        self.model.delete_connections(keys)

    @rule(n=st.integers(1, 12))
    def write_events(self, n):
        self.version += 1
        ev = new_events(n, event_type=3, event_id=np.arange(n) + self.version * 100)
        assert self.store.write_events(ev) == self.model.write_events(ev)

    @rule(token=small_ids)
    def neighbors(self, token):
        got = self.store.neighbors(token).data
        assert {(int(r["token_a"]), int(r["token_b"]), int(r["connection_type"])) for r in got} \
            == self.model.neighbors(token)
        for r in got:
            key = (int(r["token_a"]), int(r["token_b"]), int(r["connection_type"]))
            assert r.tobytes() == self.model.connections[key]

    @rule()
    def events_match(self):
        with self.store.snapshot() as snap:
            assert snap.events.next_sequence() == self.model.next_sequence
            first, got = snap.events.since(0)
        want = sorted(self.model.events)
        assert [first + k for k in range(len(got))] == want
        assert [g.tobytes() for g in got] == [self.model.events[s] for s in want]

    @rule()
    def snapshot_matches(self):
        with self.store.snapshot() as snap:
            runs = list(snap.tokens.chunks())
            got = {int(r["id"]): r.tobytes() for _f, arr in runs for r in arr}
            for first, arr in runs:
                assert arr["id"].tolist() == list(range(first, first + arr.shape[0]))
            assert snap.tokens.count() == self.model.count()
            conns = snap.connections.to_array()
        assert got == self.model.tokens
        assert {(int(r["token_a"]), int(r["token_b"]), int(r["connection_type"])): r.tobytes() for r in conns} \
            == self.model.connections

    @rule(durability=st.sampled_from(["sync", "async", "none"]))
    def reopen(self, durability):
        self.store.close()
        self.store = ngstore.open(self.path, durability=durability)

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @invariant()
    def count_matches(self):
        assert self.store.count() == self.model.count()
        assert self.store.count_connections() == len(self.model.connections)

    def teardown(self) -> None:
        try:
            report = self.store.check()
            assert report.ok, str(report)
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


StoreModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestStoreModel = StoreModel.TestCase
