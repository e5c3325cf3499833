"""codec: fixed-point encode/decode and the reference grid hash (reference §1.2, §3.1, App. A)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ngstore import codec
from ngstore.errors import InvalidArgumentError
from ngstore.records import SCALE_FACTORS

A2_STATE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
A2_RAW_X = [10, 2000, 300, 4000, 5000, 6000, 70, 8000]
A3_MIXED_STATE = [-0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8]
A3_MIXED_RAW_X = [-10, 2000, -300, 4000, -5000, 6000, -70, 8000]


def a3_vectors() -> list[tuple[str, np.ndarray, int]]:
    """The four Appendix A3 cases as (name, raw coordinates (8, 3) int16, hash)."""
    zero = np.zeros((8, 3), np.int16)
    a2 = zero.copy()
    a2[:, 0] = A2_RAW_X
    mixed = zero.copy()
    mixed[:, 0] = A3_MIXED_RAW_X
    l1l8 = zero.copy()
    l1l8[0] = (1000, 2000, 3000)
    l1l8[7] = (-1, 5, -32768)
    return [("all-zero", zero, 0x7081810500100030), ("state A2", a2, 0xB0DC1DFD4FC00037),
            ("mixed-sign state", mixed, 0xB0A39C0548001E37), ("L1 and L8", l1l8, 0xCF41965B8017FFCF)]


def python_grid_hash(raw: np.ndarray, shifts=codec.DEFAULT_SHIFTS) -> int:
    """Scalar model of the original compute_grid_hash, on Python ints."""
    mask = (1 << 64) - 1

    def rotl(v: int, r: int) -> int:
        r %= 64
        return ((v << r) | (v >> (64 - r))) & mask if r else v

    h = 0
    for d in range(8):
        x, y, z = ((int(v) & mask) >> shifts[d] for v in raw[d])
        r = 13 + 7 * d
        h ^= rotl((x ^ rotl(d, r)) ^ rotl(y, r + 5) ^ rotl(z, r + 11), r)
    return h


def python_encode(value: float, scale: float) -> int:
    """Rust's ``(value * scale) as i16`` on an already-rounded product."""
    p = float(value) * scale
    if math.isnan(p):
        return 0
    if p >= 32767:
        return 32767
    if p <= -32768:
        return -32768
    return math.trunc(p)


# -- scales and encode ---------------------------------------------------------


def test_scales_are_the_records_scale_factors_and_read_only():
    assert codec.SCALES.tolist() == list(SCALE_FACTORS)
    with pytest.raises(ValueError):
        codec.SCALES[0] = 1


def test_encode_multiplies_by_the_layer_scale():
    values = np.zeros((8, 3))
    values[:, 0] = 0.5
    values[:, 1] = -0.25
    raw = codec.encode(values)
    assert raw.dtype == np.int16
    assert raw[:, 0].tolist() == [int(s * 0.5) for s in SCALE_FACTORS]
    assert raw[:, 1].tolist() == [int(s * -0.25) for s in SCALE_FACTORS]


def test_reference_examples_encode_as_documented():
    # reference §1.2: 0.1 in L2 -> 1000; 5.0 in L2 -> 32767; -0.00015 in L2 -> -1
    assert codec.encode_layer([0.1, 5.0, -0.00015], 1).tolist() == [1000, 32767, -1]


def test_encode_saturates_both_ways():
    assert codec.encode_layer([1e6, -1e6, 327.68, -327.69], 0).tolist() == [32767, -32768, 32767, -32768]


def test_encode_truncates_negatives_toward_zero():
    # -1.239 * 100 = -123.9 -> -123 (not floor's -124)
    assert codec.encode_layer([-1.239, 1.239, -0.009], 0).tolist() == [-123, 123, 0]


def test_encode_maps_nan_to_zero():
    assert codec.encode_layer([float("nan")], 3).tolist() == [0]
    assert codec.encode_layer(np.array([np.nan], np.float32), 3).tolist() == [0]


def test_encode_saturates_infinities():
    assert codec.encode_layer([math.inf, -math.inf], 5).tolist() == [32767, -32768]
    assert codec.encode_layer(np.array([np.inf, -np.inf], np.float32), 5).tolist() == [32767, -32768]


def test_float32_input_is_multiplied_in_float32_like_the_original():
    v32 = np.float32(0.7)
    # float32: 0.69999999 * 100 rounds to exactly 70.0
    assert codec.encode_layer(np.array([v32]), 6).tolist() == [70]
    # the same float32 value widened to float64 truncates to 69: the subtlety is real
    assert codec.encode_layer(np.array([float(v32)]), 6).tolist() == [69]
    assert codec.encode_layer(np.array([0.1], np.float32), 1).tolist() == [1000]


def test_encode_is_vectorised_over_leading_axes():
    values = np.random.default_rng(0).uniform(-2, 2, size=(4, 5, 8, 3))
    raw = codec.encode(values)
    assert raw.shape == (4, 5, 8, 3)
    assert np.array_equal(raw[2, 3], codec.encode(values[2, 3]))


def test_encode_refuses_a_wrong_shape():
    with pytest.raises(InvalidArgumentError, match=r"\(\.\.\., 8, 3\)"):
        codec.encode(np.zeros((8, 2)))


def test_encode_refuses_non_numeric_input():
    with pytest.raises(InvalidArgumentError):
        codec.encode(np.full((8, 3), "x"))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, (8, 3), elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_encode_matches_the_scalar_rust_cast_model_float64(values):
    raw = codec.encode(values)
    for layer in range(8):
        for axis in range(3):
            assert raw[layer, axis] == python_encode(values[layer, axis], float(SCALE_FACTORS[layer]))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, (8, 3), elements=st.floats(width=32)))
def test_encode_matches_the_scalar_rust_cast_model_float32(values):
    raw = codec.encode(values)
    for layer in range(8):
        for axis in range(3):
            with np.errstate(over="ignore", invalid="ignore"):
                product = float(values[layer, axis] * np.float32(SCALE_FACTORS[layer]))
            assert raw[layer, axis] == python_encode(product, 1.0)


# -- decode ---------------------------------------------------------------------


def test_decode_divides_by_the_scale_in_float64():
    raw = np.zeros((8, 3), np.int16)
    raw[1, 0] = 1000
    raw[0] = (100, -250, 325)
    dec = codec.decode(raw)
    assert dec.dtype == np.float64
    assert dec[1, 0] == 0.1
    assert dec[0].tolist() == [1.0, -2.5, 3.25]


def test_decode_then_encode_loses_at_most_one_step_toward_zero():
    # Truncation makes the round trip lossy: 29 / 100 = 0.29, and 0.29 * 100 is
    # 28.999999999999996 in float64, which truncates to 28. The original has the same
    # property (in float32); raw_coordinates is the exact path.
    for layer, scale in enumerate(SCALE_FACTORS):
        raw = np.arange(-32768, 32768, dtype=np.int64)
        back = codec.encode_layer(codec.decode_layer(raw, layer), layer).astype(np.int64)
        diff = raw - back
        assert set(np.unique(diff * np.sign(raw)).tolist()) <= {0, 1}, scale
    assert codec.encode_layer(codec.decode_layer([29], 0), 0).tolist() == [28]


# -- state mapping ------------------------------------------------------------------


def test_encode_state_reproduces_appendix_a2():
    assert codec.encode_state(A2_STATE).tolist() == A2_RAW_X
    assert codec.encode_state(A3_MIXED_STATE).tolist() == A3_MIXED_RAW_X


def test_encode_state_is_vectorised_over_n_states():
    raw = codec.encode_state(np.array([A2_STATE, A3_MIXED_STATE]))
    assert raw.tolist() == [A2_RAW_X, A3_MIXED_RAW_X]


def test_encode_state_refuses_a_state_of_seven_values():
    with pytest.raises(InvalidArgumentError):
        codec.encode_state([0.0] * 7)


def test_state_coordinates_put_the_state_on_x_and_zero_on_y_and_z():
    coords = codec.state_coordinates(A2_STATE)
    assert coords.shape == (8, 3)
    assert coords[:, 0].tolist() == A2_RAW_X
    assert not coords[:, 1:].any()


def test_decode_state_inverts_encode_state_on_representable_values():
    assert codec.decode_state(codec.encode_state(A2_STATE)).tolist() == pytest.approx(A2_STATE)


# -- grid hash ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,raw,expected", a3_vectors(), ids=[v[0] for v in a3_vectors()])
def test_reference_grid_hash_reproduces_appendix_a3(name, raw, expected):
    assert int(codec.grid_hash_reference(raw)) == expected


def test_zero_coordinates_hash_the_same_under_any_shifts():
    zero = np.zeros((8, 3), np.int16)
    assert int(codec.grid_hash_reference(zero, [6] * 8)) == 0x7081810500100030


def test_reference_grid_hash_is_vectorised_over_n():
    stacked = np.stack([v[1] for v in a3_vectors()])
    assert codec.grid_hash_reference(stacked).tolist() == [v[2] for v in a3_vectors()]
    assert codec.grid_hash_reference(stacked).dtype == np.uint64


def test_negative_coordinates_are_shifted_logically_after_sign_extension():
    # -1 with shift 4 is bucket 0x0FFF_FFFF_FFFF_FFFF, not -1: only layer 0's x differs
    a = np.zeros((8, 3), np.int16)
    b = a.copy()
    b[0, 0] = -1
    model = python_grid_hash(b)
    assert int(codec.grid_hash_reference(b)) == model
    rot = lambda v, r: ((v << r) | (v >> (64 - r))) & ((1 << 64) - 1)  # noqa: E731
    assert model ^ python_grid_hash(a) == rot(0x0FFF_FFFF_FFFF_FFFF, 13)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.int16, (8, 3)), st.lists(st.integers(0, 15), min_size=8, max_size=8))
def test_reference_grid_hash_equals_the_scalar_model(raw, shifts):
    assert int(codec.grid_hash_reference(raw, shifts)) == python_grid_hash(raw, shifts)


@pytest.mark.parametrize("shifts", [[4] * 7, [4] * 9, [16] + [4] * 7, [-1] + [4] * 7, [4.5] * 8, "abcdefgh"])
def test_shifts_must_be_eight_ints_in_0_to_15(shifts):
    with pytest.raises(InvalidArgumentError, match="shift"):
        codec.grid_hash_reference(np.zeros((8, 3), np.int16), shifts)


def test_bad_shift_error_names_the_layer():
    with pytest.raises(InvalidArgumentError, match="layer 2 is 99"):
        codec.check_shifts([4, 4, 99, 6, 6, 6, 8, 8])


def test_reference_grid_hash_refuses_non_int16_coordinates():
    with pytest.raises(InvalidArgumentError, match="int16"):
        codec.grid_hash_reference(np.zeros((8, 3), np.int32))


# -- scalars without numpy: to_f32 and encode_scalar (what Token and Connection use) -------------

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)


def numpy_f32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


@settings(max_examples=500, deadline=None)
@given(ANY_FLOAT)
def test_to_f32_rounds_like_numpy_float32(value):
    got, want = codec.to_f32(value), numpy_f32(value)
    assert got == want or (math.isnan(got) and math.isnan(want))
    assert math.copysign(1.0, got) == math.copysign(1.0, want)


@pytest.mark.parametrize("value,expected", [
    (codec.F32_MAX, codec.F32_MAX), (codec.F32_OVERFLOW, math.inf), (-codec.F32_OVERFLOW, -math.inf),
    (math.nextafter(codec.F32_OVERFLOW, 0.0), codec.F32_MAX), (1e300, math.inf), (0.1, float(np.float32(0.1))),
])
def test_to_f32_overflows_exactly_where_float32_does(value, expected):
    assert codec.to_f32(value) == expected == numpy_f32(value)


@settings(max_examples=500, deadline=None)
@given(ANY_FLOAT, st.integers(0, 7))
def test_encode_scalar_is_encode_layer_of_a_float32(value, layer):
    with np.errstate(over="ignore"):
        want = int(codec.encode_layer(np.array([value], dtype=np.float32), layer)[0])
    assert codec.encode_scalar(value, SCALE_FACTORS[layer]) == want


@settings(max_examples=300, deadline=None)
@given(ANY_FLOAT.filter(lambda v: not math.isnan(v)), st.sampled_from([100.0, 255.0]))
def test_encode_scalar_as_u8_is_the_float32_product_truncated_and_saturated(value, scale):
    with np.errstate(over="ignore", invalid="ignore"):
        product = np.float32(value) * np.float32(scale)
    want = int(np.clip(np.trunc(product), 0, 255))
    assert codec.encode_scalar(value, scale, 0, 255) == want


def test_encode_scalar_keeps_the_float32_product_of_the_original():
    # 0.7 in L7: float32 0.7 * 100 rounds to exactly 70.0 in float32 (float64 gives 69.99...)
    assert codec.encode_scalar(0.7, 100) == 70
    assert codec.encode_scalar(math.nan, 100) == 0
    assert codec.encode_scalar(-0.00015, 10000) == -1


def test_encode_layer_of_one_scalar_returns_a_0d_array():
    # regression: np.trunc of a 0-d input is a numpy scalar, and np.clip(out=scalar) raised
    assert codec.encode_layer(np.float32(0.7), 6).shape == ()
    assert int(codec.encode_layer(np.float32(0.7), 6)) == 70
    assert int(codec.encode_layer(5.0, 1)) == 32767 and int(codec.encode_layer(np.nan, 0)) == 0
