"""The persistent reflex table (csrc/reflex.c through ngstore.reflex): unit specifications."""
from __future__ import annotations

import os
import threading
import zlib

import numpy as np
import pytest
import xxhash

from ngstore.codec import DEFAULT_SHIFTS, encode_state
from ngstore.errors import CorruptionError, InvalidArgumentError, NotFoundError, StoreClosedError
from ngstore.records import CONNECTION_DTYPE, TOKEN_DTYPE
from ngstore.reflex import (
    SLOT_SIZE,
    ReflexTable,
    fingerprint_reference,
    parse_header,
    quantized_state_bytes,
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
    for c, fp in zip(raw[:2000], fps):
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


# --------------------------------------------------------------------------- create / insert / lookup

def test_create_sizes_segments_for_a_load_factor_of_at_most_three_quarters():
    t = ReflexTable.create(1000, slots_per_segment=64)
    assert t.capacity == 1000 and t.slots_per_segment == 64
    assert t.slot_count * 3 >= t.capacity * 4 and t.slot_count == t.segment_count * 64
    assert len(t) == 0 and t.shifts == tuple(DEFAULT_SHIFTS)
    with pytest.raises(InvalidArgumentError):
        ReflexTable.create(0)
    with pytest.raises(InvalidArgumentError):
        ReflexTable.create(10, slots_per_segment=100)  # not a power of two
    with pytest.raises(InvalidArgumentError):
        ReflexTable.create(10, shifts=[4, 4, 5, 6, 6, 6, 8, 16])


def test_insert_then_lookup_returns_record_action_and_similarity():
    t = ReflexTable.create(100)
    assert t.insert(STATE, conn()) == "inserted"
    hit = t.lookup(STATE)
    assert hit is not None
    assert hit.connection.tobytes() == conn().tobytes()
    assert np.allclose(hit.action, STATE) and hit.action.dtype == np.float32
    assert hit.similarity == pytest.approx(230 / 255)
    assert t.lookup([0.0] * 8) is None


def test_same_state_and_identity_is_an_upsert():
    t = ReflexTable.create(100)
    t.insert(STATE, conn(confidence=220))
    assert t.insert(STATE, conn(confidence=250)) == "updated"
    assert len(t) == 1 and t.lookup(STATE).connection["confidence"] == 250
    assert t.insert(STATE, conn(a=1, b=3)) == "inserted"  # another identity: a second candidate
    assert len(t) == 2


def test_minimum_confidence_150_is_inclusive():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=149))
    assert t.lookup(STATE, similarity_threshold=0.0) is None
    t.insert(STATE, conn(confidence=150))
    assert t.lookup(STATE, similarity_threshold=0.0).connection["confidence"] == 150


def test_hypothesis_needs_confidence_200():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=199, mutability=2))
    assert t.lookup(STATE, similarity_threshold=0.0) is None
    t.insert(STATE, conn(confidence=200, mutability=2))
    assert t.lookup(STATE, similarity_threshold=0.0).connection["confidence"] == 200


def test_similarity_rule_answers_217_but_not_216():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(confidence=216))
    assert t.lookup(STATE) is None
    r = t.lookup_batch(np.array([STATE], np.float32))
    assert not r.found[0] and r.known[0] and r.slot[0] == -1
    t.insert(STATE, conn(confidence=217))
    assert t.lookup(STATE).similarity == pytest.approx(217 / 255)


def test_best_candidate_is_highest_confidence_then_most_recently_written():
    t = ReflexTable.create(10)
    t.insert(STATE, conn(a=1, confidence=240))
    t.insert(STATE, conn(a=2, confidence=250))
    t.insert(STATE, conn(a=3, confidence=245))
    assert t.lookup(STATE).connection["token_a"] == 2
    t.insert(STATE, conn(a=1, confidence=250))  # tie at 250: the newer write wins
    assert t.lookup(STATE).connection["token_a"] == 1


def test_a_state_keeps_at_most_four_candidates_and_the_weakest_is_replaced():
    t = ReflexTable.create(100)
    for a, c in [(1, 200), (2, 180), (3, 220), (4, 190)]:
        assert t.insert(STATE, conn(a=a, confidence=c)) == "inserted"
    assert t.insert(STATE, conn(a=5, confidence=170)) == "replaced"
    assert len(t) == 4
    ids = sorted(int(e.connection["token_a"]) for e in t.items())
    assert ids == [1, 3, 4, 5]  # 2 (confidence 180) was the weakest
    assert t.stats()["evictions"] == 1
    t.check()


def test_states_with_colliding_grid_hashes_are_told_apart_by_the_fingerprint():
    # Layer 0 mixes rotl(y, 18) ^ rotl(z, 24): quantized y = 64 and quantized z = 1 both
    # land on bit 24, so the two cells share a grid hash.
    a = coords(L0=(0, 64 << 4, 0))
    b = coords(L0=(0, 0, 1 << 4))
    ha, fa = state_keys(a)
    hb, fb = state_keys(b)
    assert ha[0] == hb[0] and fa[0] != fb[0]
    t = ReflexTable.create(10)
    t.insert(a, conn(a=1, confidence=230))
    assert t.lookup(b) is None
    assert t.stats()["collisions"] == 1
    t.insert(b, conn(a=7, confidence=240))
    assert t.lookup(a).connection["token_a"] == 1
    assert t.lookup(b).connection["token_a"] == 7
    t.delete(a)
    assert t.lookup(a) is None and t.lookup(b).connection["token_a"] == 7
    t.check()


def test_delete_by_identity_or_whole_state_and_missing_raises_not_found():
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


def test_at_capacity_the_weakest_reflex_of_the_window_is_evicted():
    # 12 reflexes in 16 slots: the 32-slot eviction window covers the whole table, so the
    # victim is the globally weakest (lowest confidence, then oldest write).
    t = ReflexTable.create(12)
    assert t.slot_count <= 32
    rng = np.random.default_rng(4)
    states = rng.uniform(-1, 1, (13, 8)).astype(np.float32)
    confs = [200, 180, 250, 180, 240, 230, 220, 210, 205, 199, 201, 202]
    for i in range(12):
        assert t.insert(states[i], conn(a=i, confidence=confs[i])) == "inserted"
    assert t.insert(states[12], conn(a=12, confidence=100)) == "evicted"
    assert len(t) == 12
    left = {int(e.connection["token_a"]) for e in t.items()}
    assert left == set(range(13)) - {1}  # confidence 180, older than #3
    assert t.stats()["evictions"] == 1
    t.check()


def test_batch_lookup_equals_single_lookups():
    rng = np.random.default_rng(5)
    t = ReflexTable.create(500, slots_per_segment=16)
    states = rng.uniform(-1, 1, (400, 8)).astype(np.float32)
    confs = rng.integers(100, 256, 400)
    muts = rng.integers(0, 3, 400)
    for i in range(400):
        t.insert(states[i], conn(a=i, confidence=int(confs[i]), mutability=int(muts[i]),
                                 target=rng.integers(-32768, 32767, 8)))
    q = np.concatenate([states, rng.uniform(-1, 1, (100, 8)).astype(np.float32)])
    r = t.lookup_batch(q)
    for i, s in enumerate(q):
        one = t.lookup(s)
        assert r.found[i] == (one is not None)
        if one is not None:
            assert r.connections[i].tobytes() == one.connection.tobytes()
            assert np.array_equal(r.action[i], one.action) and r.similarity[i] == np.float32(one.similarity)
            assert r.confidence[i] == one.connection["confidence"]
        else:
            assert r.slot[i] == -1 and not r.action[i].any()
    # the same states as Token records
    tok = np.zeros(len(q), TOKEN_DTYPE)
    tok["coordinates"][:, :, 0] = encode_state(q)
    r2 = t.lookup_batch(tok)
    assert np.array_equal(r.found, r2.found) and np.array_equal(r.slot, r2.slot)


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
    assert (s["inserts"], s["updates"], s["total_reflexes"]) == (1, 1, 1)
    assert s["hit_rate"] == pytest.approx(0.75) and s["fast_path_hits"] == 3
    t.reset_stats()
    assert t.stats()["lookups"] == 0


def test_segments_reports_only_segments_written_since_the_last_call():
    t = ReflexTable.create(200, slots_per_segment=16)
    header, segs = t.segments()
    assert len(segs) == t.segment_count and len(header) == 128  # everything is new after create
    assert t.segments()[1] == []
    t.insert(STATE, conn())
    _, segs = t.segments()
    assert 1 <= len(segs) <= 2 and all(len(b) == 16 * SLOT_SIZE for _, b in segs)
    slot = next(iter(t.items())).slot
    assert slot // 16 in [i for i, _ in segs]
    assert parse_header(t.segments()[0])["live_count"] == 1


def test_attach_over_stored_bytes_is_zero_copy_and_read_only():
    t = ReflexTable.create(100, slots_per_segment=16)
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


def test_to_bytes_from_bytes_roundtrip_keeps_every_reflex():
    rng = np.random.default_rng(6)
    t = ReflexTable.create(300, slots_per_segment=32)
    states = rng.uniform(-1, 1, (250, 8)).astype(np.float32)
    for i, s in enumerate(states):
        t.insert(s, conn(a=i, confidence=int(rng.integers(150, 256))))
    t2 = ReflexTable.from_bytes(t.to_bytes())
    assert len(t2) == 250 and t2.writable
    assert np.array_equal(t.entries(), t2.entries())
    assert np.array_equal(t.lookup_batch(states).slot, t2.lookup_batch(states).slot)
    t2.insert(states[0], conn(a=999))
    t2.check()


def test_header_layout_and_crc():
    t = ReflexTable.create(100, slots_per_segment=16)
    h = t.header()
    f = parse_header(h)
    assert h[:8] == b"NGREFLEX" and f["version"] == 1 and f["slot_size"] == 96
    assert f["crc"] == zlib.crc32(h[:124]) and f["capacity"] == 100
    assert f["slots_per_segment"] * f["segment_count"] == t.slot_count


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
            results.append(t.lookup_batch(states).slot)

    ths = [threading.Thread(target=worker) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert all(np.array_equal(r, expected.slot) for r in results)
    assert t.stats()["lookups"] == 20 * 5000


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
    with pytest.raises(CorruptionError):
        ReflexTable.attach(b"x" * 128, [])


def test_delete_by_key_removes_what_entries_reports():
    t = ReflexTable.create(100)
    c1, c2 = conn(), conn()
    c2["token_a"], c2["token_b"] = 10, 11
    t.insert(STATE, c1)
    t.insert(STATE, c2)
    e = t.entries()
    key = (int(e["grid_hash"][0]), int(e["fingerprint"][0]))
    assert t.delete_key(*key, c2) == 1 and len(t) == 1
    assert t.delete_key(*key) == 1 and len(t) == 0
    with pytest.raises(NotFoundError):
        t.delete_key(*key)
    t.check()
