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

Lifetimes: a ``Connection`` taken from a ``ConnectionArray`` (or from any array through
``Connection.view``) is a view of that array's row and is valid exactly as long as that
array's memory is (for an array handed out by a store snapshot: until the snapshot closes).
``Connection(a, b)`` owns a private one-row array.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

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
)

__all__ = [
    "Connection",
    "ConnectionArray",
    "as_connection_array",
    "canonicalize",
    "new_connections",
    "mutability_for_type",
    "activate_all",
    "update_confidence_all",
    "apply_decay_all",
    "calculate_forces",
    "encode_action",
    "decode_action",
    "DECAY_AFTER_SECS",
    "DECAY_INACTIVE_BELOW",
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
    return int(time.time())


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
    if abs(v) > float(np.finfo(np.float32).max):
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

def mutability_for_type(connection_type: Any) -> Any:
    """Default mutability of a connection type code (scalar -> ``Mutability``, array -> u8 array)."""
    if np.ndim(connection_type) == 0:
        return Mutability(int(_MUTABILITY_BY_TYPE[_check_uint("connection_type", connection_type, 8)]))
    t = np.asarray(connection_type)
    if t.dtype.kind not in "ui" or (t.size and (t.min() < 0 or t.max() > 255)):
        raise InvalidArgumentError("connection types must be integers in 0..255")
    return _MUTABILITY_BY_TYPE[t.astype(np.intp)]


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
    sel = (_where(arr, where) & (arr["mutability"] == int(Mutability.HYPOTHESIS))
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
    return (delta * rig * arr["pull_strength"].astype(_F32) * c).astype(_F32)


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
# Connection: a view of one record
# --------------------------------------------------------------------------------------

class Connection:
    """A thin view of one ``CONNECTION_DTYPE`` record.

    ``Connection(a, b, connection_type=0x50, *, now=None, **fields)`` builds a new record with
    the original ``new(a, b)`` defaults (see the module docstring), applies
    ``set_connection_type(connection_type)`` and then each keyword in ``fields`` through its
    property setter (``Connection(1, 2, pull_strength=5.0, confidence_raw=200)``).

    Every field is a property with a typed, range-checked setter raising
    ``InvalidArgumentError``. Not hashable (it is a mutable view); ``==`` compares the 64 bytes.
    """

    __slots__ = ("_row",)

    def __init__(self, a: int, b: int, connection_type: int = ASSOCIATED_WITH, *,
                 now: int | None = None, **fields: Any) -> None:
        a = _check_uint("a", a, 32)
        b = _check_uint("b", b, 32)
        self._row = new_connections(np.array([a], dtype=np.uint32), np.array([b], dtype=np.uint32),
                                    connection_type, now=now)
        for name, value in fields.items():
            if name not in _SETTABLE:
                raise InvalidArgumentError(f"Connection has no settable field {name!r}")
            setattr(self, name, value)

    # -- construction from existing memory --------------------------------------------
    @classmethod
    def view(cls, arr: np.ndarray, index: int) -> Connection:
        """A view of ``arr[index]`` (no copy); writes through the view change ``arr``."""
        arr = _require_struct(arr)
        n = len(arr)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"connection index {index} out of range for {n} records")
        obj = cls.__new__(cls)
        obj._row = arr[i:i + 1]
        return obj

    @classmethod
    def from_record(cls, record: Any) -> Connection:
        """A Connection owning a copy of a structured scalar or one-row array."""
        arr = np.array(record, dtype=CONNECTION_DTYPE, copy=True).reshape(-1)
        if arr.shape != (1,):
            raise InvalidArgumentError(f"expected one connection record, got {arr.shape[0]}")
        obj = cls.__new__(cls)
        obj._row = arr
        return obj

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Connection:
        """Parses the 64-byte image (raw copy, little-endian, no checks beyond the length)."""
        if len(data) != CONNECTION_SIZE:
            raise InvalidArgumentError(f"a connection image is {CONNECTION_SIZE} bytes, got {len(data)}")
        obj = cls.__new__(cls)
        obj._row = np.frombuffer(bytes(data), dtype=CONNECTION_DTYPE).copy()
        return obj

    def to_bytes(self) -> bytes:
        """The 64-byte little-endian image."""
        return self._row.tobytes()

    @property
    def record(self) -> np.ndarray:
        """The one-row array this object views (not a copy)."""
        return self._row

    def copy(self) -> Connection:
        """A Connection owning a copy of this record."""
        return Connection.from_record(self._row)

    # -- field helpers ------------------------------------------------------------------
    def _get(self, name: str) -> Any:
        return self._row[name][0]

    def _set_uint(self, name: str, value: Any, bits: int) -> None:
        self._row[name] = _check_uint(name, value, bits)

    # -- identity --------------------------------------------------------------------------
    @property
    def token_a(self) -> int:
        """The smaller token id (u32)."""
        return int(self._get("token_a"))

    @token_a.setter
    def token_a(self, value: int) -> None:
        v = _check_uint("token_a", value, 32)
        if v > self.token_b:
            raise InvalidArgumentError(f"token_a {v} > token_b {self.token_b} breaks canonical order")
        self._row["token_a"] = v

    @property
    def token_b(self) -> int:
        """The larger token id (u32)."""
        return int(self._get("token_b"))

    @token_b.setter
    def token_b(self, value: int) -> None:
        v = _check_uint("token_b", value, 32)
        if v < self.token_a:
            raise InvalidArgumentError(f"token_b {v} < token_a {self.token_a} breaks canonical order")
        self._row["token_b"] = v

    @property
    def connection_type(self) -> int:
        """Type code (u8). Setting it is ``set_connection_type`` (mutability follows the block)."""
        return int(self._get("connection_type"))

    @connection_type.setter
    def connection_type(self, value: int) -> None:
        self.set_connection_type(value)

    def set_connection_type(self, connection_type: int) -> None:
        """Sets the type and the block's mutability; Immutable also sets confidence 255."""
        _set_type(self._row, _check_uint("connection_type", connection_type, 8))

    @property
    def is_known_type(self) -> bool:
        """True for the 176 defined codes 0x00..0xAF."""
        return self.connection_type <= MAX_CONNECTION_TYPE

    # -- core fields -------------------------------------------------------------------------
    @property
    def rigidity(self) -> int:
        """Raw u8, 0..255 for 0.0..1.0."""
        return int(self._get("rigidity"))

    @rigidity.setter
    def rigidity(self, value: int) -> None:
        self._set_uint("rigidity", value, 8)

    @property
    def active_levels(self) -> int:
        """Bitmask, bit i = layer L(i+1)."""
        return int(self._get("active_levels"))

    @active_levels.setter
    def active_levels(self, value: int) -> None:
        self._set_uint("active_levels", value, 8)

    @property
    def flags(self) -> ConnectionFlags:
        return ConnectionFlags(int(self._get("flags")))

    @flags.setter
    def flags(self, value: int) -> None:
        self._set_uint("flags", int(value) if isinstance(value, ConnectionFlags) else value, 8)

    @property
    def activation_count(self) -> int:
        return int(self._get("activation_count"))

    @activation_count.setter
    def activation_count(self, value: int) -> None:
        self._set_uint("activation_count", value, 32)

    @property
    def pull_strength(self) -> float:
        """f32; see ``validation`` for the accepted range."""
        return float(self._get("pull_strength"))

    @pull_strength.setter
    def pull_strength(self, value: float) -> None:
        self._row["pull_strength"] = _check_float("pull_strength", value)

    @property
    def preferred_distance(self) -> float:
        return float(self._get("preferred_distance"))

    @preferred_distance.setter
    def preferred_distance(self, value: float) -> None:
        self._row["preferred_distance"] = _check_float("preferred_distance", value)

    @property
    def created_at(self) -> int:
        """Unix seconds (u32)."""
        return int(self._get("created_at"))

    @created_at.setter
    def created_at(self, value: int) -> None:
        self._set_uint("created_at", value, 32)

    @property
    def last_activation(self) -> int:
        """Unix seconds (u32), 0 = never activated."""
        return int(self._get("last_activation"))

    @last_activation.setter
    def last_activation(self, value: int) -> None:
        self._set_uint("last_activation", value, 32)

    # -- learning fields -------------------------------------------------------------------
    @property
    def mutability(self) -> Mutability:
        return Mutability(int(self._get("mutability")))

    @mutability.setter
    def mutability(self, value: int) -> None:
        v = _check_uint("mutability", value, 8)
        if v not in (0, 1, 2):
            raise InvalidArgumentError(f"mutability must be 0 (Immutable), 1 (Learnable) or 2 (Hypothesis), got {v}")
        self._row["mutability"] = v

    @property
    def confidence(self) -> float:
        """confidence_raw / 255, in 0.0..1.0. Setting stores ``floor(value*255)`` (the ``as u8`` rule)."""
        return int(self._get("confidence")) / 255.0

    @confidence.setter
    def confidence(self, value: float) -> None:
        v = _check_float("confidence", value)
        if not 0.0 <= v <= 1.0:
            raise InvalidArgumentError(f"confidence must be in 0.0..1.0, got {v}")
        self._row["confidence"] = min(255, int(np.floor(np.float32(v) * _F255)))

    @property
    def confidence_raw(self) -> int:
        """The stored u8."""
        return int(self._get("confidence"))

    @confidence_raw.setter
    def confidence_raw(self, value: int) -> None:
        self._set_uint("confidence", value, 8)

    @property
    def evidence_count(self) -> int:
        return int(self._get("evidence_count"))

    @evidence_count.setter
    def evidence_count(self, value: int) -> None:
        self._set_uint("evidence_count", value, 16)

    @property
    def last_update(self) -> int:
        """Unix seconds (u32) of the last confidence update (decay does not move it)."""
        return int(self._get("last_update"))

    @last_update.setter
    def last_update(self, value: int) -> None:
        self._set_uint("last_update", value, 32)

    @property
    def learning_rate(self) -> int:
        """Raw u8; the step is learning_rate/255."""
        return int(self._get("learning_rate"))

    @learning_rate.setter
    def learning_rate(self, value: int) -> None:
        self._set_uint("learning_rate", value, 8)

    @property
    def decay_rate(self) -> int:
        """Raw u8; a decay multiplies confidence by 1 - decay_rate/255."""
        return int(self._get("decay_rate"))

    @decay_rate.setter
    def decay_rate(self, value: int) -> None:
        self._set_uint("decay_rate", value, 8)

    @property
    def source_id(self) -> int:
        """0 = manual, > 0 = generated (consolidated reflexes use 1)."""
        return int(self._get("source_id"))

    @source_id.setter
    def source_id(self, value: int) -> None:
        self._set_uint("source_id", value, 32)

    @property
    def target_vector(self) -> np.ndarray:
        """The raw i16[8] action target (a copy)."""
        return self._row["target_vector"][0].copy()

    @target_vector.setter
    def target_vector(self, value: Any) -> None:
        v = np.asarray(value)
        if v.shape != (LAYERS,) or v.dtype.kind not in "ui":
            raise InvalidArgumentError(f"target_vector must be {LAYERS} integers, got {v.dtype} {v.shape}")
        if v.size and (v.min() < -32768 or v.max() > 32767):
            raise InvalidArgumentError("target_vector values must fit int16")
        self._row["target_vector"][0] = v.astype(np.int16)

    @property
    def action(self) -> np.ndarray:
        """``target_vector`` decoded with the token layer scales (8 float64)."""
        return decode_action(self._row["target_vector"][0])

    @action.setter
    def action(self, value: Any) -> None:
        self._row["target_vector"][0] = encode_action(value)

    @property
    def can_modify(self) -> bool:
        """False for Immutable connections."""
        return self.mutability != Mutability.IMMUTABLE

    # -- behaviour -------------------------------------------------------------------------
    def activate(self, now: int | None = None) -> None:
        """See ``activate_all``."""
        activate_all(self._row, now)

    def update_confidence(self, success: bool, now: int | None = None) -> None:
        """See ``update_confidence_all``."""
        update_confidence_all(self._row, bool(success), now)

    def apply_decay(self, now: int | None = None) -> bool:
        """See ``apply_decay_all``; returns True when the record decayed."""
        return bool(apply_decay_all(self._row, now)[0])

    def calculate_force(self, current_distance: float) -> float:
        """See ``calculate_forces``."""
        return float(calculate_forces(self._row, current_distance)[0])

    # -- dunder ----------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Connection):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Connection(a={self.token_a}, b={self.token_b}, type=0x{self.connection_type:02X}, "
                f"mutability={self.mutability.name}, confidence={self.confidence:.2f}, "
                f"pull={self.pull_strength:g}, evidence={self.evidence_count})")


_SETTABLE = frozenset(
    name for name, attr in vars(Connection).items() if isinstance(attr, property) and attr.fset is not None
)


# --------------------------------------------------------------------------------------
# ConnectionArray
# --------------------------------------------------------------------------------------

class ConnectionArray(Sequence[Connection]):
    """A numpy-backed sequence of connections.

    ``len``; ``arr[i]`` -> ``Connection`` view; ``arr[slice]`` / ``arr[mask]`` /
    ``arr[indices]`` -> ``ConnectionArray`` (a view for slices, a copy for fancy indexing,
    as numpy does); iteration yields views. ``.data`` is the structured array. Every field of
    the dtype is a column **view** (``.token_a``, ``.rigidity``, ``.confidence_raw``, ...),
    except the derived ``.confidence`` (float64 = raw/255) and ``.action`` (decoded (n, 8)),
    which are copies.
    """

    __slots__ = ("_data",)

    def __init__(self, data: np.ndarray | None = None) -> None:
        if data is None:
            data = np.zeros(0, dtype=CONNECTION_DTYPE)
        self._data = _require_struct(data)

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
        if len(data) % CONNECTION_SIZE:
            raise InvalidArgumentError(f"length {len(data)} is not a multiple of {CONNECTION_SIZE}")
        return cls(np.frombuffer(bytes(data), dtype=CONNECTION_DTYPE).copy())

    def to_bytes(self) -> bytes:
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
    def __getitem__(self, index: slice) -> ConnectionArray: ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
            return Connection.view(self._data, int(index))
        return ConnectionArray(self._data[index])

    def __iter__(self) -> Iterator[Connection]:
        for i in range(len(self._data)):
            yield Connection.view(self._data, i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionArray):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ConnectionArray(len={len(self._data)})"

    def copy(self) -> ConnectionArray:
        return ConnectionArray(self._data.copy())

    # columns -----------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Raw column views for every dtype field (token_a, token_b, rigidity, ...).
        if name in CONNECTION_DTYPE.names and name != "pad" and name != "confidence":
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
        activate_all(self._data, now, where)

    def update_confidence(self, success: Any, now: int | None = None, where: Any = None) -> None:
        update_confidence_all(self._data, success, now, where)

    def apply_decay(self, now: int | None = None, where: Any = None) -> np.ndarray:
        return apply_decay_all(self._data, now, where)

    def calculate_force(self, distances: Any) -> np.ndarray:
        return calculate_forces(self._data, distances)


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
        arr = (np.concatenate([c.record for c in obj]) if obj
               else np.zeros(0, dtype=CONNECTION_DTYPE))
    else:
        raise InvalidArgumentError(f"cannot make connections from {type(obj).__name__}")
    bad = np.flatnonzero(arr["token_a"] > arr["token_b"])
    if bad.size:
        i = int(bad[0])
        raise InvalidArgumentError(
            f"{bad.size} connection(s) out of canonical order (first at index {i}: token_a "
            f"{int(arr['token_a'][i])} > token_b {int(arr['token_b'][i])}); use canonicalize()")
    return arr
