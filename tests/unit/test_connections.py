"""Connection v3: defaults, type blocks, the learning arithmetic, views and conversions."""
from __future__ import annotations

import math
import pickle
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ngstore.connections import (
    Connection,
    ConnectionArray,
    activate_all,
    apply_decay_all,
    as_connection_array,
    canonicalize,
    decode_action,
    encode_action,
    mutability_for_type,
    new_connections,
    update_confidence_all,
)
from ngstore.errors import InvalidArgumentError
from ngstore.records import CONNECTION_DTYPE, ConnectionFlags, Mutability

F = ConnectionFlags
f32 = np.float32


# -- reference arithmetic written independently (scalar f32, as connection_v3.rs) ----------

def ref_update(conf: int, lr: int, success: bool) -> int:
    c = f32(conf) / f32(255)
    step = f32(lr) / f32(255)
    new = min(c + step, f32(1)) if success else max(c - step * f32(0.5), f32(0))
    return int(f32(new) * f32(255))  # Rust `as u8` truncates


def ref_decay(conf: int, dr: int) -> int:
    return int(f32(f32(conf) / f32(255) * (f32(1) - f32(dr) / f32(255))) * f32(255))


# -- defaults -----------------------------------------------------------------------------

def test_new_connection_has_the_original_defaults():
    c = Connection(7, 3, now=1_700_000_000)
    assert (c.token_a, c.token_b) == (3, 7)
    assert c.connection_type == 0x50
    assert c.rigidity == 128 and c.active_levels == 0 and c.flags == 0
    assert c.activation_count == 0 and c.pull_strength == 0.0 and c.preferred_distance == 1.0
    assert c.created_at == 1_700_000_000 and c.last_update == 1_700_000_000 and c.last_activation == 0
    assert c.mutability is Mutability.LEARNABLE
    assert c.confidence_raw == 128 and c.confidence == pytest.approx(128 / 255)
    assert c.evidence_count == 0 and c.learning_rate == 32 and c.decay_rate == 16
    assert c.source_id == 0 and list(c.target_vector) == [0] * 8
    assert c.record["pad"][0] == 0


def test_new_connection_stamps_the_current_time_in_seconds():
    before = int(time.time())
    c = Connection(1, 2)
    assert before <= c.created_at == c.last_update <= int(time.time())


def test_canonical_order_puts_the_smaller_id_first_and_allows_equal_ids():
    assert (Connection(9, 2).token_a, Connection(9, 2).token_b) == (2, 9)
    c = Connection(5, 5)
    assert (c.token_a, c.token_b) == (5, 5)


def test_token_ids_must_be_u32():
    with pytest.raises(InvalidArgumentError):
        Connection(-1, 2)
    with pytest.raises(InvalidArgumentError):
        Connection(1, 2**32)
    c = Connection(0, 2**32 - 1)
    assert c.token_b == 2**32 - 1


def test_keyword_fields_are_applied_through_the_setters():
    c = Connection(1, 2, pull_strength=5.0, rigidity=180, confidence_raw=200, evidence_count=15)
    assert (c.pull_strength, c.rigidity, c.confidence_raw, c.evidence_count) == (5.0, 180, 200, 15)
    with pytest.raises(InvalidArgumentError):
        Connection(1, 2, no_such_field=1)
    with pytest.raises(InvalidArgumentError):
        Connection(1, 2, rigidity=300)


# -- type blocks ----------------------------------------------------------------------------

BLOCKS = [
    (0x00, Mutability.IMMUTABLE), (0x10, Mutability.LEARNABLE), (0x20, Mutability.LEARNABLE),
    (0x30, Mutability.IMMUTABLE), (0x40, Mutability.IMMUTABLE), (0x50, Mutability.LEARNABLE),
    (0x60, Mutability.IMMUTABLE), (0x70, Mutability.LEARNABLE), (0x80, Mutability.LEARNABLE),
    (0x90, Mutability.IMMUTABLE), (0xA0, Mutability.LEARNABLE),
]


@pytest.mark.parametrize("start,mutability", BLOCKS)
def test_every_code_of_a_block_gets_the_block_mutability(start, mutability):
    for code in (start, start + 7, start + 15):
        c = Connection(1, 2)
        c.set_connection_type(code)
        assert c.connection_type == code
        assert c.mutability is mutability
        assert c.confidence_raw == (255 if mutability is Mutability.IMMUTABLE else 128)


def test_codes_above_0xAF_are_guessed_learnable():
    for code in (0xB0, 0xFF):
        assert mutability_for_type(code) is Mutability.LEARNABLE
        assert Connection(1, 2, code).mutability is Mutability.LEARNABLE


def test_leaving_an_immutable_type_keeps_confidence_255():
    c = Connection(1, 2, 0x00)
    c.connection_type = 0x50
    assert c.mutability is Mutability.LEARNABLE and c.confidence_raw == 255


def test_constructor_type_applies_the_block_rule():
    c = Connection(1, 2, 0x31)
    assert c.mutability is Mutability.IMMUTABLE and c.confidence_raw == 255


def test_vectorised_mutability_table_matches_the_scalar_one():
    codes = np.arange(256, dtype=np.uint8)
    table = mutability_for_type(codes)
    assert [int(m) for m in table] == [int(mutability_for_type(int(c))) for c in codes]


# -- activate -------------------------------------------------------------------------------

def test_activate_counts_stamps_and_reinforces_a_learnable_connection():
    c = Connection(1, 2, now=10)
    c.activate(now=500)
    assert c.activation_count == 1 and c.last_activation == 500
    assert c.flags == F.ACTIVE | F.REINFORCED
    assert c.rigidity == 129


def test_activate_does_not_reinforce_immutable_or_hypothesis_connections():
    for mut in (Mutability.IMMUTABLE, Mutability.HYPOTHESIS):
        c = Connection(1, 2, now=10)
        c.mutability = mut
        c.activate(now=20)
        assert c.flags == F.ACTIVE and c.rigidity == 128 and c.activation_count == 1


def test_activate_saturates_the_counter_and_rigidity():
    c = Connection(1, 2, activation_count=2**32 - 1, rigidity=255)
    c.activate(now=1)
    assert c.activation_count == 2**32 - 1 and c.rigidity == 255


# -- update_confidence ----------------------------------------------------------------------

def test_success_adds_the_learning_step_and_counts_evidence():
    c = Connection(1, 2, now=10)
    c.update_confidence(True, now=99)
    assert c.confidence_raw == 160 and c.evidence_count == 1
    assert c.flags == F.MODIFIED and c.last_update == 99


def test_failure_subtracts_half_a_step_without_evidence():
    c = Connection(1, 2, now=10)
    c.update_confidence(False, now=99)
    assert c.confidence_raw == 112 and c.evidence_count == 0
    assert c.flags == F.MODIFIED and c.last_update == 99


def test_the_stored_confidence_is_floored_not_rounded():
    c = Connection(1, 2, confidence_raw=100, learning_rate=1)
    c.update_confidence(False, now=1)  # 99.5/255 -> 99
    assert c.confidence_raw == 99


def test_the_arithmetic_is_float32_like_the_original():
    # exact rational arithmetic would give 2 (3/255 - 1/255); f32 lands just below 2
    c = Connection(1, 2, confidence_raw=3, learning_rate=2)
    c.update_confidence(False, now=1)
    assert c.confidence_raw == 1


def test_confidence_is_capped_at_255_and_floored_at_0():
    c = Connection(1, 2, confidence_raw=250)
    c.update_confidence(True, now=1)
    assert c.confidence_raw == 255
    c = Connection(1, 2, confidence_raw=10, learning_rate=255)
    c.update_confidence(False, now=1)
    assert c.confidence_raw == 0


def test_evidence_count_saturates_at_u16_max():
    c = Connection(1, 2, evidence_count=0xFFFF)
    c.update_confidence(True, now=1)
    assert c.evidence_count == 0xFFFF


def test_update_confidence_leaves_an_immutable_connection_untouched():
    c = Connection(1, 2, 0x00, now=10)
    before = c.to_bytes()
    c.update_confidence(False, now=99)
    c.update_confidence(True, now=99)
    assert c.to_bytes() == before


def test_vectorised_update_matches_the_reference_on_random_records():
    rng = np.random.default_rng(7)
    n = 2000
    arr = new_connections(np.arange(n), np.arange(n) + 1, now=5)
    arr["confidence"] = rng.integers(0, 256, n)
    arr["learning_rate"] = rng.integers(0, 256, n)
    success = rng.random(n) < 0.5
    expected = [ref_update(int(c), int(lr), bool(s))
                for c, lr, s in zip(arr["confidence"], arr["learning_rate"], success, strict=True)]
    update_confidence_all(arr, success, now=6)
    assert arr["confidence"].tolist() == expected
    assert arr["evidence_count"].tolist() == success.astype(int).tolist()


# -- apply_decay ----------------------------------------------------------------------------

def hypothesis(conf: int, last_update: int = 1000, decay_rate: int = 16) -> Connection:
    c = Connection(1, 2, now=last_update, confidence_raw=conf, decay_rate=decay_rate)
    c.mutability = Mutability.HYPOTHESIS
    c.flags = F.ACTIVE
    return c


def test_decay_waits_for_more_than_3600_seconds():
    c = hypothesis(200)
    assert c.apply_decay(now=1000 + 3600) is False
    assert c.confidence_raw == 200 and c.flags == F.ACTIVE


def test_decay_multiplies_confidence_and_flags_decaying():
    c = hypothesis(200)
    assert c.apply_decay(now=1000 + 3601) is True
    assert c.confidence_raw == 187  # floor(200 * 239/255 = 187.45)
    assert c.flags == F.ACTIVE | F.DECAYING
    assert c.last_update == 1000  # the original does not move it


def test_decay_clears_active_below_25():
    c = hypothesis(26)  # 26 * 239/255 = 24.4 -> 24
    c.apply_decay(now=10_000)
    assert c.confidence_raw == 24 and c.flags == F.DECAYING
    c = hypothesis(27)  # 25.3 -> 25 stays active
    c.apply_decay(now=10_000)
    assert c.confidence_raw == 25 and c.flags == F.ACTIVE | F.DECAYING


def test_decay_uses_float32_floor():
    c = hypothesis(3, decay_rate=85)  # exact arithmetic: 2; f32: just below 2
    c.apply_decay(now=10_000)
    assert c.confidence_raw == ref_decay(3, 85) == 1


def test_only_hypotheses_decay():
    for mut in (Mutability.IMMUTABLE, Mutability.LEARNABLE):
        c = hypothesis(200)
        c.mutability = mut
        assert c.apply_decay(now=1_000_000) is False and c.confidence_raw == 200


def test_a_last_update_in_the_future_never_decays():
    c = hypothesis(200, last_update=50_000)
    assert c.apply_decay(now=1000) is False


def test_vectorised_decay_returns_the_mask_of_decayed_records():
    arr = new_connections([1, 2, 3], [4, 5, 6], now=0)
    arr["mutability"] = [2, 1, 2]
    arr["last_update"] = [0, 0, 9000]
    mask = apply_decay_all(arr, now=5000)
    assert mask.tolist() == [True, False, False]


# -- force -----------------------------------------------------------------------------------

def test_force_scales_by_rigidity_pull_and_confidence():
    c = Connection(1, 2, rigidity=255, pull_strength=2.0, preferred_distance=1.0)
    expected = f32(0.5) * f32(1.0) * f32(2.0) * (f32(128) / f32(255))
    assert c.calculate_force(0.5) == pytest.approx(float(expected), rel=1e-6)


def test_force_of_an_immutable_connection_ignores_confidence():
    c = Connection(1, 2, 0x00, rigidity=255, pull_strength=2.0)
    assert c.calculate_force(3.0) == pytest.approx(-4.0)


# -- setters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("rigidity", 256), ("rigidity", -1), ("rigidity", 1.5), ("rigidity", True),
    ("confidence", 1.01), ("confidence", -0.1), ("confidence", float("nan")),
    ("pull_strength", float("nan")), ("pull_strength", float("inf")), ("pull_strength", "1"),
    ("mutability", 3), ("evidence_count", 0x10000), ("activation_count", 2**32),
    ("learning_rate", 256), ("source_id", -1),
])
def test_setters_reject_out_of_range_values(field, value):
    c = Connection(1, 2)
    with pytest.raises(InvalidArgumentError):
        setattr(c, field, value)


def test_confidence_setter_stores_the_floor():
    c = Connection(1, 2)
    c.confidence = 0.5
    assert c.confidence_raw == 127
    c.confidence = 1.0
    assert c.confidence_raw == 255


def test_token_setters_keep_canonical_order():
    c = Connection(3, 8)
    with pytest.raises(InvalidArgumentError):
        c.token_a = 9
    with pytest.raises(InvalidArgumentError):
        c.token_b = 2
    c.token_a = 8
    assert (c.token_a, c.token_b) == (8, 8)


# -- action / target_vector ----------------------------------------------------------------

def test_action_is_the_target_vector_decoded_with_the_token_scales():
    c = Connection(1, 2)
    c.target_vector = np.array([100, 10000, 1000, 10000, 10000, 10000, 100, 10000])
    assert c.action.tolist() == [1.0] * 8
    c.action = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert c.target_vector.tolist() == [10, 2000, 300, 4000, 5000, 6000, 70, 8000]


def test_action_encoding_truncates_saturates_and_zeroes_nan():
    raw = encode_action([np.nan, 5.0, -100.0, np.inf, -np.inf, 0.00019, -0.00019, 0])
    assert raw.tolist() == [0, 32767, -32768, 32767, -32768, 1, 0, 0]
    assert encode_action(np.full(8, 0.7, dtype=np.float32))[0] == 70  # f32 product, like the original
    assert decode_action(np.array([1, 1, 1, 1, 1, 1, 1, 1])).tolist()[0] == 0.01


def test_target_vector_setter_rejects_wrong_shapes_and_ranges():
    c = Connection(1, 2)
    with pytest.raises(InvalidArgumentError):
        c.target_vector = [1, 2, 3]
    with pytest.raises(InvalidArgumentError):
        c.target_vector = [40000] + [0] * 7
    with pytest.raises(InvalidArgumentError):
        c.action = [1.0] * 7


# -- bytes -------------------------------------------------------------------------------------

def test_bytes_round_trip_and_follow_the_layout():
    c = Connection(0x01020304, 0x0A0B0C0D, 0x21, now=1_700_000_000, pull_strength=0.5,
                   confidence_raw=200, evidence_count=0x1234, source_id=9)
    c.target_vector = np.arange(8) - 4
    raw = c.to_bytes()
    assert len(raw) == 64
    assert struct.unpack_from("<IIBBBB", raw, 0) == (0x01020304, 0x0A0B0C0D, 0x21, 128, 0, 0)
    assert struct.unpack_from("<f", raw, 16)[0] == 0.5
    assert raw[33] == 200 and struct.unpack_from("<H", raw, 34)[0] == 0x1234
    assert struct.unpack_from("<I", raw, 44)[0] == 9
    assert list(struct.unpack_from("<8h", raw, 48)) == list(range(-4, 4))
    assert Connection.from_bytes(raw) == c


def test_from_bytes_rejects_a_wrong_length():
    with pytest.raises(InvalidArgumentError):
        Connection.from_bytes(b"\0" * 63)


def test_repr_names_the_ends_and_the_type():
    assert repr(Connection(2, 1, now=0)).startswith("Connection(a=1, b=2, type=0x50, mutability=LEARNABLE")


# -- ConnectionArray -------------------------------------------------------------------------

def test_connection_array_is_a_sequence_of_views():
    ca = ConnectionArray.new([5, 1, 7], [2, 3, 9], now=100)
    assert len(ca) == 3
    assert ca.token_a.tolist() == [2, 1, 7] and ca.token_b.tolist() == [5, 3, 9]
    ca[1].rigidity = 200  # writes through to the array
    assert ca.rigidity.tolist() == [128, 200, 128]
    assert [c.token_a for c in ca] == [2, 1, 7]
    sub = ca[1:]
    assert isinstance(sub, ConnectionArray) and len(sub) == 2
    sub.data["source_id"] = 4  # a slice is a view
    assert ca.source_id.tolist() == [0, 4, 4]
    assert ca[-1].token_b == 9
    with pytest.raises(IndexError):
        ca[3]


def test_connection_array_columns_are_views_except_derived_ones():
    ca = ConnectionArray.new([1, 2], [3, 4], now=0)
    ca.confidence_raw[:] = 255
    assert ca.confidence.tolist() == [1.0, 1.0]
    ca.target_vector[0] = [100] * 8
    assert ca.action[0, 0] == 1.0
    with pytest.raises(AttributeError):
        ca.no_such_column  # noqa: B018 - the lookup itself raises


def test_connection_array_from_array_checks_the_dtype():
    with pytest.raises(InvalidArgumentError):
        ConnectionArray.from_array(np.zeros(3, dtype=np.uint8))
    arr = new_connections([1], [2], now=0)
    assert ConnectionArray.from_array(arr).data is arr
    assert ConnectionArray.from_array(arr, copy=True).data is not arr


def test_connection_array_bytes_round_trip():
    ca = ConnectionArray.new([1, 2, 3], [4, 5, 6], now=0)
    assert ConnectionArray.from_bytes(ca.to_bytes()) == ca


def test_connection_array_vectorised_methods_match_the_scalar_ones():
    ca = ConnectionArray.new([1, 2], [3, 4], now=0)
    single = Connection(1, 3, now=0)
    ca.activate(now=7, where=[True, False])
    single.activate(now=7)
    assert ca[0] == single and ca[1].activation_count == 0
    ca.update_confidence([False, True], now=8)
    assert ca.confidence_raw.tolist() == [112, 160]
    assert ca.calculate_force(0.0).shape == (2,)


# -- as_connection_array / canonicalize -----------------------------------------------------

def test_as_connection_array_accepts_every_connection_form():
    arr = new_connections([1, 2], [3, 4], now=0)
    assert as_connection_array(arr) is arr
    assert len(as_connection_array(ConnectionArray(arr))) == 2
    assert len(as_connection_array(Connection(1, 2))) == 1
    assert len(as_connection_array([Connection(1, 2), Connection(3, 4)])) == 2
    assert len(as_connection_array(arr[0])) == 1
    assert len(as_connection_array([])) == 0
    assert len(as_connection_array(new_connections([5], [5], now=0))) == 1  # a == b allowed


@pytest.mark.parametrize("bad", [np.zeros(2, dtype=np.uint8), np.zeros((2, 2), dtype=CONNECTION_DTYPE),
                                 [Connection(1, 2), 3], "connections", 42])
def test_as_connection_array_rejects_other_input(bad):
    with pytest.raises(InvalidArgumentError):
        as_connection_array(bad)


def test_as_connection_array_rejects_non_canonical_records():
    arr = new_connections([1], [2], now=0)
    arr["token_a"], arr["token_b"] = 9, 2
    with pytest.raises(InvalidArgumentError, match="canonicalize"):
        as_connection_array(arr)
    fixed = canonicalize(arr)
    assert (fixed["token_a"][0], fixed["token_b"][0]) == (2, 9)
    assert arr["token_a"][0] == 9  # not in place by default
    canonicalize(arr, inplace=True)
    assert as_connection_array(arr)["token_a"][0] == 2


def test_activate_all_rejects_a_wrong_mask():
    with pytest.raises(InvalidArgumentError):
        activate_all(new_connections([1], [2], now=0), now=1, where=[True, False])


# -- the light object against the numpy record, byte for byte (Hypothesis) -----------------------
# An owned Connection (immutable bytes until its first write), a row of a ConnectionArray (a
# memoryview) and the numpy record must read the same values and, after the same setters and
# learning steps, hold the same 64 bytes.

IMAGES = st.binary(min_size=64, max_size=64)
U8, U16, U32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)


def three_views(image: bytes) -> tuple[Connection, Connection, np.ndarray, ConnectionArray]:
    owned = Connection.from_bytes(image)
    arr = ConnectionArray.from_bytes(bytes(64) + image + bytes(64))
    rec = np.frombuffer(bytearray(image), dtype=CONNECTION_DTYPE)
    return owned, arr[1], rec, arr


def same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))


INT_FIELDS = ["token_a", "token_b", "connection_type", "rigidity", "active_levels", "activation_count",
              "created_at", "last_activation", "evidence_count", "last_update", "learning_rate",
              "decay_rate", "source_id"]


@settings(max_examples=300, deadline=None)
@given(IMAGES)
def test_every_getter_reads_what_the_numpy_record_holds(image):
    owned, row, rec, _ = three_views(image)
    for c in (owned, row):
        for name in INT_FIELDS:
            assert getattr(c, name) == int(rec[name][0]), name
        assert c.flags == ConnectionFlags(int(rec["flags"][0])) and isinstance(c.flags, ConnectionFlags)
        assert same_float(c.pull_strength, float(rec["pull_strength"][0]))
        assert same_float(c.preferred_distance, float(rec["preferred_distance"][0]))
        assert c.confidence_raw == int(rec["confidence"][0]) and c.confidence == int(rec["confidence"][0]) / 255.0
        m = int(rec["mutability"][0])
        if m <= 2:
            assert c.mutability is Mutability(m)
        else:
            with pytest.raises(ValueError):
                c.mutability  # noqa: B018 - the getter raises
        assert c.target_vector.tolist() == rec["target_vector"][0].tolist() and c.target_vector.dtype == np.int16
        assert c.action.tolist() == decode_action(rec["target_vector"][0]).tolist()
        assert c.to_bytes() == image and c.record.tobytes() == image and np.asarray(c).tobytes() == image


def _numpy_reference(rec: np.ndarray, name: str, value) -> None:
    """What each setter must do to the record, in numpy (float32 casts, the vectorised rules)."""
    if name == "connection_type":
        rec["connection_type"] = value
        rec["mutability"] = int(mutability_for_type(value))
        if rec["mutability"][0] == Mutability.IMMUTABLE:
            rec["confidence"] = 255
    elif name == "confidence":
        rec["confidence"] = min(255, int(np.floor(np.float32(value) * np.float32(255))))
    elif name == "confidence_raw":
        rec["confidence"] = value
    elif name in ("pull_strength", "preferred_distance"):
        rec[name] = np.float32(value)
    elif name == "action":
        rec["target_vector"] = encode_action(np.array(value))
    else:
        rec[name] = value


FINITE32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
SETTERS = st.one_of(
    st.tuples(st.sampled_from(["rigidity", "active_levels", "flags", "learning_rate", "decay_rate",
                               "confidence_raw", "connection_type"]), U8),
    st.tuples(st.sampled_from(["activation_count", "created_at", "last_activation", "last_update",
                               "source_id"]), U32),
    st.tuples(st.just("evidence_count"), U16),
    st.tuples(st.just("mutability"), st.integers(0, 2)),
    st.tuples(st.sampled_from(["pull_strength", "preferred_distance"]), FINITE32),
    st.tuples(st.just("confidence"), st.floats(0.0, 1.0)),
    st.tuples(st.just("target_vector"), st.lists(st.integers(-32768, 32767), min_size=8, max_size=8)),
    st.tuples(st.just("action"), st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=8, max_size=8)),
)


@settings(max_examples=500, deadline=None)
@given(IMAGES, st.lists(SETTERS, min_size=1, max_size=4))
def test_every_setter_writes_the_bytes_the_numpy_record_gets(image, steps):
    owned, row, rec, arr = three_views(image)
    for name, value in steps:
        v = np.array(value) if name == "target_vector" else value
        setattr(owned, name, v)
        setattr(row, name, v)
        _numpy_reference(rec, name, value)
    want = rec.tobytes()
    assert owned.to_bytes() == want and row.to_bytes() == want
    assert arr.data[1].tobytes() == want
    assert arr.data[0].tobytes() == bytes(64) == arr.data[2].tobytes()


@settings(max_examples=200, deadline=None)
@given(U32, U32, U8, U32)
def test_connection_of_any_ends_and_type_equals_new_connections(a, b, t, now):
    c = Connection(a, b, t, now=now)
    assert c.to_bytes() == new_connections([a], [b], t, now=now).tobytes()
    assert (c.token_a, c.token_b) == (min(a, b), max(a, b))


LEARNING = st.one_of(
    st.tuples(st.just("activate"), U32),
    st.tuples(st.just("update_confidence"), st.tuples(st.booleans(), U32)),
    st.tuples(st.just("apply_decay"), U32),
)


@settings(max_examples=300, deadline=None)
@given(U8, U8, U8, st.integers(0, 2), U32, st.lists(LEARNING, min_size=1, max_size=5))
def test_learning_methods_on_objects_equal_the_vectorised_rules(conf, lr, dr, mut, last, steps):
    base = new_connections([1], [2], now=0)
    base["confidence"], base["learning_rate"], base["decay_rate"] = conf, lr, dr
    base["mutability"], base["last_update"] = mut, last
    owned = Connection.from_record(base)
    arr = ConnectionArray(base.copy())
    row = arr[0]
    ref = base.copy()
    for name, arg in steps:
        if name == "activate":
            owned.activate(arg), row.activate(arg), activate_all(ref, arg)
        elif name == "update_confidence":
            owned.update_confidence(*arg), row.update_confidence(*arg), update_confidence_all(ref, *arg)
        else:
            assert owned.apply_decay(arg) == row.apply_decay(arg) == bool(apply_decay_all(ref, arg)[0])
    assert owned.to_bytes() == row.to_bytes() == ref.tobytes() == arr.data.tobytes()


@settings(max_examples=100, deadline=None)
@given(IMAGES, FINITE32)
def test_a_copy_and_its_source_never_see_each_others_writes(image, pull):
    owned, row, _, arr = three_views(image)
    for src in (owned, row):
        c = src.copy()
        assert c == src
        c.pull_strength = pull
        c.source_id = 5
        assert src.to_bytes() == image
        c2 = src.copy()
        src.rigidity = 7
        assert c2.to_bytes() == image and arr.data[1].tobytes() == row.to_bytes()


# -- where a Connection's bytes live -------------------------------------------------------------------

def test_a_read_only_row_refuses_setters_and_learning_with_a_clear_error():
    ro = np.frombuffer(new_connections([1, 2], [3, 4], now=0).tobytes(), CONNECTION_DTYPE)
    c = ConnectionArray(ro)[1]
    for step in (lambda: setattr(c, "rigidity", 1), lambda: c.set_connection_type(0x00),
                 lambda: setattr(c, "action", [0.0] * 8), lambda: c.activate(now=1),
                 lambda: c.update_confidence(True, now=1), lambda: c.apply_decay(now=10_000)):
        with pytest.raises(InvalidArgumentError, match="read-only"):
            step()
    assert c.to_bytes() == ro[1].tobytes()
    assert c.calculate_force(0.5) == ConnectionArray(ro).calculate_force(0.5)[1]
    assert c.copy().rigidity == 128


def test_record_and_view_write_through():
    c = Connection(1, 2, now=0)
    c.record["rigidity"] = 9
    assert c.rigidity == 9
    arr = new_connections([1, 2, 3], [4, 5, 6], now=0)
    v = Connection.view(arr, -1)
    v.source_id = 3
    assert arr["source_id"].tolist() == [0, 0, 3]
    strided = ConnectionArray(arr[::2])
    strided[1].evidence_count = 4
    assert arr["evidence_count"].tolist() == [0, 0, 4] and [x.token_a for x in strided] == [1, 3]
    with pytest.raises(IndexError):
        Connection.view(arr, 3)


def test_from_bytes_and_from_record_copy_any_64_byte_source():
    arr = new_connections([1, 2], [3, 4], now=0)
    for src in (arr[1:2].tobytes(), bytearray(arr[1:2].tobytes()), memoryview(arr[1:2].tobytes()), arr[1:2]):
        assert Connection.from_bytes(src).token_a == 2
    for rec in (arr[1], arr[1:2]):
        c = Connection.from_record(rec)
        arr["token_a"][1] = 0
        assert c.token_a == 2
        arr["token_a"][1] = 2
    with pytest.raises(InvalidArgumentError):
        Connection.from_record(arr)
    with pytest.raises(InvalidArgumentError):
        Connection.from_bytes("x" * 64)  # type: ignore[arg-type]


def test_connections_pickle_and_lists_of_rows_join_into_a_new_array():
    ca = ConnectionArray.new([1, 2], [3, 4], now=0)
    assert pickle.loads(pickle.dumps(ca[1])) == ca[1]
    joined = as_connection_array([ca[1], Connection(7, 8, now=0)])
    assert joined["token_a"].tolist() == [2, 7] and joined.flags.writeable
    joined["rigidity"] = 1
    assert ca.rigidity.tolist() == [128, 128]


@settings(max_examples=200, deadline=None)
@given(IMAGES, st.sampled_from(["token_a", "token_b"]), U32)
def test_end_setters_write_like_numpy_or_refuse_to_break_canonical_order(image, name, value):
    owned, row, rec, arr = three_views(image)
    other = int(rec["token_b" if name == "token_a" else "token_a"][0])
    breaks = value > other if name == "token_a" else value < other
    for c in (owned, row):
        if breaks:
            with pytest.raises(InvalidArgumentError, match="canonical order"):
                setattr(c, name, value)
        else:
            setattr(c, name, value)
    if not breaks:
        rec[name] = value
    assert owned.to_bytes() == row.to_bytes() == rec.tobytes() == arr.data[1].tobytes()
