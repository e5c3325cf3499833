"""The C reflex table against the plain-Python model of tests/reflex_model.py (Hypothesis).

The model predicts every outcome (upserts, the 4-candidate cap, eviction, the exact path
with measured similarity, the nearest fallback). Persistence is exercised two ways:
"reopen" rebuilds the table from to_bytes(), and a stored copy kept up to date only
through segments() (dirty tracking, growth included) is attached read-only and must
answer exactly like the live table.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from reflex_model import Model, raw_state

from ngstore.errors import NotFoundError
from ngstore.records import CONNECTION_DTYPE
from ngstore.reflex import ReflexTable, state_keys


def _pool() -> np.ndarray:
    rng = np.random.default_rng(11)
    states = [
        np.zeros((8, 3), np.int16),
        # two cells with the same grid hash (layer 0: rotl(y, 18) ^ rotl(z, 24))
        np.array([[0, 64 << 4, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[0, 0, 1 << 4]] + [[0, 0, 0]] * 7, np.int16),
        # raw states in one cell (shift 4 on layer 0), pointing in different directions
        np.array([[16, 0, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[17, 0, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[16, 15, 0]] + [[0, 0, 0]] * 7, np.int16),
        # neighbours across cell boundaries (the nearest fallback's cases)
        np.array([[15, 0, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[15, -1, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[32, 16, 0]] + [[3, 0, 0]] * 7, np.int16),
    ]
    states += list(rng.integers(-32768, 32768, (5, 8, 3)).astype(np.int16))
    pool = np.stack(states)
    h, _ = state_keys(pool[1:3])
    assert h[0] == h[1]
    return pool


POOL = _pool()
RAW = [raw_state(s) for s in POOL]


def make_conn(ident: int, confidence: int, mutability: int, target: int) -> np.void:
    c = np.zeros(1, CONNECTION_DTYPE)
    c["token_a"], c["token_b"], c["connection_type"] = ident, ident + 1, 0x50 + (ident % 3)
    c["confidence"], c["mutability"] = confidence, mutability
    c["target_vector"] = [target, -target, target // 2, 0, 1, -1, target, 7]
    return c[0]


class ReflexMachine(RuleBasedStateMachine):
    CAPACITY = 10

    def __init__(self) -> None:
        super().__init__()
        self.table = ReflexTable.create(self.CAPACITY, room=2)  # grows on the way to 10
        self.model = Model(self.CAPACITY)
        header, segs = self.table.segments()
        self.stored = {i: bytes(b) for i, b in segs}
        self.stored_header = header

    @rule(s=st.integers(0, len(POOL) - 1), ident=st.integers(0, 7), conf=st.integers(0, 255),
          mut=st.integers(0, 2), tv=st.integers(-3000, 3000))
    def insert(self, s: int, ident: int, conf: int, mut: int, tv: int) -> None:
        c = make_conn(ident, conf, mut, tv)
        plan = self.table.plan_insert(POOL[s:s + 1], c.reshape(1))
        outcome = self.model.insert(RAW[s], c.tobytes())
        assert (plan.first_eviction is not None) == (outcome in ("evicted", "replaced"))
        assert plan.new_reflexes == (1 if outcome == "inserted" else 0)
        assert self.table.insert(POOL[s], c) == outcome

    @rule(s=st.integers(0, len(POOL) - 1), ident=st.integers(0, 7))
    def delete_one(self, s: int, ident: int) -> None:
        c = make_conn(ident, 0, 0, 0)
        expected = self.model.delete(RAW[s], c.tobytes()[:9])
        if expected:
            assert self.table.delete(POOL[s], c) == expected
        else:
            with pytest.raises(NotFoundError):
                self.table.delete(POOL[s], c)

    @rule(s=st.integers(0, len(POOL) - 1))
    def delete_cell(self, s: int) -> None:
        expected = self.model.delete(RAW[s], None)
        if expected:
            assert self.table.delete(POOL[s]) == expected
        else:
            with pytest.raises(NotFoundError):
                self.table.delete(POOL[s])

    @rule(min_conf=st.sampled_from([0, 149, 150, 151]), hyp=st.sampled_from([0, 199, 200, 201]),
          sim=st.sampled_from([0.0, 0.5, 0.85, 0.99, 1.0]),
          radius=st.sampled_from([None, 0.1, 0.5, 1.0, 2.5, 40.0]), budget=st.sampled_from([0, 1]))
    def lookup_all(self, min_conf: int, hyp: int, sim: float, radius: float | None, budget: int) -> None:
        from ngstore.reflex import LookupParams

        params = LookupParams(min_conf, hyp, sim, radius, budget)  # budget 1: the scan decides
        r = self.table.lookup_batch(POOL, params=params)
        for i, raw in enumerate(RAW):
            want = self.model.answer(raw, min_conf, hyp, sim, radius)
            assert bool(r.found[i]) == (want is not None), (i, want)
            assert bool(r.known[i]) == self.model.known(raw)
            if want is not None:
                assert r.connections[i].tobytes() == want[0] and bool(r.fallback[i]) == want[1]
                one = self.table.lookup_with(params, POOL[i])
                assert one is not None and one.connection.tobytes() == want[0] and one.fallback == want[1]
            else:
                assert self.table.lookup_with(params, POOL[i]) is None

    @rule()
    def reopen(self) -> None:
        # "crash and reopen": the saved image is the whole table; the stored copy is that image
        self.table = ReflexTable.from_bytes(self.table.to_bytes())
        self.stored = {i: bytes(b) for i, b in enumerate(self.table.all_segments())}
        self.table.segments()  # a freshly opened table has nothing dirty to report beyond the image

    @rule()
    def persist_dirty_segments_and_attach_the_stored_copy(self) -> None:
        header, segs = self.table.segments()
        for i, b in segs:
            self.stored[i] = bytes(b)
        self.stored_header = header
        ro = ReflexTable.attach(header, [self.stored[i] for i in range(self.table.segment_count)])
        assert np.array_equal(ro.entries(), self.table.entries())
        a = ro.lookup_batch(POOL, similarity_threshold=0.0, nearest_fallback=3.0)
        b = self.table.lookup_batch(POOL, similarity_threshold=0.0, nearest_fallback=3.0)
        assert np.array_equal(a.record, b.record) and np.array_equal(a.connections, b.connections)
        ro.check()
        ro.close()

    @invariant()
    def matches_model(self) -> None:
        assert len(self.table) == len(self.model.entries)
        got = sorted((e["connection"].tobytes(), tuple(e["state"].reshape(24).tolist())) for e in self.table.entries())
        assert got == sorted((raw, src) for raw, _, src in self.model.entries.values())
        self.table.check()


ReflexMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestReflexTableAgainstModel = ReflexMachine.TestCase


ops = st.lists(st.tuples(st.sampled_from(["insert", "insert", "insert", "delete"]), st.integers(0, 199),
                         st.integers(0, 3), st.integers(150, 255)), max_size=150)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, seed=st.integers(0, 2**32 - 1))
def test_multi_segment_table_agrees_with_model_and_with_its_persisted_segments(ops, seed):
    """Many 16-record and 16-entry segments (probe runs cross segment boundaries), growth
    from room 4, no eviction; stored segments follow the dirty tracking through growths."""
    rng = np.random.default_rng(seed)
    states = rng.uniform(-1, 1, (200, 8)).astype(np.float32)
    raws = [raw_state(s) for s in states]
    t = ReflexTable.create(300, room=4, records_per_segment=16, entries_per_segment=16)
    model = Model(300)
    header, segs = t.segments()
    stored = {i: bytes(b) for i, b in segs}
    for op, s, ident, conf in ops:
        c = make_conn(ident, conf, 1, s)
        if op == "insert":
            assert t.insert(states[s], c) == model.insert(raws[s], c.tobytes())
        else:
            n = model.delete(raws[s], None)
            if n:
                assert t.delete(states[s]) == n
        header, segs = t.segments()
        stored.update({i: bytes(b) for i, b in segs})
    ro = ReflexTable.attach(header, [stored[i] for i in range(t.segment_count)])
    for table in (t, ro, ReflexTable.from_bytes(t.to_bytes())):
        table.check()
        assert len(table) == len(model.entries)
        r = table.lookup_batch(states, similarity_threshold=0.0, nearest_fallback=0.75)
        for i, raw in enumerate(raws):
            want = model.answer(raw, 150, 200, 0.0, 0.75)
            assert (r.connections[i].tobytes() if r.found[i] else None) == (want[0] if want else None)
