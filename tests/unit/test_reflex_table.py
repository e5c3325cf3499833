"""The persistent reflex table (csrc/reflex.c through ngstore.reflex, format §7 version 2): unit
specifications."""
from __future__ import annotations

import os
import threading
import zlib

import numpy as np
import pytest
import xxhash
from reflex_model import ref_dist2, ref_similarity

from ngstore.codec import DEFAULT_SHIFTS, encode_state
from ngstore.errors import CorruptionError, InvalidArgumentError, NotFoundError, StoreClosedError
from ngstore.records import CONNECTION_DTYPE, TOKEN_DTYPE
from ngstore.reflex import (
    ENTRY_SIZE,
    HEADER_SIZE,
    RECORD_SIZE,
    LookupParams,
    ReflexTable,
    distance,
    fingerprint_reference,
    parse_header,
    quantized_state_bytes,
    similarity,
    state_keys,
    xxh3_64,
)

STATE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def conn(a: int = 1, b: int = 2, confidence: int = 230, mutability: int = 1, ctype: int = 0x50,
         target=(10, 2000, 300, 4000, 5000, 6000, 70, 8000)) -> np.void:
    c = np.zeros(1, CONNECTION_DTYPE)
    c["token_a"], c["token_b"], c["connection_type"] = a, b, ctype
    c["confidence"], c["mutability"] = confidence, mutability
    c["target_vector"] = target
    return c[0]


def coords(**layers: tuple[int, int, int]) -> np.ndarray:
    """Raw int16 coordinates (8, 3); keyword L0..L7 sets a layer."""
    c = np.zeros((8, 3), np.int16)
    for name, xyz in layers.items():
        c[int(name[1:])] = xyz
    return c


# --------------------------------------------------------------------------- keys

def test_c_xxh3_equals_xxhash_on_every_length_from_17_to_128():
    rng = np.random.default_rng(1)
    for length in range(17, 129):
        for _ in range(20):
            data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
            assert xxh3_64(data) == xxhash.xxh3_64_intdigest(data)


def test_c_xxh3_equals_xxhash_on_thousands_of_random_48_byte_states():
    for _ in range(5000):
        data = os.urandom(48)
        assert xxh3_64(data) == xxhash.xxh3_64_intdigest(data)


def test_fingerprint_is_xxh3_of_the_quantized_coordinates_little_endian():
    rng = np.random.default_rng(2)
    raw = rng.integers(-32768, 32768, (2000, 8, 3)).astype(np.int16)
    _, fps = state_keys(raw)
    for c, fp in zip(raw[:2000], fps, strict=True):
        assert int(fp) == fingerprint_reference(c)
    # the low shift bits are cleared, layer by layer
    q = np.frombuffer(quantized_state_bytes(coords(L0=(0x7FFF, -1, 17))), "<i2")
    assert list(q[:3]) == [0x7FF0, -16, 16]


def test_grid_hash_reproduces_the_appendix_a3_vectors():
    h, _ = state_keys(np.zeros((8, 3), np.int16))
    assert int(h[0]) == 0x7081810500100030
    h, _ = state_keys(np.array([STATE], np.float32))
    assert int(h[0]) == 0xB0DC1DFD4FC00037
    h, _ = state_keys(np.array([[-0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8]], np.float32))
    assert int(h[0]) == 0xB0A39C0548001E37
    h, _ = state_keys(coords(L0=(1000, 2000, 3000), L7=(-1, 5, -32768)))
    assert int(h[0]) == 0xCF41965B8017FFCF


def test_float_states_use_the_original_encode_rule_nan_to_zero_and_saturation():
    floats = np.array([[np.nan, 1e9, -1e9, np.inf, -np.inf, 0.00015, -0.00015, 3.2767]], np.float32)
    raw = coords(L0=(0, 0, 0), L1=(32767, 0, 0), L2=(-32768, 0, 0), L3=(32767, 0, 0), L4=(-32768, 0, 0),
                 L5=(1, 0, 0), L6=(0, 0, 0), L7=(32767, 0, 0))
    assert [int(x) for x in encode_state(floats)[0]] == [int(v) for v in raw[:, 0]]
    assert [int(x) for x in state_keys(floats)[0]] == [int(x) for x in state_keys(raw)[0]]
    assert [int(x) for x in state_keys(floats)[1]] == [int(x) for x in state_keys(raw)[1]]


def test_token_records_and_float_states_give_the_same_keys():
    tok = np.zeros(3, TOKEN_DTYPE)
    floats = np.random.default_rng(3).uniform(-1, 1, (3, 8)).astype(np.float32)
    tok["coordinates"][:, :, 0] = encode_state(floats)
    assert np.array_equal(state_keys(tok)[0], state_keys(floats)[0])
    assert np.array_equal(state_keys(tok)[1], state_keys(floats)[1])


def test_similarity_is_the_original_token_similarity_except_identical_states():
    rng = np.random.default_rng(8)
    for _ in range(500):
        a = rng.integers(-32768, 32768, (8, 3)).astype(np.int16)
        b = (a.astype(np.int32) + rng.integers(-3000, 3000, (8, 3))).clip(-32768, 32767).astype(np.int16)
        assert similarity(a, b) == ref_similarity(a.ravel(), b.ravel())
        assert distance(a, b) == pytest.approx(np.sqrt(ref_dist2(a.ravel(), b.ravel())), rel=1e-15)
    zero = np.zeros((8, 3), np.int16)
    assert similarity(zero, zero) == 1.0                     # the original said 0
    assert similarity(zero, coords(L0=(5, 0, 0))) == 0.0       # all-zero against anything else: 0
    assert similarity(coords(L0=(5, 0, 0)), coords(L0=(0, 5, 0))) == 0.0
    assert similarity(coords(L0=(5, 0, 0)), coords(L0=(-5, 0, 0))) == 0.0  # clamped at 0
    assert similarity(coords(L0=(3, 4, 0)), coords(L0=(6, 8, 0))) == 1.0   # parallel
    # distance is in grid cells: one cell along layer 0 (shift 4) is 16 raw units
    assert distance(coords(L0=(0, 0, 0)), coords(L0=(16, 0, 0))) == 1.0
    assert distance(coords(L6=(0, 0, 0)), coords(L6=(256, 0, 0))) == 1.0   # shift 8
    assert distance(np.array(STATE, np.float32), np.array(STATE, np.float32)) == 0.0


# --------------------------------------------------------------------------- create / insert / lookup

def test_create_allocates_a_small_room_and_grows_to_the_capacity():
    t = ReflexTable.create(1000, records_per_segment=16, entries_per_segment=16)
    assert t.capacity == 1000 and t.room == 64 and len(t) == 0 and t.shifts == tuple(DEFAULT_SHIFTS)
    small = t.memory_bytes
    assert small < 16 * 1024
    rng = np.random.default_rng(1)
    states = rng.uniform(-1, 1, (900, 8)).astype(np.float32)
    for i in range(900):
        t.insert(states[i], conn(a=i))
        assert len(t) <= t.room <= t.capacity and 4 * len(t) <= 3 * t.slot_count
    assert len(t) == 900 and t.stats()["growths"] >= 3 and t.memory_bytes > 10 * small
    g = t.geometry
    assert (g.records_per_segment, g.entries_per_segment) == (16, 16)  # kept through growth
    assert t.lookup_batch(states).found.all()
    t.check()
    with pytest.raises(InvalidArgumentError):
        ReflexTable.create(0)
    with pytest.raises(InvalidArgumentError):
        ReflexTable.create(10, records_per_segment=100)  # not a power of two
    with pytest.raises(InvalidArgumentError):
        ReflexTable.create(10, shifts=[4, 4, 5, 6, 6, 6, 8, 16])


def test_memory_bytes_counts_segments_header_and_handle():
    t = ReflexTable.create(10_000, room=5000)
    g = t.geometry
    seg = g.records * RECORD_SIZE + g.slots * ENTRY_SIZE
    assert sum(len(b) for b in t.all_segments()) == seg
    assert seg + HEADER_SIZE < t.memory_bytes < seg + HEADER_SIZE + 4096  # + the C handle
    assert t.stats()["memory_bytes"] == t.memory_bytes


def test_insert_then_lookup_returns_record_action_similarity_and_distance():
    t = ReflexTable.create(100)
    assert t.insert(STATE, conn()) == "inserted"
    hit = t.lookup(STATE)
    assert hit is not None
    assert hit.connection.tobytes() == conn().tobytes()
    assert np.allclose(hit.action, STATE) and hit.action.dtype == np.float32
    assert hit.similarity == 1.0 and hit.distance == 0.0 and not hit.fallback and hit.confidence == 230
    connection, action, sim = hit  # unpacks like the tuple it replaced
    assert sim == 1.0 and np.array_equal(action, hit.action) and connection == hit.connection
    assert "similarity=1.000" in repr(hit) and str(hit) == repr(hit)
    assert t.lookup([0.0] * 8) is None


def test_a_query_in_the_cell_is_answered_with_its_measured_similarity():
    t = ReflexTable.create(10)
    src = coords(L1=(1008, 0, 0), L3=(2000, 0, 0))
    near = coords(L1=(1020, 3, 0), L3=(2011, 0, 5))   # the same cell (shifts 4 and 6)
    assert state_keys(src)[1][0] == state_keys(near)[1][0]
    t.insert(src, conn(confidence=230))
    hit = t.lookup(near)
    assert hit is not None and hit.similarity == pytest.approx(ref_similarity(src.ravel(), near.ravel()))
    assert hit.distance == pytest.approx(np.sqrt(ref_dist2(src.ravel(), near.ravel())))
    # near the origin a cell spans every direction: a threshold refuses an orthogonal query
    t.insert(coords(L0=(12, 0, 0)), conn(a=5, confidence=230))
    ortho = coords(L0=(0, 12, 0))
    assert state_keys(ortho)[1][0] == state_keys(coords(L0=(12, 0, 0)))[1][0]
    assert t.lookup(ortho) is None and t.lookup(ortho, similarity_threshold=-1.0) is not None
    r = t.lookup_batch(ortho.reshape(1, 8, 3))
    assert not r.found[0] and r.known[0] and r.record[0] == -1


def test_confidence_decides_eligibility_and_similarity_is_measured():
    # Deliberate change from the original (and format 1): confidence/255 no longer stands in
    # for the similarity, so a reflex of confidence 216 is answered at its own state.
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=216))
    assert t.lookup(STATE) is not None and t.lookup(STATE).similarity == 1.0
    assert t.lookup(STATE, min_confidence=217) is None  # the old rule, when asked for
    assert t.lookup(STATE, similarity_threshold=1.0) is None  # strictly greater, as the original


def test_minimum_confidence_150_is_inclusive():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=149))
    assert t.lookup(STATE) is None
    t.insert(STATE, conn(confidence=150))
    assert t.lookup(STATE).connection["confidence"] == 150


def test_hypothesis_needs_confidence_200():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=199, mutability=2))
    assert t.lookup(STATE) is None
    t.insert(STATE, conn(confidence=200, mutability=2))
    assert t.lookup(STATE).connection["confidence"] == 200


def test_best_candidate_is_highest_confidence_then_similarity_then_most_recently_written():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(a=1, confidence=240))
    t.insert(STATE, conn(a=2, confidence=250))
    t.insert(STATE, conn(a=3, confidence=245))
    assert t.lookup(STATE).connection["token_a"] == 2
    t.insert(STATE, conn(a=1, confidence=250))  # tie at 250 and similarity 1: the newer write wins
    assert t.lookup(STATE).connection["token_a"] == 1
    # same confidence, different source states in the cell: the more similar wins
    u = ReflexTable.create(10)
    u.insert(coords(L1=(1008, 0, 0)), conn(a=1, confidence=240))
    u.insert(coords(L1=(1023, 15, 0)), conn(a=2, confidence=240))  # the same cell (shift 4)
    assert u.lookup(coords(L1=(1009, 1, 0)), similarity_threshold=0.0).connection["token_a"] == 1
    assert u.lookup(coords(L1=(1022, 14, 0)), similarity_threshold=0.0).connection["token_a"] == 2


def test_an_upsert_replaces_the_source_state_too():
    t = ReflexTable.create(10)
    t.insert(coords(L1=(1008, 0, 0)), conn(confidence=220))
    assert t.insert(coords(L1=(1023, 15, 0)), conn(confidence=250)) == "updated"  # the same cell
    assert len(t) == 1 and t.lookup(coords(L1=(1008, 0, 0))).connection["confidence"] == 250
    assert t.entries()["state"][0][1].tolist() == [1023, 15, 0]
    assert t.insert(STATE, conn(a=1, b=3)) == "inserted"  # another identity: a second candidate
    assert len(t) == 2


def test_a_cell_keeps_at_most_four_candidates_and_the_weakest_is_replaced():
    t = ReflexTable.create(100)
    for a, c in [(1, 200), (2, 180), (3, 220), (4, 190)]:
        assert t.insert(STATE, conn(a=a, confidence=c)) == "inserted"
    assert t.insert(STATE, conn(a=5, confidence=170)) == "replaced"
    assert len(t) == 4
    ids = sorted(int(e.connection["token_a"]) for e in t.items())
    assert ids == [1, 3, 4, 5]  # 2 (confidence 180) was the weakest
    s = t.stats()
    assert s["evictions"] == 1
    t.lookup(STATE)
    assert t.stats()["collisions"] == 1 and t.stats()["candidates"] == 4  # >1 candidate in the cell
    t.check()


def test_cells_with_colliding_grid_hashes_are_told_apart():
    # Layer 0 mixes rotl(y, 18) ^ rotl(z, 24): quantized y = 64 and quantized z = 1 both
    # land on bit 24, so the two cells share a grid hash (but not a cell).
    a = coords(L0=(0, 64 << 4, 0))
    b = coords(L0=(0, 0, 1 << 4))
    ha, fa = state_keys(a)
    hb, fb = state_keys(b)
    assert ha[0] == hb[0] and fa[0] != fb[0]
    t = ReflexTable.create(10)
    t.insert(a, conn(a=1, confidence=230))
    assert t.lookup(b) is None
    t.insert(b, conn(a=7, confidence=240))
    assert t.lookup(a).connection["token_a"] == 1
    assert t.lookup(b).connection["token_a"] == 7
    t.delete(a)
    assert t.lookup(a) is None and t.lookup(b).connection["token_a"] == 7
    t.check()


def test_delete_by_identity_or_whole_cell_and_missing_raises_not_found():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(a=1))
    t.insert(STATE, conn(a=2))
    assert t.delete(STATE, conn(a=1)) == 1 and len(t) == 1
    with pytest.raises(NotFoundError):
        t.delete(STATE, conn(a=1))
    assert t.delete(STATE) == 1 and len(t) == 0
    with pytest.raises(NotFoundError):
        t.delete(STATE)
    assert t.stats()["deletes"] == 2
    t.check()


def test_deleting_keeps_the_records_dense():
    rng = np.random.default_rng(3)
    t = ReflexTable.create(200)
    states = rng.uniform(-1, 1, (150, 8)).astype(np.float32)
    for i in range(150):
        t.insert(states[i], conn(a=i))
    for i in range(0, 150, 3):
        t.delete(states[i])
        t.check()  # records 0..live-1 live, the rest zero; every entry repointed
    assert len(t) == 100
    assert sorted(t.entries()["record"].tolist()) == list(range(100))
    r = t.lookup_batch(states)
    assert r.found.tolist() == [i % 3 != 0 for i in range(150)]


def test_at_capacity_the_weakest_reflex_of_the_window_is_evicted():
    # 12 reflexes: the 32-record eviction window covers the whole table, so the victim is
    # the globally weakest (lowest confidence, then oldest write).
    t = ReflexTable.create(12)
    rng = np.random.default_rng(4)
    states = rng.uniform(-1, 1, (13, 8)).astype(np.float32)
    confs = [200, 180, 250, 180, 240, 230, 220, 210, 205, 199, 201, 202]
    for i in range(12):
        assert t.insert(states[i], conn(a=i, confidence=confs[i])) == "inserted"
    assert t.plan_insert(states[12:13], conn(a=12).reshape(1)).first_eviction == 0
    assert t.would_evict(states[12:13], conn(a=12).reshape(1))
    assert not t.would_evict(states[0:1], conn(a=0).reshape(1))  # an update evicts nothing
    assert t.insert(states[12], conn(a=12, confidence=100)) == "evicted"
    assert len(t) == 12
    left = {int(e.connection["token_a"]) for e in t.items()}
    assert left == set(range(13)) - {1}  # confidence 180, older than #3
    assert t.stats()["evictions"] == 1
    t.check()


def test_the_eviction_window_is_32_records_from_the_fingerprint():
    rng = np.random.default_rng(9)
    t = ReflexTable.create(100)
    states = rng.uniform(-1, 1, (101, 8)).astype(np.float32)
    for i in range(100):
        t.insert(states[i], conn(a=i, confidence=int(rng.integers(150, 256))))
    e = t.entries()
    fp = int(state_keys(states[100:101])[1][0])
    window = [(fp % 100 + k) % 100 for k in range(32)]
    order = sorted(window, key=lambda r: (int(e["connection"]["confidence"][r]), int(e["tick"][r])))
    victim = int(e["connection"]["token_a"][order[0]])
    assert t.insert(states[100], conn(a=100)) == "evicted"
    assert victim not in {int(c) for c in t.entries()["connection"]["token_a"]}
    t.check()


def test_plan_insert_counts_new_reflexes_and_finds_the_first_eviction():
    rng = np.random.default_rng(10)
    states = rng.uniform(-1, 1, (20, 8)).astype(np.float32)
    conns = np.concatenate([conn(a=i).reshape(1) for i in range(20)])
    t = ReflexTable.create(10)
    t.insert_batch(states[:5], conns[:5])
    batch_states = np.concatenate([states[3:5], states[5:9], states[5:6]])    # 2 updates, 4 new, 1 repeat
    batch_conns = np.concatenate([conns[3:5], conns[5:9], conns[5:6]])
    assert t.plan_insert(batch_states, batch_conns) == (4, None)
    big_states = np.concatenate([states[5:15]])
    assert t.plan_insert(big_states, conns[5:15]) == (5, 5)  # 5 + 5 fill it; the 6th evicts
    # four new identities in one cell fill it; a fifth replaces
    same = np.repeat(states[19:20], 5, axis=0)
    assert t.plan_insert(same, np.concatenate([conn(a=100 + i).reshape(1) for i in range(5)])) == (4, 4)
    outcomes = t.insert_batch(big_states, conns[5:15])
    assert outcomes[:6].tolist() == [1, 1, 1, 1, 1, 3]


def test_batch_lookup_equals_single_lookups():
    rng = np.random.default_rng(5)
    t = ReflexTable.create(500, records_per_segment=16, entries_per_segment=16)
    states = rng.uniform(-1, 1, (400, 8)).astype(np.float32)
    confs = rng.integers(100, 256, 400)
    muts = rng.integers(0, 3, 400)
    for i in range(400):
        t.insert(states[i], conn(a=i, confidence=int(confs[i]), mutability=int(muts[i]),
                                 target=rng.integers(-32768, 32767, 8)))
    q = np.concatenate([states, rng.uniform(-1, 1, (100, 8)).astype(np.float32)])
    for params in (None, LookupParams(nearest_fallback=3.0)):
        r = t.lookup_batch(q, params=params)
        for i, s in enumerate(q):
            one = t.lookup_with(params or LookupParams(), s)
            assert r.found[i] == (one is not None)
            assert t.lookup_with(params or LookupParams(), s.tolist()) == one  # list: the f32 entry point
            if one is not None:
                assert r.connections[i].tobytes() == one.connection.tobytes()
                assert np.array_equal(r.action[i], one.action) and r.similarity[i] == np.float32(one.similarity)
                assert r.confidence[i] == one.confidence and r.record[i] == one.record
                assert r.fallback[i] == one.fallback and r.distance[i] == np.float32(one.distance)
            else:
                assert r.record[i] == -1 and not r.action[i].any()
    # the same states as Token records
    r = t.lookup_batch(q)
    tok = np.zeros(len(q), TOKEN_DTYPE)
    tok["coordinates"][:, :, 0] = encode_state(q)
    r2 = t.lookup_batch(tok)
    assert np.array_equal(r.found, r2.found) and np.array_equal(r.record, r2.record)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the test's own casts of 1e39
def test_one_state_in_every_form_answers_as_the_batch_lookup_of_it():
    """The single lookup's shortcuts (a float row passed as Python floats, a Token's bytes
    passed as they are) answer exactly what the general batch path answers."""
    from ngstore import Token

    rng = np.random.default_rng(9)
    t = ReflexTable.create(300)
    states = rng.uniform(-1, 1, (200, 8)).astype(np.float32)
    for i in range(200):
        t.insert(states[i], conn(a=i, target=rng.integers(-32768, 32767, 8)))
    q = np.concatenate([states[:40], rng.uniform(-1, 1, (20, 8)).astype(np.float32),
                        np.full((1, 8), 1e39)]).astype(np.float64)  # beyond float32: saturates
    p = LookupParams(nearest_fallback=2.0)
    expect = t.lookup_batch(q, params=p)
    wide = np.zeros((len(q), 16))
    wide[:, ::2] = q
    for i in range(len(q)):
        forms = [q[i], q[i].astype(np.float32), wide[i, ::2]]  # f64, f32, a strided row
        if np.abs(q[i]).max() < 6e4:
            forms.append(q[i].astype(np.float16).astype(np.float64))
        rec = np.zeros(1, TOKEN_DTYPE)
        rec["id"] = i + 1
        rec["coordinates"][0, :, 0] = encode_state(q[i:i + 1].astype(np.float32))[0]
        tok = Token.from_bytes(rec.tobytes())
        rec = rec[0]
        for form in forms[:3]:
            one = t.lookup_with(p, form)
            assert (one is not None) == bool(expect.found[i])
            if one is not None:
                assert one.record == expect.record[i] and one.similarity == np.float32(expect.similarity[i])
                assert np.array_equal(one.action, expect.action[i])
        by_token = t.lookup_with(p, tok)
        assert by_token == t.lookup_with(p, rec) == t.lookup_with(p, np.asarray(rec["coordinates"]))
        if np.abs(q[i]).max() < 1:
            assert by_token == t.lookup_with(p, q[i].astype(np.float32))
        if len(forms) == 4:
            assert t.lookup_with(p, forms[3]) == t.lookup_with(p, forms[3].tolist())


def test_action_is_the_target_vector_decoded_with_the_layer_scales():
    t = ReflexTable.create(10)
    tv = (-32768, 32767, -1, 1, 12345, -12345, 100, 7)
    t.insert(STATE, conn(target=tv))
    scales = np.array([100, 10000, 1000, 10000, 10000, 10000, 100, 10000], np.float32)
    assert np.array_equal(t.lookup(STATE).action, np.array(tv, np.float32) / scales)


def test_stats_count_lookups_hits_misses_answers_and_writes():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=230))
    t.insert(STATE, conn(confidence=231))
    t.lookup(STATE)
    t.lookup_batch(np.array([STATE, [0] * 8, STATE], np.float32))
    s = t.stats()
    assert (s["lookups"], s["hits"], s["misses"], s["answers"]) == (4, 3, 1, 3)
    assert (s["exact_answers"], s["fallback_answers"]) == (3, 0)
    assert (s["inserts"], s["updates"], s["total_reflexes"]) == (1, 1, 1)
    assert s["hit_rate"] == pytest.approx(0.75) and s["fast_path_hits"] == 3
    assert s["timed_lookups"] >= 3 and s["avg_lookup_ns"] > 0  # the batch is timed, 1 in 64 singles
    t.reset_stats()
    assert t.stats()["lookups"] == 0


# --------------------------------------------------------------------------- the nearest fallback

def _neighbourhood_table() -> tuple[ReflexTable, np.ndarray]:
    """Reflexes at raw L1 x = 1000 + 40 k (shift 4: cells of 16), one per cell."""
    t = ReflexTable.create(100)
    srcs = np.stack([coords(L1=(1000 + 40 * k, 0, 0)) for k in range(5)])
    for k, s in enumerate(srcs):
        t.insert(s, conn(a=k, confidence=230))
    return t, srcs


def test_the_fallback_is_off_by_default_and_answers_the_nearest_within_the_radius():
    t, _ = _neighbourhood_table()
    q = coords(L1=(1017, 0, 0))          # next cell to source 0 (1000), 17 raw = 1.0625 cells away
    assert t.lookup(q) is None
    assert t.lookup(q, nearest_fallback=1.0) is None
    hit = t.lookup(q, nearest_fallback=1.1)
    assert hit is not None and hit.fallback and hit.connection["token_a"] == 0
    assert hit.distance == pytest.approx(17 / 16) and hit.similarity > 0.99
    q2 = coords(L1=(1025, 0, 0))         # 25 from source 0, 15 from source 1 (1040)
    assert t.lookup(q2, nearest_fallback=5.0).connection["token_a"] == 1
    s = t.stats()
    assert s["fallback_answers"] == 2 and s["exact_answers"] == 0 and s["fallback_cells"] > 0


def test_the_fallback_skips_ineligible_reflexes_and_prefers_confidence_on_a_distance_tie():
    t = ReflexTable.create(100)
    t.insert(coords(L1=(1000, 0, 0)), conn(a=1, confidence=140))    # ineligible
    t.insert(coords(L1=(1050, 0, 0)), conn(a=2, confidence=230))
    q = coords(L1=(1020, 0, 0))
    assert t.lookup(q, nearest_fallback=3.0).connection["token_a"] == 2
    u = ReflexTable.create(100)
    u.insert(coords(L1=(1000, 0, 0)), conn(a=1, confidence=200))
    u.insert(coords(L1=(1040, 0, 0)), conn(a=2, confidence=220))    # the same distance from 1020
    assert u.lookup(coords(L1=(1020, 0, 0)), nearest_fallback=3.0).connection["token_a"] == 2


def test_an_exact_answer_wins_over_a_nearer_neighbour_and_fallback_hits_are_counted_apart():
    t = ReflexTable.create(100)
    t.insert(coords(L1=(1008, 0, 0)), conn(a=1, confidence=200))   # cell 63 (shift 4)
    t.insert(coords(L1=(1025, 0, 0)), conn(a=2, confidence=230))   # cell 64
    q = coords(L1=(1023, 0, 0))         # in source 1's cell, 2 raw from source 2
    r = t.lookup_batch(np.stack([q, coords(L1=(1041, 0, 0)), coords(L1=(2000, 0, 0))]), nearest_fallback=2.0)
    assert r.found.tolist() == [True, True, False] and r.fallback.tolist() == [False, True, False]
    assert r.connections["token_a"][:2].tolist() == [1, 2] and r.known.tolist() == [True, False, False]


def test_scanning_and_probing_neighbour_cells_give_the_same_answers():
    rng = np.random.default_rng(12)
    t = ReflexTable.create(2000)
    states = rng.uniform(-0.02, 0.02, (2000, 8)).astype(np.float32)
    t.insert_batch(states, np.concatenate([conn(a=i, confidence=int(rng.integers(150, 256))).reshape(1)
                                           for i in range(2000)]))
    q = states[:300] + rng.normal(0, 0.002, (300, 8)).astype(np.float32)
    for radius in (0.4, 1.2, 3.0):
        probe = t.lookup_batch(q, params=LookupParams(nearest_fallback=radius))
        scan = t.lookup_batch(q, params=LookupParams(nearest_fallback=radius, fallback_budget=1))
        assert np.array_equal(probe.record, scan.record) and np.array_equal(probe.fallback, scan.fallback)
    assert t.stats()["fallback_scans"] > 0


def test_the_box_keeps_float_states_from_probing_y_and_z():
    # 8-float states have Y = Z = 0: a radius of 0.9 cells would otherwise reach the cells
    # just below 0 in all 16 of those coordinates (2^16 combinations per query).
    rng = np.random.default_rng(13)
    t = ReflexTable.create(1000)
    states = rng.uniform(-1, 1, (1000, 8)).astype(np.float32)
    t.insert_batch(states, np.concatenate([conn(a=i).reshape(1) for i in range(1000)]))
    r = t.lookup_batch(states + np.float32(0.0004), nearest_fallback=0.45)
    s = t.stats()
    tried = int(np.count_nonzero(~r.known))
    assert tried > 100 and s["fallback_scans"] == 0 and s["fallback_cells"] < tried * 256


# --------------------------------------------------------------------------- growth, resize, versions

def test_insert_batch_grows_once_for_a_bulk_load_and_reserve_resize_work():
    rng = np.random.default_rng(14)
    t = ReflexTable.create(10_000)
    states = rng.uniform(-1, 1, (5000, 8)).astype(np.float32)
    conns = np.concatenate([conn(a=i).reshape(1) for i in range(5000)])
    t.insert_batch(states, conns)
    assert t.stats()["growths"] == 1 and len(t) == 5000 and t.room >= 5000
    t.reserve(9000)
    assert t.room >= 9000 and t.stats()["growths"] == 2
    with pytest.raises(InvalidArgumentError, match="holds 5000"):
        t.resize(4999)
    t.resize(5000)
    assert t.capacity == 5000 and t.room == 5000 and not t.would_evict(states, conns)
    assert t.insert(rng.uniform(-1, 1, 8).astype(np.float32), conn(a=99_999)) == "evicted"
    t.resize(20_000)
    assert t.capacity == 20_000 and len(t) == 5000 and t.lookup_batch(states).found.sum() == 4999
    t.check()


def test_a_lookup_running_on_a_version_survives_a_growth():
    t = ReflexTable.create(10_000, room=16)
    t.insert(STATE, conn())
    old = t._v  # what a lookup holds while it runs
    for i in range(200):
        t.insert(np.random.default_rng(i).uniform(-1, 1, 8).astype(np.float32), conn(a=i + 10))
    assert t._v is not old and t.stats()["growths"] >= 3
    r = lib_lookup(old)  # the old version's memory is still valid, its answer unchanged
    assert r == 3


def lib_lookup(version: object) -> int:
    from ngstore.reflex import DEFAULT_PARAMS, ffi, lib

    ctx = ffi.new("ng_reflex_ctx *")
    ctx.table = version.handle  # type: ignore[attr-defined]
    return int(lib.ng_reflex_lookup_f32(ctx, DEFAULT_PARAMS._c, *STATE))


def test_segments_reports_only_segments_written_since_the_last_call():
    t = ReflexTable.create(200, room=200, records_per_segment=16, entries_per_segment=16)
    header, segs = t.segments()
    assert len(segs) == t.segment_count and len(header) == 256  # everything is new after create
    assert t.segments()[1] == []
    t.insert(STATE, conn())
    _, segs = t.segments()
    g = t.geometry
    idx = [i for i, _ in segs]
    assert 0 in idx and 2 <= len(segs) <= 3  # record 0's segment, and one or two index segments
    assert all(len(b) == (16 * RECORD_SIZE if i < g.record_segments else 16 * ENTRY_SIZE) for i, b in segs)
    assert parse_header(t.segments()[0])["live_count"] == 1
    for i in range(150):
        t.insert(np.random.default_rng(i).uniform(-1, 1, 8).astype(np.float32), conn(a=i + 10))
    t.segments()
    t.insert(STATE, conn(confidence=240))  # an update: one record segment, no index change
    assert [i for i, _ in t.segments()[1]] == [0]


def test_attach_over_stored_bytes_is_zero_copy_and_read_only():
    t = ReflexTable.create(100, records_per_segment=16, entries_per_segment=16)
    t.insert(STATE, conn())
    header = t.header()
    stored = [bytes(b) for b in t.all_segments()]
    ro = ReflexTable.attach(header, [memoryview(b) for b in stored])
    assert not ro.writable and len(ro) == 1
    assert ro.lookup(STATE).connection.tobytes() == conn().tobytes()
    with pytest.raises(InvalidArgumentError, match="read-only"):
        ro.insert(STATE, conn(a=9))
    with pytest.raises(InvalidArgumentError):
        ReflexTable.attach(header, stored, writable=True)  # bytes are not writable
    ro.check()
    ro.close()
    with pytest.raises(StoreClosedError):
        ro.lookup(STATE)
    with pytest.raises(StoreClosedError):
        len(ro)


def test_a_writable_attached_table_grows_into_memory_of_its_own():
    t = ReflexTable.create(1000, room=16)
    t.insert(STATE, conn())
    bufs = [bytearray(b) for b in t.all_segments()]
    w = ReflexTable.attach(t.header(), bufs, writable=True)
    before = [bytes(b) for b in bufs]
    rng = np.random.default_rng(15)
    w.insert_batch(rng.uniform(-1, 1, (100, 8)).astype(np.float32),
                   np.concatenate([conn(a=i + 10).reshape(1) for i in range(100)]))
    assert len(w) == 101 and w.room >= 101
    assert [bytes(b) for b in bufs] == before  # the caller's buffers were left as they were
    header, segs = w.segments()
    assert len(segs) == w.segment_count == parse_header(header)["segment_count"]  # all new
    w.check()


def test_to_bytes_from_bytes_roundtrip_keeps_every_reflex():
    rng = np.random.default_rng(6)
    t = ReflexTable.create(300, records_per_segment=32)
    states = rng.uniform(-1, 1, (250, 8)).astype(np.float32)
    for i, s in enumerate(states):
        t.insert(s, conn(a=i, confidence=int(rng.integers(150, 256))))
    t2 = ReflexTable.from_bytes(t.to_bytes())
    assert len(t2) == 250 and t2.writable
    assert np.array_equal(t.entries(), t2.entries())
    assert np.array_equal(t.lookup_batch(states).record, t2.lookup_batch(states).record)
    t2.insert(states[0], conn(a=999))
    t2.check()


def test_header_layout_and_crc():
    t = ReflexTable.create(100, room=100, records_per_segment=16, entries_per_segment=16)
    t.insert(coords(L0=(5, -7, 0), L7=(100, 0, -3)), conn())
    h = t.header()
    f = parse_header(h)
    assert h[:8] == b"NGREFLEX" and f["version"] == 2 and (f["record_size"], f["entry_size"]) == (128, 8)
    assert f["crc"] == zlib.crc32(h[:252]) and f["capacity"] == 100 and f["live_count"] == 1
    assert f["records_per_segment"] * f["record_segments"] == t.geometry.records
    assert f["entries_per_segment"] * f["index_segments"] == t.slot_count
    assert f["box_min"][:3] == (5, -7, 0) and f["box_max"][21:] == (100, 0, -3)


def test_entries_report_the_source_state_and_the_keys():
    t = ReflexTable.create(10)
    src = coords(L0=(17, 3, -5), L4=(1000, 0, 0))
    t.insert(src, conn())
    e = t.entries()[0]
    assert e["state"].tolist() == src.tolist()
    h, f = state_keys(src)
    assert (int(e["grid_hash"]), int(e["fingerprint"])) == (int(h[0]), int(f[0]))
    assert int(e["fingerprint"]) == fingerprint_reference(src)


def test_concurrent_batch_lookups_agree_and_counters_add_up():
    rng = np.random.default_rng(7)
    t = ReflexTable.create(5000)
    states = rng.uniform(-1, 1, (5000, 8)).astype(np.float32)
    conns = np.zeros(5000, CONNECTION_DTYPE)
    conns["token_a"] = np.arange(5000)
    conns["confidence"] = 230
    t.insert_batch(states, conns)
    expected = t.lookup_batch(states)
    t.reset_stats()
    results = []

    def worker() -> None:
        for _ in range(5):
            results.append(t.lookup_batch(states).record)
            results.append(np.array([t.lookup(s.tolist()).record for s in states[:50]]))

    ths = [threading.Thread(target=worker) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert all(np.array_equal(r, expected.record[: len(r)]) for r in results)
    assert t.stats()["lookups"] == 20 * 5050


@pytest.mark.parametrize("bad", [None, "abc", 5, [], [0.1] * 7, [0.1] * 9, ["x"] * 8, {"a": 1}, b"x" * 32,
                                 np.zeros((2, 8)), np.zeros((8, 3), np.float32)])
def test_lookup_refuses_what_is_not_one_state_even_on_an_empty_table(bad):
    for t in (ReflexTable.create(10), ReflexTable.create(10)):
        with pytest.raises(InvalidArgumentError):
            t.lookup(bad)
        t.insert(STATE, conn())


def test_bad_inputs_raise_invalid_argument():
    t = ReflexTable.create(10)
    with pytest.raises(InvalidArgumentError):
        t.lookup_batch(np.zeros((3, 7), np.float32))
    with pytest.raises(InvalidArgumentError):
        t.insert(STATE, b"short")
    with pytest.raises(InvalidArgumentError):
        t.insert_batch(np.zeros((2, 8), np.float32), np.zeros(3, CONNECTION_DTYPE))
    with pytest.raises(InvalidArgumentError):
        t.lookup(np.zeros((2, 8)))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError):
            LookupParams(nearest_fallback=bad)
    with pytest.raises(CorruptionError):
        ReflexTable.attach(b"x" * 256, [])


def test_delete_by_key_removes_what_entries_reports():
    t = ReflexTable.create(100)
    c1, c2 = conn(), conn()
    c2["token_a"], c2["token_b"] = 10, 11
    t.insert(STATE, c1)
    t.insert(STATE, c2)
    e = t.entries()
    key = (int(e["grid_hash"][0]), int(e["fingerprint"][0]))
    assert t.delete_key(*key, c2) == 1 and len(t) == 1
    with pytest.raises(NotFoundError):
        t.delete_key(key[0] ^ 1, key[1])
    assert t.delete_key(*key) == 1 and len(t) == 0
    with pytest.raises(NotFoundError):
        t.delete_key(*key)
    t.check()


def test_every_int16_target_decodes_like_a_float32_division():
    # C multiplies by 1/scale in double; this must round like numpy's float32 division.
    values = np.arange(-32768, 32768, dtype=np.int32)
    n = values.size
    rng = np.random.default_rng(16)
    states = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    c = np.zeros(n, CONNECTION_DTYPE)
    c["token_a"], c["confidence"] = np.arange(n), 230
    c["target_vector"] = np.repeat(values[:, None], 8, axis=1).astype(np.int16)
    t = ReflexTable.create(n, room=n)
    t.insert_batch(states, c)
    r = t.lookup_batch(states)
    assert r.found.all()
    scales = np.array([100, 10000, 1000, 10000, 10000, 10000, 100, 10000], np.float32)
    want = c["target_vector"][r.record].astype(np.float32) / scales
    assert np.array_equal(r.action, want)
