"""Format 1's ng_reflex_create checked ``capacity * 4 > slots * 3`` in 64-bit arithmetic: a
capacity of 2^62 multiplied to 0, passed, and the table believed it could hold 2^62
reflexes in 16 slots (eviction never started; the table filled and every insert failed).

Format 2 separates the capacity (a bound on live reflexes) from the allocation: the room
is min(capacity, records, 3/4 of the index), computed without multiplying the capacity.
Whatever the capacity, a table never takes more reflexes than its room: the next insert
returns NG_EFULL with nothing changed, and the table stays sound."""
from __future__ import annotations

import numpy as np

from ngstore import _native
from ngstore.records import CONNECTION_DTYPE
from ngstore.reflex import Geometry, ReflexTable

ffi, lib = _native.ffi, _native.lib
NG_EFULL = -3


def test_a_huge_capacity_fills_the_room_and_then_reports_full():
    g = Geometry.for_room(12)
    states = np.random.default_rng(0).uniform(-1, 1, (40, 8)).astype(np.float32)
    conns = np.zeros(40, CONNECTION_DTYPE)
    conns["token_a"] = np.arange(40)
    for capacity in (1 << 62, (1 << 62) + 1, 1 << 63, (1 << 64) - 1):
        segs = [ffi.new("uint8_t[]", n) for n in g.segment_lengths()]
        out = ffi.new("ng_reflex_table **")
        rc = lib.ng_reflex_create(capacity, ffi.new("uint8_t[8]", [4, 4, 5, 6, 6, 6, 8, 8]), g.c(),
                                  ffi.new("uint8_t *[]", segs), ffi.new("size_t[]", g.segment_lengths()),
                                  len(segs), out)
        assert rc == 0
        t = ffi.gc(out[0], lib.ng_reflex_free)
        info = ffi.new("ng_reflex_info *")
        lib.ng_reflex_info_get(t, info)
        room = int(info.room)
        assert room == min(g.records, g.slots * 3 // 4) and room >= 12
        outcome = ffi.new("int *")
        for i in range(40):
            rc = lib.ng_reflex_insert(t, 0, ffi.from_buffer(states[i]), conns[i].tobytes(), outcome, ffi.NULL)
            if i < room:
                assert rc == 0 and outcome[0] == 1
            else:
                assert rc == NG_EFULL, (hex(capacity), i, rc)
        lib.ng_reflex_info_get(t, info)
        assert info.live_count == room
        assert lib.ng_reflex_check(t, ffi.NULL, ffi.NULL, ffi.NULL) == 0


def test_the_python_table_grows_instead_and_refuses_absurd_capacities():
    t = ReflexTable.create(1 << 32, room=12)
    t.insert_batch(np.random.default_rng(1).uniform(-1, 1, (100, 8)).astype(np.float32),
                   np.zeros(100, CONNECTION_DTYPE))
    assert t.room >= 100 and len(t) <= 100
    t.check()
    for bad in (0, -1, (1 << 32) + 1, 1 << 63):
        try:
            ReflexTable.create(bad)
        except ValueError:
            continue
        raise AssertionError(f"capacity {bad} accepted")
