"""Coordinate arithmetic of the NeuroGraph core: fixed-point encode/decode and the grid hash.

This module is the *reference implementation*: pure numpy, vectorised, and written to be
read. The C core (``csrc/ngcore.c``, wrapped by ``ngstore._native``) implements the grid
hash and the state encode again for speed, and the tests hold the two bit-identical.

Fixed point
-----------
A token keeps 8 layers x 3 axes of ``int16``; layer ``L`` has the scale ``SCALES[L]``
(``records.SCALE_FACTORS``). The original (Rust) encodes with ``(value * scale) as i16``:

* multiply by the layer scale,
* truncate toward zero,
* saturate to [-32768, 32767] (so +-inf saturate too),
* NaN becomes 0.

**float32 vs float64.** The original's API takes ``f32`` and multiplies in ``f32``
(``value as f32 * scale as f32``). The rounding of that product differs from the float64
product for some inputs: ``np.float32(0.7)`` is 0.699999988..., times 100 is
69.9999988... in float64 (truncating to 69) but rounds to exactly 70.0 in float32 (70).
So ``encode`` computes in **float32 when its input is float32** (bit-exact with the
original) and in float64 otherwise (exact for what a float64 caller wrote).
``encode_state`` always converts to float32 first: states are ``f32[8]`` in the original
(``Token::from_state_f32``, ``ExperienceEvent.state``) and in the C hash of states.
Callers wanting the original's behaviour for Python floats (``Token``'s setters do) pass
``np.float32`` arrays.

Decode divides by the scale in **float64**, so ``decode(1000)`` in a 10000-scale layer is
the Python float ``0.1`` (float32 would show 0.10000000149...). Python's ``int / int`` is
correctly rounded too, so a scalar ``raw / scale`` is bit-identical to ``decode``.

Scalars without numpy
---------------------
The record objects (``Token``, ``Connection``) encode one value at a time, where a numpy
scalar costs more than the arithmetic. :func:`to_f32` rounds a Python float to float32
with ``struct`` (round to nearest, ties to even; +-inf beyond the float32 range), and
:func:`encode_scalar` computes ``(value as f32 * scale as f32) as iN`` from it. That is
exact float32 arithmetic, not an approximation: the product of two float32 values has at
most 48 significant bits, so float64 holds it exactly, and rounding it to float32 once is
what a float32 multiply does. The tests hold these against the numpy functions above.

Grid hash
---------
``grid_hash_reference`` is the original ``compute_grid_hash`` (see ``csrc/ngcore.h`` for
the formula). The subtle step: each raw ``int16`` is sign-extended to 64 bits,
reinterpreted as unsigned and shifted **logically**, so a negative coordinate lands in a
huge bucket number, not ``floor(v / 2**s)`` as a small negative integer.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError
from .records import AXES, LAYERS, SCALE_FACTORS

#: Per-layer fixed-point scale, index = layer 0..7 (float64; ``SCALES32`` is the float32 copy).
SCALES: np.ndarray = np.array(SCALE_FACTORS, dtype=np.float64)
SCALES32: np.ndarray = SCALES.astype(np.float32)
SCALES.setflags(write=False)
SCALES32.setflags(write=False)

#: The original's ``ShiftConfig::default()``: effective per-layer shifts.
DEFAULT_SHIFTS: tuple[int, ...] = (4, 4, 5, 6, 6, 6, 8, 8)

#: Largest accepted shift. The original clamps its tuning to 2..12; we accept 0..15 so that
#: every bucket width an int16 can express is reachable, and refuse the rest.
MAX_SHIFT = 15

_I16_MIN = -32768
_I16_MAX = 32767

#: The smallest magnitude that rounds to infinity in float32: FLT_MAX's mantissa is odd,
#: so the halfway point to 2**128 rounds up (ties to even).
F32_OVERFLOW = (2.0 - 2.0**-24) * 2.0**127
#: The largest finite float32, as a Python float.
F32_MAX = (2.0 - 2.0**-23) * 2.0**127

_F32 = struct.Struct("<f")
_f32_pack = _F32.pack
_f32_unpack = _F32.unpack


def to_f32(x: float) -> float:
    """``x`` rounded to float32 (nearest, ties to even) as a Python float.

    Beyond the float32 range the result is +-inf, and NaN stays NaN, as numpy's
    ``np.float32(x)`` does (``struct`` alone would raise OverflowError).
    """
    if -F32_OVERFLOW < x < F32_OVERFLOW:
        return float(_f32_unpack(_f32_pack(x))[0])
    if x != x:
        return x
    return math.copysign(math.inf, x)


def encode_scalar(value: float, scale: float, lo: int = _I16_MIN, hi: int = _I16_MAX) -> int:
    """``(value as f32 * scale as f32) as int``, saturating to ``lo..hi``; NaN -> 0.

    ``scale`` must be exactly representable in float32 (every layer scale, 100 and 255
    are). With the defaults this is one coordinate of :func:`encode` / :func:`encode_layer`
    for float32 input; ``lo=0, hi=255`` is the original's ``as u8`` of the field values.
    """
    p = to_f32(to_f32(value) * scale)
    if p != p:
        return 0
    if p >= hi:
        return hi
    if p <= lo:
        return lo
    return int(p)  # truncation toward zero


def _encode_scaled(scaled: np.ndarray) -> np.ndarray:
    """Truncates toward zero, saturates to int16, NaN -> 0 (Rust's float ``as i16``)."""
    out = np.asarray(np.trunc(scaled))  # a 0-d input gives a numpy scalar, which out= refuses
    np.clip(out, _I16_MIN, _I16_MAX, out=out)  # +-inf saturate here
    out[np.isnan(out)] = 0
    raw: np.ndarray = out.astype(np.int16)
    return raw


def _as_float(values: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"coordinates must be real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def encode(values: npt.ArrayLike) -> np.ndarray:
    """Encodes decoded coordinates of shape ``(..., 8, 3)`` to raw ``int16`` of the same shape.

    Per layer: multiply by ``SCALES[layer]``, truncate toward zero, saturate to int16,
    NaN -> 0. Computed in float32 when ``values`` is a float32 array (the original's
    arithmetic), in float64 otherwise. Always returns a new array.
    """
    arr = _as_float(values)
    if arr.ndim < 2 or arr.shape[-2:] != (LAYERS, AXES):
        raise InvalidArgumentError(f"coordinates must have shape (..., {LAYERS}, {AXES}), got {arr.shape}")
    scales = SCALES32 if arr.dtype == np.float32 else SCALES
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf saturates below
        scaled = arr * scales[:, None]
    return _encode_scaled(scaled)


def encode_layer(values: npt.ArrayLike, layer: int) -> np.ndarray:
    """Encodes values (any shape) that all belong to layer ``layer`` (0..7) to ``int16``.

    Same arithmetic as :func:`encode` (float32 input is computed in float32).
    """
    layer = _check_layer(layer)
    arr = _as_float(values)
    scale = SCALES32[layer] if arr.dtype == np.float32 else SCALES[layer]
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.asarray(arr * scale)
    return _encode_scaled(scaled)


def decode(raw: npt.ArrayLike) -> np.ndarray:
    """Decodes raw ``int16`` coordinates of shape ``(..., 8, 3)`` to float64 (raw / scale)."""
    arr = np.asarray(raw)
    if arr.ndim < 2 or arr.shape[-2:] != (LAYERS, AXES):
        raise InvalidArgumentError(f"raw coordinates must have shape (..., {LAYERS}, {AXES}), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"raw coordinates must be integers, got dtype {arr.dtype}")
    decoded: np.ndarray = arr / SCALES[:, None]
    return decoded


def decode_layer(raw: npt.ArrayLike, layer: int) -> np.ndarray:
    """Decodes raw values (any shape) of layer ``layer`` to float64."""
    layer = _check_layer(layer)
    decoded: np.ndarray = np.asarray(raw, dtype=np.float64) / SCALES[layer]
    return decoded


def encode_state(states: npt.ArrayLike) -> np.ndarray:
    """Maps 8-float states, shape ``(..., 8)``, to the raw X axis of each layer (``int16``).

    This is the original ``Token::from_state_f32``: state[i] goes to layer i's X axis
    with layer i's scale (Y and Z stay 0). The input is converted to float32 first and the
    product computed in float32, as in the original and in ``ng_grid_hash_states``.
    Appendix A2: ``[0.1, 0.2, ..., 0.8] -> [10, 2000, 300, 4000, 5000, 6000, 70, 8000]``.
    """
    arr = np.asarray(states)
    if arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"states must be real numbers, got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[-1] != LAYERS:
        raise InvalidArgumentError(f"states must have shape (..., {LAYERS}), got {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = arr.astype(np.float32, copy=False) * SCALES32
    return _encode_scaled(scaled)


def decode_state(raw_x: npt.ArrayLike) -> np.ndarray:
    """Inverse of :func:`encode_state` up to truncation: raw X values ``(..., 8)`` -> float64."""
    arr = np.asarray(raw_x)
    if arr.ndim < 1 or arr.shape[-1] != LAYERS:
        raise InvalidArgumentError(f"raw states must have shape (..., {LAYERS}), got {arr.shape}")
    decoded: np.ndarray = arr / SCALES
    return decoded


def state_coordinates(states: npt.ArrayLike) -> np.ndarray:
    """Raw token coordinates ``(..., 8, 3)`` of states ``(..., 8)``: X = encoded, Y = Z = 0."""
    x = encode_state(states)
    out = np.zeros((*x.shape, AXES), dtype=np.int16)
    out[..., 0] = x
    return out


def check_shifts(shifts: Sequence[int] | npt.ArrayLike) -> np.ndarray:
    """Validates a shift table: 8 integers in 0..15. Returns it as a ``uint8`` array of 8.

    Raises InvalidArgumentError naming the bad value otherwise.
    """
    try:
        arr = np.asarray(shifts)
    except Exception as exc:  # ragged lists and the like
        raise InvalidArgumentError(f"shifts must be {LAYERS} integers in 0..{MAX_SHIFT}: {exc}") from None
    if arr.shape != (LAYERS,):
        raise InvalidArgumentError(f"shifts must be {LAYERS} integers in 0..{MAX_SHIFT}, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"shifts must be integers in 0..{MAX_SHIFT}, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr > MAX_SHIFT)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(f"shift of layer {i} is {int(arr[i])}, must be in 0..{MAX_SHIFT}")
    return arr.astype(np.uint8)


def _rotl(v: np.ndarray, r: int) -> np.ndarray:
    r %= 64
    if r == 0:
        return v
    rotated: np.ndarray = (v << np.uint64(r)) | (v >> np.uint64(64 - r))
    return rotated


def grid_hash_reference(raw_coords: npt.ArrayLike,
                        shifts: Sequence[int] | npt.ArrayLike = DEFAULT_SHIFTS) -> np.ndarray:
    """Grid hash of raw ``int16`` coordinates of shape ``(..., 8, 3)`` -> ``uint64`` of shape ``(...)``.

    Bit-exact with the original ``compute_grid_hash`` (Appendix A3): for layer d with shift
    s and r = 13 + 7d, ``q(v) = uint64(int64(v)) >> s`` (sign-extend, then *logical* shift),
    ``mix = q(x) ^ rotl(d, r) ^ rotl(q(y), r+5) ^ rotl(q(z), r+11)``, ``hash ^= rotl(mix, r)``.
    """
    arr = np.asarray(raw_coords)
    if arr.ndim < 2 or arr.shape[-2:] != (LAYERS, AXES):
        raise InvalidArgumentError(f"raw coordinates must have shape (..., {LAYERS}, {AXES}), got {arr.shape}")
    if arr.dtype != np.int16:
        raise InvalidArgumentError(f"raw coordinates must be int16, got dtype {arr.dtype}")
    sh = check_shifts(shifts)
    # int16 -> int64 sign-extends; the view as uint64 is the two's-complement reinterpretation.
    wide = arr.astype(np.int64).view(np.uint64)
    h = np.zeros(arr.shape[:-2], dtype=np.uint64)
    for d in range(LAYERS):
        s = np.uint64(sh[d])
        r = 13 + 7 * d
        x = wide[..., d, 0] >> s
        y = wide[..., d, 1] >> s
        z = wide[..., d, 2] >> s
        mix = (x ^ _rotl(np.asarray(np.uint64(d)), r)) ^ _rotl(y, r + 5) ^ _rotl(z, r + 11)
        h ^= _rotl(mix, r)
    return h


def _check_layer(layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < LAYERS:
        raise InvalidArgumentError(f"layer must be an int in 0..{LAYERS - 1}, got {layer!r}")
    return int(layer)
