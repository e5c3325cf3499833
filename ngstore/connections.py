"""Connection v3 records: the thin ``Connection`` view, ``ConnectionArray`` and the learning rules.

A connection is one 64-byte ``CONNECTION_DTYPE`` record (layout in ``records``). This module
owns what the original ``connection_v3.rs`` does with such a record, bit for bit:

* ``new(a, b)`` defaults (``Connection(a, b)``): canonical order ``token_a = min``,
  ``token_b = max``; type 0x50 AssociatedWith; rigidity 128; active_levels 0; flags 0;
  activation_count 0; pull_strength 0.0; preferred_distance 1.0; created_at = last_update =
  now (Unix seconds); last_activation 0; mutability Learnable; confidence 128; evidence 0;
  learning_rate 32; decay_rate 16; source_id 0; target_vector zeros.
* ``set_connection_type``: the 16-code block decides the mutability (``CONNECTION_TYPE_BLOCKS``;
  codes above 0xAF count as Learnable, as the original's guesser does) and Immutable forces
  confidence 255.
* ``activate``, ``update_confidence``, ``apply_decay`` and ``calculate_force`` with the
  original's **f32 arithmetic** and its ``as u8`` conversion (truncation toward zero, i.e. a
  floor for these non-negative values). The f32 matters: 128/255 + 32/255 computed in f32
  and multiplied by 255 gives 160 exactly, and so on; computing in float64 would floor a few
  values one lower than the original. Counters saturate (u32 activation_count, u16 evidence).
  ``apply_decay`` does **not** move ``last_update`` (neither does the original), so every call
  more than 3600 s after the last update decays again.

The arithmetic is written once, vectorised over structured arrays (``activate_all``,
``update_confidence_all``, ``apply_decay_all``, ``calculate_forces``); the per-record
methods run the same functions on a one-row view. Nothing here loops over records in Python.

Decisions where the original is silent:

* ``token_a == token_b`` is **allowed** in a record (``new(a, a)`` builds one in the
  original); ``validation.validate_reflex`` rejects it, ``validation.validate_connection``
  can (``allow_self_loops=False``).
* ``as_connection_array`` requires canonical order ``token_a <= token_b`` and refuses other
  arrays rather than silently swapping ends; ``canonicalize`` does the swap explicitly.
* ``target_vector`` holds the X axis of each layer of the action token, fixed point with the
  token scales ``SCALE_FACTORS`` (encode: multiply, saturate to i16, truncate toward zero,
  NaN -> 0; decode: divide). ``Connection.action`` is the decoded 8 floats.

The record object: a ``Connection`` is a small Python object over exactly 64 bytes, read and
written with precompiled ``struct`` formats at fixed offsets (the scalar setters need no
numpy; the learning methods run the vectorised rules above on a one-row numpy view of those
bytes, made when called). Its bytes live in one of two places, as a ``Token``'s do:

* **its own** -- ``Connection(a, b)``, ``from_bytes``, ``from_record``, ``copy()``: an
  immutable ``bytes`` until the first write, then a private ``bytearray`` (copy on write),
  so making and copying one costs a single 64-byte object;
* **a row of an array** -- ``connection_array[i]``, iteration, ``Connection.view(arr, i)``:
  a 64-byte ``memoryview`` of the row. Getters read the row as it is now and setters (and
  the learning methods) write through to it.

Lifetimes: a row connection keeps its array's memory alive (the memoryview holds a buffer
export of the numpy array) and is valid exactly as long as that memory is (for an array
handed out by a store snapshot: see the snapshot). ``copy()`` detaches it. A row connection
of a read-only array refuses writes with ``InvalidArgumentError``.
"""
from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from . import codec
from .errors import InvalidArgumentError
from .records import (
    ASSOCIATED_WITH,
    CONNECTION_DTYPE,
    CONNECTION_SIZE,
    CONNECTION_TYPE_BLOCKS,
    LAYERS,
    MAX_CONNECTION_TYPE,
    SCALE_FACTORS,
    ConnectionFlags,
    Mutability,
    new_second,
    unix_seconds,
)
from .records import CURRENT_SECOND as _CURRENT_SECOND

__all__ = [
    "DECAY_AFTER_SECS",
    "DECAY_INACTIVE_BELOW",
    "Connection",
    "ConnectionArray",
    "activate_all",
    "apply_decay_all",
    "as_connection_array",
    "calculate_forces",
    "canonicalize",
    "decode_action",
    "encode_action",
    "mutability_for_type",
    "new_connections",
    "update_confidence_all",
]

#: A hypothesis decays only when ``now - last_update`` is strictly greater than this.
DECAY_AFTER_SECS = 3600
#: ``apply_decay`` clears ACTIVE when the stored confidence drops below this (about 10 %).
DECAY_INACTIVE_BELOW = 25

_U32_MAX = 0xFFFF_FFFF
_U16_MAX = 0xFFFF
_F32 = np.float32
_F255 = np.float32(255.0)
_SCALES = np.asarray(SCALE_FACTORS, dtype=np.float64)

# Block code -> mutability for all 256 codes; codes above 0xAF are Learnable, like the
# original's guess_mutability.
_MUTABILITY_BY_TYPE = np.full(256, int(Mutability.LEARNABLE), dtype=np.uint8)
for _start, (_name, _mut) in CONNECTION_TYPE_BLOCKS.items():
    _MUTABILITY_BY_TYPE[_start:_start + 16] = int(_mut)
del _start, _name, _mut


def _now() -> int:
    return unix_seconds()


def _now_or(now: int | None) -> int:
    if now is None:
        return _now()
    return _check_uint("now", now, 32)


def _check_uint(name: str, value: Any, bits: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if not 0 <= v < (1 << bits):
        raise InvalidArgumentError(f"{name} must be in 0..{(1 << bits) - 1}, got {v}")
    return v


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise InvalidArgumentError(f"{name} must be finite, got {v}")
    if abs(v) > codec.F32_MAX:
        raise InvalidArgumentError(f"{name} does not fit a float32: {v}")
    return v


# --------------------------------------------------------------------------------------
# Coordinates of the action (target_vector)
# --------------------------------------------------------------------------------------

def encode_action(values: Any) -> np.ndarray:
    """Encodes decoded floats (..., 8) to the i16 fixed point of ``target_vector``.

    Multiply by the layer scale, truncate toward zero, saturate to [-32768, 32767]; NaN -> 0
    (the Rust ``as i16`` cast); float32 input is computed in float32. Returns a new int16
    array of the same leading shape.
    """
    v = np.asarray(values)
    if v.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"an action must be real numbers, got dtype {v.dtype}")
    if v.shape[-1:] != (LAYERS,):
        raise InvalidArgumentError(f"an action has {LAYERS} values, got shape {v.shape}")
    # float32 input is multiplied in float32, like the original and ``codec.encode``
    # (np.float32(0.7) * 100 is exactly 70 in float32 but 69.99... in float64).
    if v.dtype != np.float32:
        v = v.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.clip(np.trunc(v * _SCALES.astype(v.dtype)), -32768.0, 32767.0)
    return np.where(np.isnan(scaled), 0, scaled).astype(np.int16)


def decode_action(raw: Any) -> np.ndarray:
    """Decodes i16 fixed point (..., 8) to float64 by dividing by the layer scales."""
    r = np.asarray(raw)
    if r.shape[-1:] != (LAYERS,):
        raise InvalidArgumentError(f"a target vector has {LAYERS} values, got shape {r.shape}")
    return r.astype(np.float64) / _SCALES


# --------------------------------------------------------------------------------------
# Vectorised rules (the single implementation; the Connection methods call these)
# --------------------------------------------------------------------------------------

@overload
def mutability_for_type(connection_type: int | np.integer[Any]) -> Mutability: ...
@overload
def mutability_for_type(connection_type: np.ndarray | Sequence[int]) -> np.ndarray: ...


def mutability_for_type(connection_type: Any) -> Mutability | np.ndarray:
    """Default mutability of a connection type code (scalar -> ``Mutability``, array -> u8 array)."""
    if np.ndim(connection_type) == 0:
        return Mutability(int(_MUTABILITY_BY_TYPE[_check_uint("connection_type", connection_type, 8)]))
    t = np.asarray(connection_type)
    if t.dtype.kind not in "ui" or (t.size and (t.min() < 0 or t.max() > 255)):
        raise InvalidArgumentError("connection types must be integers in 0..255")
    table: np.ndarray = _MUTABILITY_BY_TYPE[t.astype(np.intp)]
    return table


def _where(arr: np.ndarray, where: Any) -> np.ndarray:
    if where is None:
        return np.ones(len(arr), dtype=bool)
    w = np.asarray(where, dtype=bool)
    if w.shape != (len(arr),):
        raise InvalidArgumentError(f"where must be a boolean mask of shape ({len(arr)},), got {w.shape}")
    return w


def activate_all(arr: np.ndarray, now: int | None = None, where: Any = None) -> None:
    """``activate()`` on every (selected) record, in place.

    activation_count += 1 (saturating u32), last_activation = now, flags |= ACTIVE; for
    Learnable records also flags |= REINFORCED and rigidity += 1 (saturating u8).
    """
    arr = _require_struct(arr)
    now = _now_or(now)
    sel = _where(arr, where)
    count = arr["activation_count"]
    count[sel & (count < _U32_MAX)] += 1
    arr["last_activation"][sel] = now
    arr["flags"][sel] |= int(ConnectionFlags.ACTIVE)
    learn = sel & (arr["mutability"] == int(Mutability.LEARNABLE))
    arr["flags"][learn] |= int(ConnectionFlags.REINFORCED)
    rig = arr["rigidity"]
    rig[learn & (rig < 255)] += 1


def update_confidence_all(arr: np.ndarray, success: Any, now: int | None = None, where: Any = None) -> None:
    """``update_confidence(success)`` on every (selected) record, in place.

    Immutable records are left untouched (no flag, no timestamp). Otherwise, in f32:
    step = learning_rate/255, conf = confidence/255; success: conf = min(conf + step, 1) and
    evidence_count += 1 (saturating u16); failure: conf = max(conf - step*0.5, 0); stored as
    ``floor(conf*255)``; flags |= MODIFIED; last_update = now. ``success`` is a bool or a
    boolean array of ``len(arr)``.
    """
    arr = _require_struct(arr)
    now = _now_or(now)
    ok = np.broadcast_to(np.asarray(success, dtype=bool), (len(arr),))
    sel = _where(arr, where) & (arr["mutability"] != int(Mutability.IMMUTABLE))
    if not sel.any():
        return
    conf = arr["confidence"][sel].astype(_F32) / _F255
    step = arr["learning_rate"][sel].astype(_F32) / _F255
    s = ok[sel]
    new = np.where(s, np.minimum(conf + step, _F32(1.0)), np.maximum(conf - step * _F32(0.5), _F32(0.0)))
    arr["confidence"][sel] = np.clip(np.floor(new.astype(_F32) * _F255), 0, 255).astype(np.uint8)
    ev = arr["evidence_count"]
    inc = np.zeros(len(arr), dtype=bool)
    inc[sel] = s
    ev[inc & (ev < _U16_MAX)] += 1
    arr["last_update"][sel] = now
    arr["flags"][sel] |= int(ConnectionFlags.MODIFIED)


def apply_decay_all(arr: np.ndarray, now: int | None = None, where: Any = None) -> np.ndarray:
    """``apply_decay()`` on every (selected) record, in place; returns the mask of decayed ones.

    Only Hypothesis records with ``now - last_update > 3600`` (saturating subtraction, so a
    ``last_update`` in the future never decays) change: conf *= (1 - decay_rate/255) in f32,
    stored with floor, flags |= DECAYING, and ACTIVE is cleared when the stored confidence is
    below 25. ``last_update`` is not changed.
    """
    arr = _require_struct(arr)
    now = _now_or(now)
    last = arr["last_update"].astype(np.int64)
    sel: np.ndarray = (_where(arr, where) & (arr["mutability"] == int(Mutability.HYPOTHESIS))
                       & (now - last > DECAY_AFTER_SECS))
    if sel.any():
        conf = arr["confidence"][sel].astype(_F32) / _F255
        factor = _F32(1.0) - arr["decay_rate"][sel].astype(_F32) / _F255
        new = np.clip(np.floor((conf * factor).astype(_F32) * _F255), 0, 255).astype(np.uint8)
        arr["confidence"][sel] = new
        arr["flags"][sel] |= int(ConnectionFlags.DECAYING)
        low = np.zeros(len(arr), dtype=bool)
        low[sel] = new < DECAY_INACTIVE_BELOW
        arr["flags"][low] &= 0xFF ^ int(ConnectionFlags.ACTIVE)
    return sel


def calculate_forces(arr: np.ndarray, distances: Any) -> np.ndarray:
    """``calculate_force(d)`` for every record (f32).

    (preferred_distance - d) * rigidity/255 * pull_strength * c, where c = confidence/255 for
    modifiable records and 1 for Immutable ones. ``distances`` broadcasts against ``len(arr)``.
    """
    arr = _require_struct(arr)
    d = np.broadcast_to(np.asarray(distances, dtype=_F32), (len(arr),))
    delta = arr["preferred_distance"].astype(_F32) - d
    rig = arr["rigidity"].astype(_F32) / _F255
    c = np.where(arr["mutability"] == int(Mutability.IMMUTABLE), _F32(1.0),
                 arr["confidence"].astype(_F32) / _F255).astype(_F32)
    force: np.ndarray = (delta * rig * arr["pull_strength"].astype(_F32) * c).astype(_F32)
    return force


def canonicalize(arr: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Swaps token_a/token_b where token_a > token_b (the original's canonical order).

    Returns a copy unless ``inplace``; only the two id columns change.
    """
    arr = _require_struct(arr)
    out = arr if inplace else arr.copy()
    a = out["token_a"].copy()
    b = out["token_b"]
    swap = a > b
    out["token_a"][swap] = b[swap]
    out["token_b"][swap] = a[swap]
    return out


def new_connections(a: Any, b: Any, connection_type: int = ASSOCIATED_WITH, *,
                    now: int | None = None) -> np.ndarray:
    """Vectorised ``Connection(a, b)``: a new array with the original defaults, canonical order.

    ``a`` and ``b`` broadcast against each other; the type's block sets the mutability (and
    confidence 255 for Immutable), as ``set_connection_type`` does.
    """
    aa, bb = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    for name, v in (("a", aa), ("b", bb)):
        if v.dtype.kind not in "ui" or v.ndim > 1 or (v.size and (v.min() < 0 or v.max() > _U32_MAX)):
            raise InvalidArgumentError(f"{name} must be 1-D integer token ids in 0..{_U32_MAX}")
    aa = aa.reshape(-1).astype(np.uint64)
    bb = bb.reshape(-1).astype(np.uint64)
    t = _check_uint("connection_type", connection_type, 8)
    now = _now_or(now)
    out = np.zeros(len(aa), dtype=CONNECTION_DTYPE)
    out["token_a"] = np.minimum(aa, bb)
    out["token_b"] = np.maximum(aa, bb)
    out["rigidity"] = 128
    out["preferred_distance"] = 1.0
    out["created_at"] = now
    out["last_update"] = now
    out["confidence"] = 128
    out["learning_rate"] = 32
    out["decay_rate"] = 16
    _set_type(out, t)
    return out


def _set_type(arr: np.ndarray, t: int) -> None:
    arr["connection_type"] = t
    mut = int(_MUTABILITY_BY_TYPE[t])
    arr["mutability"] = mut
    if mut == Mutability.IMMUTABLE:
        arr["confidence"] = 255


def _require_struct(arr: Any) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype != CONNECTION_DTYPE or arr.ndim != 1:
        raise InvalidArgumentError(
            "expected a 1-D numpy array of CONNECTION_DTYPE, got "
            + (f"dtype {arr.dtype} shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__))
    return arr


# --------------------------------------------------------------------------------------
# Connection: a light object over one 64-byte record
# --------------------------------------------------------------------------------------

# The layout as struct formats (little-endian, no padding), checked against
# CONNECTION_DTYPE at the end of the module. A writer's format never has pad bytes: pack_into
# writes them as zeros, over the fields they skip. Writers are declared to take any buffer:
# struct refuses bytes at run time (TypeError), which is how a setter notices a
# connection still holding its immutable bytes (see Connection._mutable).

#: ``new(a, b)`` as five parts: token_a, token_b, then bytes 8-23 (type, rigidity 128,
#: active_levels, flags, activation_count, pull_strength 0.0, preferred_distance 1.0),
#: created_at, bytes 28-35 (last_activation 0, mutability, confidence, evidence 0),
#: last_update, bytes 40-63 (learning_rate 32, decay_rate 16, pad, source_id, target_vector
#: 0). The constant parts depend on the type only and are precomputed for all 256 types, so
#: a new record is one pack of seven values (eleven separate fields cost ~40 ns more).
_NEW = struct.Struct("<II16sI8sI24s")
assert _NEW.size == CONNECTION_SIZE
#: The whole image, field by field.
_IMAGE = struct.Struct("<IIBBBBIffIIBBHIBBHI8h")
assert _IMAGE.size == CONNECTION_SIZE

_new_image: Callable[[int, int, bytes, int, bytes, int, bytes], bytes] = _NEW.pack


def _new_parts(t: int) -> tuple[bytes, bytes]:
    """The two type-dependent constant parts of ``new(a, b)`` followed by ``set_connection_type(t)``."""
    mut = int(_MUTABILITY_BY_TYPE[t])
    return (struct.pack("<BB10xf", t, 128, 1.0),
            struct.pack("<4xBB2x", mut, 255 if mut == Mutability.IMMUTABLE else 128))


_NEW_PARTS = tuple(_new_parts(t) for t in range(256))
_NEW_TAIL = struct.pack("<BB22x", 32, 16)

_u8: Callable[[Any, int], tuple[int]] = struct.Struct("<B").unpack_from
_u16: Callable[[Any, int], tuple[int]] = struct.Struct("<H").unpack_from
_u32: Callable[[Any, int], tuple[int]] = struct.Struct("<I").unpack_from
_f32: Callable[[Any, int], tuple[float]] = struct.Struct("<f").unpack_from
_ends: Callable[[Any], tuple[int, int]] = struct.Struct("<II").unpack_from
_i16x8: Callable[[Any, int], tuple[int, ...]] = struct.Struct("<8h").unpack_from

_put_u8: Callable[[Any, int, int], None] = struct.Struct("<B").pack_into
_put_u16: Callable[[Any, int, int], None] = struct.Struct("<H").pack_into
_put_u32: Callable[[Any, int, int], None] = struct.Struct("<I").pack_into
_put_f32: Callable[[Any, int, float], None] = struct.Struct("<f").pack_into
_put_i16x8: Callable[..., None] = struct.Struct("<8h").pack_into

# Field offsets (records.CONNECTION_DTYPE; checked at the end of the module).
_A, _B, _TYPE, _RIGIDITY, _LEVELS, _FLAGS, _ACTIVATIONS = 0, 4, 8, 9, 10, 11, 12
_PULL, _DISTANCE, _CREATED, _LAST_ACTIVATION = 16, 20, 24, 28
_MUTABILITY, _CONFIDENCE, _EVIDENCE, _LAST_UPDATE = 32, 33, 34, 36
_LEARNING_RATE, _DECAY_RATE, _SOURCE, _TARGET = 40, 41, 44, 48

_MUTABILITIES = tuple(Mutability)
_MUT_OF_TYPE = tuple(int(m) for m in _MUTABILITY_BY_TYPE)
#: Every value of the u8 flags field as a ConnectionFlags (an IntFlag call costs ~0.5 µs).
_FLAG_VALUES = tuple(ConnectionFlags(v) for v in range(256))
_time = time.time
_new = object.__new__
#: Serialises the first write of owned records (see ``_own``).
_FIRST_WRITE = threading.Lock()

_READ_ONLY = "this Connection is a read-only view (e.g. of a snapshot); copy() it to modify it"


def _flat_bytes(data: np.ndarray) -> memoryview | None:
    """A flat byte memoryview over a C-contiguous record array, or None if it is strided."""
    if not data.flags.c_contiguous:
        return None
    return data.view(np.uint8).data


def _row_bytes(data: np.ndarray, i: int) -> memoryview:
    """The 64 bytes of row ``i`` of any (also strided) 1-D record array, as a memoryview."""
    return data[i:i + 1].view(np.uint8).data


def _image_of(data: Any, what: str) -> bytes:
    """The 64 bytes of a bytes-like object, as ``bytes`` (shared if it already is)."""
    if type(data) is bytes and len(data) == CONNECTION_SIZE:
        return data
    try:
        mv = memoryview(data)
    except TypeError:
        raise InvalidArgumentError(f"{what} needs a bytes-like object, got {type(data).__name__}") from None
    if mv.nbytes != CONNECTION_SIZE:
        raise InvalidArgumentError(f"a connection image is {CONNECTION_SIZE} bytes, got {mv.nbytes}")
    return mv.tobytes()


class Connection:
    """One 64-byte Connection v3 record (see the module docstring for where its bytes live).

    ``Connection(a, b, connection_type=0x50, *, now=None, **fields)`` builds a new record with
    the original ``new(a, b)`` defaults (see the module docstring), applies
    ``set_connection_type(connection_type)`` and then each keyword in ``fields`` through its
    property setter (``Connection(1, 2, pull_strength=5.0, confidence_raw=200)``).

    Every field is a property with a typed, range-checked setter raising
    ``InvalidArgumentError``. Not hashable (it is mutable); ``==`` compares the 64 bytes.
    """

    __slots__ = ("_buf",)
    __hash__ = None  # type: ignore[assignment]

    #: bytes (own, not yet written), bytearray (own, written) or a 64-byte memoryview of
    #: an array row (writable or not).
    _buf: bytes | bytearray | memoryview

    def __init__(self, a: int, b: int, connection_type: int = ASSOCIATED_WITH, *,
                 now: int | None = None, **fields: Any) -> None:
        if type(a) is not int or type(b) is not int or not (0 <= a <= 0xFFFF_FFFF and 0 <= b <= 0xFFFF_FFFF):
            a, b = _check_uint("a", a, 32), _check_uint("b", b, 32)
        if a > b:
            a, b = b, a
        if type(connection_type) is int and 0 <= connection_type <= 0xFF:
            parts = _NEW_PARTS[connection_type]
        else:
            parts = _NEW_PARTS[_check_uint("connection_type", connection_type, 8)]
        if now is None:
            clock = _time()
            sec = _CURRENT_SECOND[0]  # records.unix_seconds(), inlined: this is the hot path
            if not sec[0] <= clock < sec[1]:
                sec = new_second(clock)
            ts = sec[2]
        else:
            ts = _check_uint("now", now, 32)
        self._buf = _new_image(a, b, parts[0], ts, parts[1], ts, _NEW_TAIL)
        if fields:
            for name, value in fields.items():
                if name not in _SETTABLE:
                    raise InvalidArgumentError(f"Connection has no settable field {name!r}")
                setattr(self, name, value)

    # -- construction from existing memory --------------------------------------------
    @classmethod
    def view(cls, arr: np.ndarray, index: int) -> Connection:
        """A view of ``arr[index]`` (no copy); writes through the view change ``arr``.

        Valid as long as ``arr``'s memory is (see the module docstring).
        """
        arr = _require_struct(arr)
        n = len(arr)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"connection index {index} out of range for {n} records")
        rows = _flat_bytes(arr)
        obj = _new(cls)
        obj._buf = _row_bytes(arr, i) if rows is None else rows[i * 64:i * 64 + 64]
        return obj

    @classmethod
    def from_record(cls, record: Any) -> Connection:
        """A Connection owning a copy of a structured scalar or one-row array."""
        arr = np.asarray(record)
        if arr.dtype != CONNECTION_DTYPE:
            arr = np.array(record, dtype=CONNECTION_DTYPE)
        arr = arr.reshape(-1)
        if arr.shape != (1,):
            raise InvalidArgumentError(f"expected one connection record, got {arr.shape[0]}")
        obj = _new(cls)
        obj._buf = arr.tobytes()
        return obj

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Connection:
        """Parses the 64-byte image (raw copy, little-endian, no checks beyond the length).

        Accepts any bytes-like object of 64 bytes; one 64-byte copy, none for ``bytes``.
        """
        obj = _new(cls)
        obj._buf = _image_of(data, "Connection.from_bytes")
        return obj

    def to_bytes(self) -> bytes:
        """The 64-byte little-endian image."""
        b = self._buf
        return b if type(b) is bytes else bytes(b)

    def __reduce__(self) -> tuple[Callable[[bytes], Connection], tuple[bytes]]:
        return (_connection_from_bytes, (self.to_bytes(),))

    @property
    def record(self) -> np.ndarray:
        """A one-record ``CONNECTION_DTYPE`` array over this connection's 64 bytes, made on request.

        A view, not a copy: writing to it writes to the connection (and, for a row
        connection, to the row); it is read-only when the connection is.
        """
        return np.frombuffer(self._own(), dtype=CONNECTION_DTYPE)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        """The one-record array over this connection (:attr:`record`; a copy if ``copy``)."""
        a = self.record if dtype is None else self.record.astype(dtype)
        return a.copy() if copy else a

    def copy(self) -> Connection:
        """An independent Connection with the same bytes (one 64-byte copy at most)."""
        obj = _new(Connection)
        b = self._buf
        obj._buf = b if type(b) is bytes else bytes(b)
        return obj

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> Connection:
        return self.copy()

    # -- writing ------------------------------------------------------------------------
    def _own(self) -> bytearray | memoryview:
        """The buffer to write to, made private on the first write (copy on write).

        The swap from the immutable bytes to a bytearray happens once, under a lock: two
        threads making their first writes to the same connection at once must not each copy
        the old bytes and lose the other's write. Later writes are one struct call each.
        """
        b = self._buf
        if isinstance(b, bytes):
            with _FIRST_WRITE:
                b = self._buf
                if isinstance(b, bytes):
                    b = self._buf = bytearray(b)
        return b

    def _mutable(self) -> bytearray | memoryview:
        """:meth:`_own`, refusing a read-only row (a snapshot view) with a clear error."""
        b = self._own()
        if isinstance(b, memoryview) and b.readonly:
            raise InvalidArgumentError(_READ_ONLY)
        return b  # writable: a caller's TypeError about a writable buffer will repeat

    def _put(self, put: Callable[[Any, int, Any], None], offset: int, value: Any) -> None:
        try:
            put(self._buf, offset, value)
        except TypeError:  # immutable bytes (first write) or a read-only view
            put(self._mutable(), offset, value)

    def _writable_record(self) -> np.ndarray:
        """``record`` for the learning methods, refusing a read-only view clearly."""
        if isinstance(self._buf, memoryview) and self._buf.readonly:
            raise InvalidArgumentError(_READ_ONLY)
        return self.record

    # -- identity --------------------------------------------------------------------------
    @property
    def token_a(self) -> int:
        """The smaller token id (u32)."""
        return _u32(self._buf, _A)[0]

    @token_a.setter
    def token_a(self, value: int) -> None:
        v = _check_uint("token_a", value, 32)
        if v > self.token_b:
            raise InvalidArgumentError(f"token_a {v} > token_b {self.token_b} breaks canonical order")
        self._put(_put_u32, _A, v)

    @property
    def token_b(self) -> int:
        """The larger token id (u32)."""
        return _u32(self._buf, _B)[0]

    @token_b.setter
    def token_b(self, value: int) -> None:
        v = _check_uint("token_b", value, 32)
        if v < self.token_a:
            raise InvalidArgumentError(f"token_b {v} < token_a {self.token_a} breaks canonical order")
        self._put(_put_u32, _B, v)

    @property
    def connection_type(self) -> int:
        """Type code (u8). Setting it is ``set_connection_type`` (mutability follows the block)."""
        return _u8(self._buf, _TYPE)[0]

    @connection_type.setter
    def connection_type(self, value: int) -> None:
        self.set_connection_type(value)

    def set_connection_type(self, connection_type: int) -> None:
        """Sets the type and the block's mutability; Immutable also sets confidence 255."""
        t = _check_uint("connection_type", connection_type, 8)
        mut = _MUT_OF_TYPE[t]
        self._put(_put_u8, _TYPE, t)  # first: a read-only view fails before any write
        self._put(_put_u8, _MUTABILITY, mut)
        if mut == Mutability.IMMUTABLE:
            self._put(_put_u8, _CONFIDENCE, 255)

    @property
    def is_known_type(self) -> bool:
        """True for the 176 defined codes 0x00..0xAF."""
        return self.connection_type <= MAX_CONNECTION_TYPE

    # -- core fields -------------------------------------------------------------------------
    @property
    def rigidity(self) -> int:
        """Raw u8, 0..255 for 0.0..1.0."""
        return _u8(self._buf, _RIGIDITY)[0]

    @rigidity.setter
    def rigidity(self, value: int) -> None:
        self._put(_put_u8, _RIGIDITY, _check_uint("rigidity", value, 8))

    @property
    def active_levels(self) -> int:
        """Bitmask, bit i = layer L(i+1)."""
        return _u8(self._buf, _LEVELS)[0]

    @active_levels.setter
    def active_levels(self, value: int) -> None:
        self._put(_put_u8, _LEVELS, _check_uint("active_levels", value, 8))

    @property
    def flags(self) -> ConnectionFlags:
        """The u8 flags (``ConnectionFlags``); settable with an int or flags in 0..255."""
        return _FLAG_VALUES[_u8(self._buf, _FLAGS)[0]]

    @flags.setter
    def flags(self, value: int) -> None:
        v = int(value) if isinstance(value, ConnectionFlags) else value
        self._put(_put_u8, _FLAGS, _check_uint("flags", v, 8))

    @property
    def activation_count(self) -> int:
        return _u32(self._buf, _ACTIVATIONS)[0]

    @activation_count.setter
    def activation_count(self, value: int) -> None:
        self._put(_put_u32, _ACTIVATIONS, _check_uint("activation_count", value, 32))

    @property
    def pull_strength(self) -> float:
        """f32; see ``validation`` for the accepted range."""
        return _f32(self._buf, _PULL)[0]

    @pull_strength.setter
    def pull_strength(self, value: float) -> None:
        self._put(_put_f32, _PULL, _check_float("pull_strength", value))

    @property
    def preferred_distance(self) -> float:
        return _f32(self._buf, _DISTANCE)[0]

    @preferred_distance.setter
    def preferred_distance(self, value: float) -> None:
        self._put(_put_f32, _DISTANCE, _check_float("preferred_distance", value))

    @property
    def created_at(self) -> int:
        """Unix seconds (u32)."""
        return _u32(self._buf, _CREATED)[0]

    @created_at.setter
    def created_at(self, value: int) -> None:
        self._put(_put_u32, _CREATED, _check_uint("created_at", value, 32))

    @property
    def last_activation(self) -> int:
        """Unix seconds (u32), 0 = never activated."""
        return _u32(self._buf, _LAST_ACTIVATION)[0]

    @last_activation.setter
    def last_activation(self, value: int) -> None:
        self._put(_put_u32, _LAST_ACTIVATION, _check_uint("last_activation", value, 32))

    # -- learning fields -------------------------------------------------------------------
    @property
    def mutability(self) -> Mutability:
        """Immutable, Learnable or Hypothesis; a stored value outside 0..2 raises ValueError."""
        v = _u8(self._buf, _MUTABILITY)[0]
        return _MUTABILITIES[v] if v < 3 else Mutability(v)

    @mutability.setter
    def mutability(self, value: int) -> None:
        v = _check_uint("mutability", value, 8)
        if v not in (0, 1, 2):
            raise InvalidArgumentError(f"mutability must be 0 (Immutable), 1 (Learnable) or 2 (Hypothesis), got {v}")
        self._put(_put_u8, _MUTABILITY, v)

    @property
    def confidence(self) -> float:
        """confidence_raw / 255, in 0.0..1.0. Setting stores ``floor(value*255)`` (the ``as u8`` rule)."""
        return _u8(self._buf, _CONFIDENCE)[0] / 255.0

    @confidence.setter
    def confidence(self, value: float) -> None:
        v = _check_float("confidence", value)
        if not 0.0 <= v <= 1.0:
            raise InvalidArgumentError(f"confidence must be in 0.0..1.0, got {v}")
        # float32(v) * 255 in float32, then ``as u8`` (a floor here: the product is >= 0).
        self._put(_put_u8, _CONFIDENCE, codec.encode_scalar(v, 255.0, 0, 255))

    @property
    def confidence_raw(self) -> int:
        """The stored u8."""
        return _u8(self._buf, _CONFIDENCE)[0]

    @confidence_raw.setter
    def confidence_raw(self, value: int) -> None:
        self._put(_put_u8, _CONFIDENCE, _check_uint("confidence", value, 8))

    @property
    def evidence_count(self) -> int:
        return _u16(self._buf, _EVIDENCE)[0]

    @evidence_count.setter
    def evidence_count(self, value: int) -> None:
        self._put(_put_u16, _EVIDENCE, _check_uint("evidence_count", value, 16))

    @property
    def last_update(self) -> int:
        """Unix seconds (u32) of the last confidence update (decay does not move it)."""
        return _u32(self._buf, _LAST_UPDATE)[0]

    @last_update.setter
    def last_update(self, value: int) -> None:
        self._put(_put_u32, _LAST_UPDATE, _check_uint("last_update", value, 32))

    @property
    def learning_rate(self) -> int:
        """Raw u8; the step is learning_rate/255."""
        return _u8(self._buf, _LEARNING_RATE)[0]

    @learning_rate.setter
    def learning_rate(self, value: int) -> None:
        self._put(_put_u8, _LEARNING_RATE, _check_uint("learning_rate", value, 8))

    @property
    def decay_rate(self) -> int:
        """Raw u8; a decay multiplies confidence by 1 - decay_rate/255."""
        return _u8(self._buf, _DECAY_RATE)[0]

    @decay_rate.setter
    def decay_rate(self, value: int) -> None:
        self._put(_put_u8, _DECAY_RATE, _check_uint("decay_rate", value, 8))

    @property
    def source_id(self) -> int:
        """0 = manual, > 0 = generated (consolidated reflexes use 1)."""
        return _u32(self._buf, _SOURCE)[0]

    @source_id.setter
    def source_id(self, value: int) -> None:
        self._put(_put_u32, _SOURCE, _check_uint("source_id", value, 32))

    @property
    def target_vector(self) -> np.ndarray:
        """The raw i16[8] action target (a new int16 array)."""
        return np.array(_i16x8(self._buf, _TARGET), dtype=np.int16)

    @target_vector.setter
    def target_vector(self, value: Any) -> None:
        v = np.asarray(value)
        if v.shape != (LAYERS,) or v.dtype.kind not in "ui":
            raise InvalidArgumentError(f"target_vector must be {LAYERS} integers, got {v.dtype} {v.shape}")
        if v.size and (v.min() < -32768 or v.max() > 32767):
            raise InvalidArgumentError("target_vector values must fit int16")
        self._put_target(v.tolist())

    def _put_target(self, values: list[int]) -> None:
        try:
            _put_i16x8(self._buf, _TARGET, *values)
        except TypeError:
            _put_i16x8(self._mutable(), _TARGET, *values)

    @property
    def action(self) -> np.ndarray:
        """``target_vector`` decoded with the token layer scales (8 float64, a new array)."""
        return decode_action(np.array(_i16x8(self._buf, _TARGET), dtype=np.int16))

    @action.setter
    def action(self, value: Any) -> None:
        self._put_target(encode_action(value).tolist())

    @property
    def can_modify(self) -> bool:
        """False for Immutable connections."""
        return self.mutability != Mutability.IMMUTABLE

    # -- behaviour (the vectorised rules, on a one-row view of these bytes) ------------------
    def activate(self, now: int | None = None) -> None:
        """See ``activate_all``."""
        activate_all(self._writable_record(), now)

    def update_confidence(self, success: bool, now: int | None = None) -> None:
        """See ``update_confidence_all``."""
        update_confidence_all(self._writable_record(), bool(success), now)

    def apply_decay(self, now: int | None = None) -> bool:
        """See ``apply_decay_all``; returns True when the record decayed."""
        return bool(apply_decay_all(self._writable_record(), now)[0])

    def calculate_force(self, current_distance: float) -> float:
        """See ``calculate_forces``."""
        return float(calculate_forces(np.frombuffer(self._buf, dtype=CONNECTION_DTYPE), current_distance)[0])

    # -- dunder ----------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Connection):
            return NotImplemented
        return self._buf == other._buf

    def __repr__(self) -> str:
        return (f"Connection(a={self.token_a}, b={self.token_b}, type=0x{self.connection_type:02X}, "
                f"mutability={self.mutability.name}, confidence={self.confidence:.2f}, "
                f"pull={self.pull_strength:g}, evidence={self.evidence_count})")


def _connection_from_bytes(data: bytes) -> Connection:
    return Connection.from_bytes(data)


_SETTABLE = frozenset(
    name for name, attr in vars(Connection).items() if isinstance(attr, property) and attr.fset is not None
)


# --------------------------------------------------------------------------------------
# ConnectionArray
# --------------------------------------------------------------------------------------

class ConnectionArray(Sequence[Connection]):
    """A numpy-backed sequence of connections.

    ``len``; ``arr[i]`` -> a ``Connection`` over row ``i`` (a write-through proxy, not a
    copy; valid as long as the array's memory, see the module docstring);
    ``arr[slice]`` / ``arr[mask]`` / ``arr[indices]`` -> ``ConnectionArray`` (a view for
    slices, a copy for fancy indexing, as numpy does); iteration yields the same proxies.
    ``.data`` is the structured array. Every field of the dtype is a column **view**
    (``.token_a``, ``.rigidity``, ``.confidence_raw``, ...), except the derived
    ``.confidence`` (float64 = raw/255) and ``.action`` (decoded (n, 8)), which are copies.
    """

    __slots__ = ("_data", "_rows")
    __hash__ = None  # type: ignore[assignment]

    _data: np.ndarray
    #: A flat byte memoryview of ``_data``, made on the first integer index (None before,
    #: and always None for a strided array, whose rows are fetched one by one).
    _rows: memoryview | None

    def __init__(self, data: np.ndarray | None = None) -> None:
        if data is None:
            data = np.zeros(0, dtype=CONNECTION_DTYPE)
        self._data = _require_struct(data)
        self._rows = None

    @classmethod
    def from_array(cls, arr: Any, *, copy: bool = False) -> ConnectionArray:
        """Wraps (or copies) a CONNECTION_DTYPE array; see ``as_connection_array`` for the checks."""
        data = as_connection_array(arr)
        return cls(data.copy() if copy else data)

    @classmethod
    def new(cls, a: Any, b: Any, connection_type: int = ASSOCIATED_WITH, *,
            now: int | None = None) -> ConnectionArray:
        """Vectorised ``Connection(a, b)``; see ``new_connections``."""
        return cls(new_connections(a, b, connection_type, now=now))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ConnectionArray:
        """A new array (a copy) from concatenated 64-byte connection images."""
        raw = memoryview(data).tobytes()
        if len(raw) % CONNECTION_SIZE:
            raise InvalidArgumentError(f"length {len(raw)} is not a multiple of {CONNECTION_SIZE}")
        return cls(np.frombuffer(raw, dtype=CONNECTION_DTYPE).copy())

    def to_bytes(self) -> bytes:
        """The concatenated 64-byte images."""
        return self._data.tobytes()

    @property
    def data(self) -> np.ndarray:
        """The underlying structured array (not a copy)."""
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    @overload
    def __getitem__(self, index: int) -> Connection: ...
    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> ConnectionArray: ...

    def __getitem__(self, index: Any) -> Connection | ConnectionArray:
        if type(index) is int or isinstance(index, np.integer):
            n = self._data.shape[0]
            i = int(index)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"connection index {int(index)} out of range for {n} records")
            rows = self._rows
            if rows is None:
                rows = self._rows = _flat_bytes(self._data)
                if rows is None:
                    return _row_connection(_row_bytes(self._data, i))
            c = _new(Connection)
            c._buf = rows[i * 64:i * 64 + 64]
            return c
        return ConnectionArray(self._data[index])

    def __iter__(self) -> Iterator[Connection]:
        data = self._data
        rows = self._rows
        if rows is None:
            rows = self._rows = _flat_bytes(data)
        if rows is None:
            for i in range(data.shape[0]):
                yield _row_connection(_row_bytes(data, i))
            return
        for o in range(0, len(rows), CONNECTION_SIZE):
            yield _row_connection(rows[o:o + CONNECTION_SIZE])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionArray):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return f"ConnectionArray(len={len(self._data)})"

    def copy(self) -> ConnectionArray:
        """An independent (contiguous) copy."""
        return ConnectionArray(self._data.copy())

    # columns -----------------------------------------------------------------------------
    def __getattr__(self, name: str) -> np.ndarray:
        # Raw column views for every dtype field (token_a, token_b, rigidity, ...).
        if name in _COLUMNS:
            return self._data[name]
        raise AttributeError(name)

    @property
    def confidence(self) -> np.ndarray:
        """confidence_raw / 255 as float64 (a copy)."""
        return self._data["confidence"] / 255.0

    @property
    def confidence_raw(self) -> np.ndarray:
        """The stored u8 column (a view)."""
        return self._data["confidence"]

    @property
    def action(self) -> np.ndarray:
        """Decoded target vectors, shape (n, 8) float64 (a copy)."""
        return decode_action(self._data["target_vector"])

    # behaviour ---------------------------------------------------------------------------
    def activate(self, now: int | None = None, where: Any = None) -> None:
        """``activate_all`` on every (selected) record, in place."""
        activate_all(self._data, now, where)

    def update_confidence(self, success: Any, now: int | None = None, where: Any = None) -> None:
        """``update_confidence_all`` on every (selected) record, in place."""
        update_confidence_all(self._data, success, now, where)

    def apply_decay(self, now: int | None = None, where: Any = None) -> np.ndarray:
        """``apply_decay_all`` on every (selected) record, in place; the mask of decayed ones."""
        return apply_decay_all(self._data, now, where)

    def calculate_force(self, distances: Any) -> np.ndarray:
        """``calculate_forces`` for every record."""
        return calculate_forces(self._data, distances)


#: The dtype fields that ConnectionArray exposes as column views by attribute.
_COLUMNS = frozenset(n for n in CONNECTION_DTYPE.names or () if n not in ("pad", "confidence"))


def _row_connection(buf: memoryview) -> Connection:
    """A Connection over a 64-byte row buffer (no copy; writes go to the row)."""
    c = _new(Connection)
    c._buf = buf
    return c


def as_connection_array(obj: Any) -> np.ndarray:
    """Normalises connection input to a 1-D CONNECTION_DTYPE array.

    Accepts a ``ConnectionArray`` (its data, no copy), a structured array of
    ``CONNECTION_DTYPE`` (0-d or 1-D; 1-D is returned as is, no copy), a structured scalar, a
    single ``Connection`` (its one-row view) or a list/tuple of ``Connection`` objects (a new
    array). Raises ``InvalidArgumentError`` for anything else: another dtype, more than one
    dimension, or records out of canonical order (``token_a > token_b``; call ``canonicalize``
    first). ``token_a == token_b`` is accepted (see the module docstring).
    """
    if isinstance(obj, ConnectionArray):
        arr = obj.data
    elif isinstance(obj, Connection):
        arr = obj.record
    elif isinstance(obj, np.ndarray):
        if obj.dtype != CONNECTION_DTYPE:
            raise InvalidArgumentError(f"expected CONNECTION_DTYPE, got dtype {obj.dtype}")
        if obj.ndim > 1:
            raise InvalidArgumentError(f"expected a 1-D array of connections, got shape {obj.shape}")
        arr = obj.reshape(1) if obj.ndim == 0 else obj
    elif isinstance(obj, np.void):
        if obj.dtype != CONNECTION_DTYPE:
            raise InvalidArgumentError(f"expected CONNECTION_DTYPE, got dtype {obj.dtype}")
        arr = np.array([obj], dtype=CONNECTION_DTYPE)
    elif isinstance(obj, (list, tuple)):
        if not all(isinstance(c, Connection) for c in obj):
            raise InvalidArgumentError("a list must contain only Connection objects")
        # One copy: the images joined straight into a new, writable buffer.
        arr = np.frombuffer(bytearray().join([c._buf for c in obj]), dtype=CONNECTION_DTYPE)
    else:
        raise InvalidArgumentError(f"cannot make connections from {type(obj).__name__}")
    bad = np.flatnonzero(arr["token_a"] > arr["token_b"])
    if bad.size:
        i = int(bad[0])
        raise InvalidArgumentError(
            f"{bad.size} connection(s) out of canonical order (first at index {i}: token_a "
            f"{int(arr['token_a'][i])} > token_b {int(arr['token_b'][i])}); use canonicalize()")
    return arr


# Guard against a layout drift between the struct formats above and records.CONNECTION_DTYPE.
def _check_layout() -> None:
    names = CONNECTION_DTYPE.names or ()
    image = bytes(range(CONNECTION_SIZE))
    values = _IMAGE.unpack(image)
    probe = np.zeros(1, CONNECTION_DTYPE)
    for name, value in zip(names, (*values[:19], values[19:]), strict=True):
        probe[name] = value
    assert probe.tobytes() == image, "struct formats disagree with CONNECTION_DTYPE"
    offsets = (_A, _B, _TYPE, _RIGIDITY, _LEVELS, _FLAGS, _ACTIVATIONS, _PULL, _DISTANCE, _CREATED,
               _LAST_ACTIVATION, _MUTABILITY, _CONFIDENCE, _EVIDENCE, _LAST_UPDATE, _LEARNING_RATE,
               _DECAY_RATE, 42, _SOURCE, _TARGET)
    fields = CONNECTION_DTYPE.fields
    assert fields is not None
    assert offsets == tuple(fields[n][1] for n in names)
    for t in range(256):
        new = _new_image(1, 2, _NEW_PARTS[t][0], 7, _NEW_PARTS[t][1], 7, _NEW_TAIL)
        assert new == new_connections([1], [2], t, now=7).tobytes(), "Connection(a, b) defaults drifted"


_check_layout()
