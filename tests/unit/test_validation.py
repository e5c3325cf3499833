"""Guardian validation rules: every boundary in and out, scalar and vectorised forms."""
from __future__ import annotations

import numpy as np
import pytest

from ngstore.connections import Connection, ConnectionArray, new_connections
from ngstore.errors import InvalidArgumentError, ValidationError
from ngstore.records import CONNECTION_DTYPE, TOKEN_DTYPE, Mutability
from ngstore.validation import (
    ALL_CONNECTION_TYPES,
    check_connection,
    check_connections,
    check_reflex,
    check_reflexes,
    check_token,
    check_tokens,
    connections_pass_defaults,
    validate_connection,
    validate_reflex,
    validate_token,
)

NOW = 1_700_000_000
ABOVE_1 = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
ABOVE_100 = float(np.nextafter(np.float32(100.0), np.float32(200.0)))


def token(**fields):
    t = np.zeros(1, dtype=TOKEN_DTYPE)
    t["id"] = 1
    t["timestamp"] = NOW
    for k, v in fields.items():
        t[k] = v
    return t


def fields_of(errors):
    return [e[0] for e in errors]


# -- tokens ----------------------------------------------------------------------------------

def test_a_plain_token_is_valid():
    assert check_token(token(), now=NOW) == []
    validate_token(token(), now=NOW)


def test_token_id_zero_is_rejected_and_one_accepted():
    assert fields_of(check_token(token(id=0), now=NOW)) == ["id"]
    assert check_token(token(id=1), now=NOW) == []


@pytest.mark.parametrize("weight,ok", [(0.0, True), (1.0, True), (0.5, True), (-1e-7, False),
                                       (ABOVE_1, False), (np.nan, False), (np.inf, False)])
def test_token_weight_defaults_to_the_guardian_range_0_to_1(weight, ok):
    assert (check_token(token(weight=weight), now=NOW) == []) is ok


def test_token_weight_range_is_configurable_to_the_token_level_100():
    assert check_token(token(weight=100.0), now=NOW, weight_range=(0, 100)) == []
    assert fields_of(check_token(token(weight=100.5), now=NOW, weight_range=(0, 100))) == ["weight"]


def test_token_timestamp_may_be_at_most_3600_seconds_in_the_future():
    assert check_token(token(timestamp=NOW + 3600), now=NOW) == []
    assert fields_of(check_token(token(timestamp=NOW + 3601), now=NOW)) == ["timestamp"]
    assert check_token(token(timestamp=0), now=NOW) == []


def test_token_field_ranges_are_checked_when_narrowed():
    t = token(field_radius=200, field_strength=10)
    assert check_token(t, now=NOW) == []
    errs = check_token(t, now=NOW, field_radius_range=(0, 150), field_strength_range=(20, 255))
    assert fields_of(errs) == ["field_radius", "field_strength"]


def test_token_errors_carry_field_message_and_value():
    (field, message, value), = check_token(token(weight=2.0), now=NOW)
    assert field == "weight" and "[0, 1]" in message and value == 2.0


def test_validate_token_raises_with_every_failure_of_a_single_record():
    with pytest.raises(ValidationError) as e:
        validate_token(token(id=0, weight=-1.0)[0], now=NOW)  # a structured scalar: one token
    assert fields_of(e.value.errors) == ["id", "weight"]
    assert isinstance(e.value, ValueError)


def test_a_one_row_array_is_reported_as_an_array():
    with pytest.raises(ValidationError) as e:
        validate_token(token(id=0), now=NOW)
    assert fields_of(e.value.errors) == ["[0].id"]


def test_check_tokens_returns_a_mask_and_the_first_reasons():
    arr = np.concatenate([token(), token(id=0), token(), token(weight=5.0), token(id=0, weight=5.0)])
    result = check_tokens(arr, now=NOW)
    assert result.ok.tolist() == [True, False, True, False, False]
    assert result.n_failed == 3 and not result.all_ok
    assert [(i, f) for i, f, _, _ in result.reasons] == [(1, "id"), (3, "weight"), (4, "id"), (4, "weight")]
    assert len(check_tokens(arr, now=NOW, max_reasons=2).reasons) == 2


def test_validate_token_on_an_array_names_the_failing_indices():
    arr = np.concatenate([token(), token(id=0)])
    with pytest.raises(ValidationError) as e:
        validate_token(arr, now=NOW)
    assert fields_of(e.value.errors) == ["[1].id"]
    validate_token(arr[:1], now=NOW)


def test_token_objects_and_token_arrays_are_validated():
    from ngstore.tokens import Token, TokenArray

    t = Token(5)
    assert check_token(t) == []
    assert fields_of(check_token(Token(0))) == ["id"]
    assert check_tokens([Token(1), Token(0)]).ok.tolist() == [True, False]
    assert check_tokens(TokenArray(np.concatenate([token(), token(id=0)])), now=NOW).ok.tolist() == [True, False]


def test_token_validation_rejects_foreign_input():
    with pytest.raises(InvalidArgumentError):
        check_tokens(np.zeros(2, dtype=CONNECTION_DTYPE))
    with pytest.raises(InvalidArgumentError):
        check_token(np.concatenate([token(), token()]), now=NOW)


def test_an_empty_token_array_is_valid():
    assert check_tokens(np.zeros(0, dtype=TOKEN_DTYPE)).all_ok


# -- connections -----------------------------------------------------------------------------

def conn(**fields) -> Connection:
    return Connection(1, 2, now=NOW, **fields)


def test_a_fresh_connection_is_a_valid_connection():
    assert check_connection(conn()) == []


@pytest.mark.parametrize("code,ok", [(0x00, True), (0x3F, True), (0x40, True), (0x64, True),
                                     (0xAF, True), (0xB0, False), (0xFF, False)])
def test_every_defined_type_code_is_allowed_by_default_and_unknown_codes_are_not(code, ok):
    c = conn()
    c.record["connection_type"] = code
    assert (check_connection(c) == []) is ok


def test_type_masks_above_bit_63_work():
    c = conn()
    c.record["connection_type"] = 100  # the original's 1u64 << 100 overflows
    assert check_connection(c, allowed_types=1 << 100) == []
    assert fields_of(check_connection(c, allowed_types=ALL_CONNECTION_TYPES & ~(1 << 100))) == ["connection_type"]
    assert check_connection(c, allowed_types=[0x50, 100]) == []
    assert fields_of(check_connection(c, allowed_types=[0x50])) == ["connection_type"]


def test_allowed_types_must_be_a_mask_or_codes():
    with pytest.raises(InvalidArgumentError):
        check_connection(conn(), allowed_types=-1)
    with pytest.raises(InvalidArgumentError):
        check_connection(conn(), allowed_types=[300])
    with pytest.raises(InvalidArgumentError):
        check_connection(conn(), allowed_types=1.5)


@pytest.mark.parametrize("pull,ok", [(0.0, True), (5.0, True), (100.0, True), (-1e-6, False),
                                     (ABOVE_100, False), (np.nan, False), (np.inf, False)])
def test_stored_pull_strength_is_within_0_and_100(pull, ok):
    c = conn()
    c.record["pull_strength"] = pull
    assert (check_connection(c) == []) is ok


def test_pull_strength_range_can_be_the_cdna_default_0_to_1():
    assert check_connection(conn(pull_strength=1.0), pull_strength_range=(0, 1)) == []
    assert fields_of(check_connection(conn(pull_strength=5.0), pull_strength_range=(0, 1))) == ["pull_strength"]


def test_rigidity_range_is_in_units_of_rigidity_over_255():
    assert check_connection(conn(rigidity=128), rigidity_range=(0.5, 1.0)) == []
    assert fields_of(check_connection(conn(rigidity=127), rigidity_range=(0.5, 1.0))) == ["rigidity"]


def test_connections_must_be_canonical_and_may_forbid_self_loops():
    c = conn()
    c.record["token_a"], c.record["token_b"] = 5, 4
    assert fields_of(check_connection(c)) == ["token_a"]
    loop = Connection(3, 3, now=NOW)
    assert check_connection(loop) == []
    assert fields_of(check_connection(loop, allow_self_loops=False)) == ["token_b"]


def test_unknown_mutability_and_non_finite_distance_are_rejected():
    c = conn()
    c.record["mutability"] = 3
    c.record["preferred_distance"] = np.nan
    assert fields_of(check_connection(c)) == ["mutability", "preferred_distance"]


def test_bad_ranges_are_invalid_arguments():
    with pytest.raises(InvalidArgumentError):
        check_connection(conn(), pull_strength_range=(1.0, 0.0))
    with pytest.raises(InvalidArgumentError):
        check_connection(conn(), pull_strength_range=5)


def test_a_list_of_connections_is_checked_as_an_array():
    bad = conn()
    bad.record["pull_strength"] = -1.0
    assert check_connections([conn(), bad]).ok.tolist() == [True, False]


def test_check_connections_is_vectorised_over_arrays():
    arr = new_connections(np.arange(1, 6), np.arange(11, 16), now=NOW)
    arr["pull_strength"][[1, 4]] = 500.0
    result = check_connections(ConnectionArray(arr))
    assert result.ok.tolist() == [True, False, True, True, False]
    assert [r[0] for r in result.reasons] == [1, 4]
    with pytest.raises(ValidationError) as e:
        validate_connection(arr)
    assert fields_of(e.value.errors) == ["[1].pull_strength", "[4].pull_strength"]


# -- reflexes ----------------------------------------------------------------------------------

def reflex(**overrides) -> Connection:
    fields = {"confidence_raw": 128, "pull_strength": 5.0, "rigidity": 128}
    fields.update(overrides)
    return Connection(1, 2, now=NOW, **fields)


def test_the_originals_test_reflex_is_valid():
    c = Connection(1, 2, now=NOW, confidence_raw=200, evidence_count=15, pull_strength=5.0, rigidity=180)
    assert check_reflex(c) == []
    validate_reflex(c)


def test_a_fresh_connection_is_not_a_reflex_because_its_pull_is_zero():
    assert fields_of(check_reflex(Connection(1, 2, now=NOW))) == ["pull_strength"]


@pytest.mark.parametrize("overrides,failing", [
    ({"confidence_raw": 128}, []), ({"confidence_raw": 127}, ["confidence"]),
    ({"rigidity": 128}, []), ({"rigidity": 127}, ["rigidity"]),
    ({"pull_strength": 100.0}, []), ({"pull_strength": ABOVE_100}, ["pull_strength"]),
    ({"pull_strength": 1e-30}, []), ({"pull_strength": 0.0}, ["pull_strength"]),
    ({"pull_strength": -1.0}, ["pull_strength"]),
    ({"mutability": Mutability.IMMUTABLE}, []), ({"mutability": Mutability.LEARNABLE}, []),
    ({"mutability": Mutability.HYPOTHESIS}, ["mutability"]),
])
def test_reflex_boundaries(overrides, failing):
    assert fields_of(check_reflex(reflex(**overrides))) == failing


def test_a_reflex_needs_two_different_tokens():
    c = Connection(4, 4, now=NOW, confidence_raw=200, pull_strength=5.0, rigidity=200)
    assert fields_of(check_reflex(c)) == ["token_b"]


def test_a_nan_pull_is_not_a_reflex():
    c = reflex()
    c.record["pull_strength"] = np.nan
    assert fields_of(check_reflex(c)) == ["pull_strength"]


def test_validate_reflex_raises_for_any_failure_and_checks_arrays():
    with pytest.raises(ValidationError, match="reflex"):
        validate_reflex(reflex(rigidity=100))
    arr = np.concatenate([reflex().record, reflex(confidence_raw=0).record])
    assert check_reflexes(arr).ok.tolist() == [True, False]
    with pytest.raises(ValidationError):
        validate_reflex(arr)


def test_every_valid_reflex_is_a_valid_connection():
    rng = np.random.default_rng(3)
    arr = new_connections(np.arange(1000), np.arange(1000) + 1 + rng.integers(0, 5, 1000), now=NOW)
    arr["confidence"] = rng.integers(0, 256, 1000)
    arr["rigidity"] = rng.integers(0, 256, 1000)
    arr["mutability"] = rng.integers(0, 3, 1000)
    arr["pull_strength"] = rng.uniform(-5, 120, 1000)
    reflexes = check_reflexes(arr).ok
    assert reflexes.any()
    assert check_connections(arr[reflexes]).all_ok


def test_the_struct_check_of_small_batches_agrees_with_check_connections():
    # connections_pass_defaults (a commit of a few connections, without numpy) must say True
    # exactly when check_connections with its defaults passes every record: records with
    # each field at, around and past its bounds, alone and in batches.
    rng = np.random.default_rng(11)
    edges = {
        "token_a": [0, 1, 2**32 - 1], "token_b": [0, 1, 2**32 - 1],
        "connection_type": [0, 0x50, 0xAF, 0xB0, 0xFF],
        "pull_strength": [0.0, -0.0, 1e-45, 50.0, 100.0, np.nextafter(np.float32(100), np.float32(200)), -1e-45,
                          np.inf, -np.inf, np.nan],
        "preferred_distance": [0.0, -5.0, 3.4e38, np.inf, -np.inf, np.nan],
        "mutability": [0, 1, 2, 3, 255],
        "rigidity": [0, 128, 255],
    }
    recs = np.zeros(5000, CONNECTION_DTYPE)
    for name, values in edges.items():
        recs[name] = np.asarray(values, dtype=recs.dtype[name])[rng.integers(0, len(values), len(recs))]
    agree = 0
    for i in range(len(recs)):
        one = recs[i:i + 1]
        assert connections_pass_defaults(one.tobytes()) == check_connections(one).all_ok, one
        agree += check_connections(one).all_ok
    assert 0 < agree < len(recs)  # both verdicts were exercised
    for k in (2, 7, 64):
        for start in range(0, 600, k):
            batch = recs[start:start + k]
            assert connections_pass_defaults(batch.tobytes()) == check_connections(batch).all_ok
    good = recs[[check_connections(recs[i:i + 1]).all_ok for i in range(len(recs))]]
    assert connections_pass_defaults(good[:64].tobytes()) and connections_pass_defaults(b"")
