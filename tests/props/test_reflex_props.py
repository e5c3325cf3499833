"""The C reflex table against a plain-Python model (Hypothesis stateful testing).

The model keeps {(quantized state bytes, identity): (record bytes, write tick)} and
predicts every outcome: upserts, the 4-candidate cap, eviction at capacity (the table
here has <= 32 slots, so the eviction window covers it all and the victim is the
globally weakest: lowest confidence, then oldest write), the fast-path answer for any
thresholds. Persistence is exercised two ways: "reopen" rebuilds the table from
to_bytes(), and a stored copy kept up to date only through segments() (dirty tracking)
is attached read-only and must answer exactly like the live table.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ngstore.errors import NotFoundError
from ngstore.records import CONNECTION_DTYPE
from ngstore.reflex import ReflexTable, quantized_state_bytes, state_keys


def _pool() -> np.ndarray:
    rng = np.random.default_rng(11)
    states = [
        np.zeros((8, 3), np.int16),
        # two cells with the same grid hash (layer 0: rotl(y, 18) ^ rotl(z, 24))
        np.array([[0, 64 << 4, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[0, 0, 1 << 4]] + [[0, 0, 0]] * 7, np.int16),
        # two raw states in the same cell (shift 4 on layer 0): the same state to the table
        np.array([[16, 0, 0]] + [[0, 0, 0]] * 7, np.int16),
        np.array([[17, 0, 0]] + [[0, 0, 0]] * 7, np.int16),
    ]
    states += list(rng.integers(-32768, 32768, (7, 8, 3)).astype(np.int16))
    pool = np.stack(states)
    h, _ = state_keys(pool[1:3])
    assert h[0] == h[1]
    return pool


POOL = _pool()
QKEYS = [quantized_state_bytes(s) for s in POOL]


def make_conn(ident: int, confidence: int, mutability: int, target: int) -> np.void:
    c = np.zeros(1, CONNECTION_DTYPE)
    c["token_a"], c["token_b"], c["connection_type"] = ident, ident + 1, 0x50 + (ident % 3)
    c["confidence"], c["mutability"] = confidence, mutability
    c["target_vector"] = [target, -target, target // 2, 0, 1, -1, target, 7]
    return c[0]


class Model:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
        self.tick = 0

    def _next(self) -> int:
        self.tick += 1
        return self.tick - 1

    @staticmethod
    def _strength(item: tuple[tuple[bytes, bytes], tuple[bytes, int]]) -> tuple[int, int]:
        raw, tick = item[1]
        return raw[33], tick

    def insert(self, q: bytes, raw: bytes) -> str:
        key = (q, raw[:9])
        if key in self.entries:
            self.entries[key] = (raw, self._next())
            return "updated"
        same = [it for it in self.entries.items() if it[0][0] == q]
        outcome = "inserted"
        if len(same) >= 4:
            del self.entries[min(same, key=self._strength)[0]]
            outcome = "replaced"
        elif len(self.entries) >= self.capacity:
            del self.entries[min(self.entries.items(), key=self._strength)[0]]
            outcome = "evicted"
        self.entries[key] = (raw, self._next())
        return outcome

    def delete(self, q: bytes, ident: bytes | None) -> int:
        keys = [k for k in self.entries if k[0] == q and (ident is None or k[1] == ident)]
        for k in keys:
            del self.entries[k]
        return len(keys)

    def answer(self, q: bytes, min_conf: int, hyp: int, sim: float) -> bytes | None:
        best = None
        for (kq, _), (raw, tick) in self.entries.items():
            conf, mut = raw[33], raw[32]
            if kq != q or conf < min_conf or (mut == 2 and conf < hyp):
                continue
            if best is None or (conf, tick) > (best[0][33], best[1]):
                best = (raw, tick)
        if best is None or not best[0][33] / 255 > sim:
            return None
        return best[0]


class ReflexMachine(RuleBasedStateMachine):
    CAPACITY = 10

    def __init__(self) -> None:
        super().__init__()
        self.table = ReflexTable.create(self.CAPACITY)
        assert self.table.slot_count <= 32  # the eviction window covers the whole table
        self.model = Model(self.CAPACITY)
        header, segs = self.table.segments()
        self.stored = {i: bytes(b) for i, b in segs}
        self.stored_header = header

    @rule(s=st.integers(0, len(POOL) - 1), ident=st.integers(0, 7), conf=st.integers(0, 255),
          mut=st.integers(0, 2), tv=st.integers(-3000, 3000))
    def insert(self, s: int, ident: int, conf: int, mut: int, tv: int) -> None:
        c = make_conn(ident, conf, mut, tv)
        assert self.table.insert(POOL[s], c) == self.model.insert(QKEYS[s], c.tobytes())

    @rule(s=st.integers(0, len(POOL) - 1), ident=st.integers(0, 7))
    def delete_one(self, s: int, ident: int) -> None:
        c = make_conn(ident, 0, 0, 0)
        expected = self.model.delete(QKEYS[s], c.tobytes()[:9])
        if expected:
            assert self.table.delete(POOL[s], c) == expected
        else:
            with pytest.raises(NotFoundError):
                self.table.delete(POOL[s], c)

    @rule(s=st.integers(0, len(POOL) - 1))
    def delete_state(self, s: int) -> None:
        expected = self.model.delete(QKEYS[s], None)
        if expected:
            assert self.table.delete(POOL[s]) == expected
        else:
            with pytest.raises(NotFoundError):
                self.table.delete(POOL[s])

    @rule(min_conf=st.sampled_from([0, 149, 150, 151]), hyp=st.sampled_from([0, 199, 200, 201]),
          sim=st.sampled_from([0.0, 0.5, 0.85, 216 / 255, 0.99]))
    def lookup_all(self, min_conf: int, hyp: int, sim: float) -> None:
        r = self.table.lookup_batch(POOL, min_confidence=min_conf, hypothesis_threshold=hyp,
                                    similarity_threshold=sim)
        for i, q in enumerate(QKEYS):
            want = self.model.answer(q, min_conf, hyp, sim)
            assert bool(r.found[i]) == (want is not None)
            if want is not None:
                assert r.connections[i].tobytes() == want
                one = self.table.lookup(POOL[i], min_confidence=min_conf, hypothesis_threshold=hyp,
                                        similarity_threshold=sim)
                assert one is not None and one.connection.tobytes() == want
            known = any(k[0] == q for k in self.model.entries)
            assert bool(r.known[i]) == known

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
        a = ro.lookup_batch(POOL, similarity_threshold=0.0)
        b = self.table.lookup_batch(POOL, similarity_threshold=0.0)
        assert np.array_equal(a.slot, b.slot) and np.array_equal(a.connections, b.connections)
        ro.check()
        ro.close()

    @invariant()
    def matches_model(self) -> None:
        assert len(self.table) == len(self.model.entries)
        got = sorted(bytes(e["connection"].tobytes()) for e in self.table.entries())
        assert got == sorted(raw for raw, _ in self.model.entries.values())
        self.table.check()


ReflexMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestReflexTableAgainstModel = ReflexMachine.TestCase


ops = st.lists(st.tuples(st.sampled_from(["insert", "insert", "insert", "delete"]), st.integers(0, 199),
                         st.integers(0, 3), st.integers(150, 255)), max_size=150)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, seed=st.integers(0, 2**32 - 1))
def test_multi_segment_table_agrees_with_model_and_with_its_persisted_segments(ops, seed):
    """Many 16-slot segments (clusters cross segment boundaries); no eviction."""
    rng = np.random.default_rng(seed)
    states = rng.uniform(-1, 1, (200, 8)).astype(np.float32)
    qkeys = [quantized_state_bytes(c) for c in _coords_of(states)]
    t = ReflexTable.create(300, slots_per_segment=16)
    model = Model(300)
    header, segs = t.segments()
    stored = {i: bytes(b) for i, b in segs}
    for op, s, ident, conf in ops:
        c = make_conn(ident, conf, 1, s)
        if op == "insert":
            assert t.insert(states[s], c) == model.insert(qkeys[s], c.tobytes())
        else:
            n = model.delete(qkeys[s], None)
            if n:
                assert t.delete(states[s]) == n
    header, segs = t.segments()
    stored.update({i: bytes(b) for i, b in segs})
    ro = ReflexTable.attach(header, [stored[i] for i in range(t.segment_count)])
    for table in (t, ro, ReflexTable.from_bytes(t.to_bytes())):
        table.check()
        assert len(table) == len(model.entries)
        r = table.lookup_batch(states, similarity_threshold=0.0)
        for i, q in enumerate(qkeys):
            want = model.answer(q, 150, 200, 0.0)
            assert (r.connections[i].tobytes() if r.found[i] else None) == want


def _coords_of(states: np.ndarray) -> np.ndarray:
    from ngstore.codec import state_coordinates

    return state_coordinates(states)
