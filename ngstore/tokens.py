"""The original NeuroGraph ``Token`` Python API, on numpy storage.

A :class:`Token` is a thin view of ONE 64-byte record (``records.TOKEN_DTYPE``): either
its own 1-element array (``Token(id)``, ``Token.from_bytes``, ``copy()``) or one row of a
:class:`TokenArray`'s array, in which case every setter writes through to that row. A
:class:`TokenArray` is a numpy-backed sequence of records; batch code works on its
columns (``ids``, ``raw_coordinates``, ``weights`` ...) and never builds per-token
Python objects unless it indexes or iterates.

Lifetimes: a Token or TokenArray obtained from an array keeps that array alive (numpy
reference), so its memory cannot be freed under it. When the array is itself a view of
memory owned by something else -- a store snapshot's memory map -- the view is valid only
until that owner is closed (see the snapshot's documentation); ``copy()`` detaches it.

Decisions where the original was ambiguous (DESIGN.md §3):

* ``Token.coordinates`` returns **decoded floats** (raw / layer scale) as 8 x 3 lists; the
  original returned the raw integers converted to float. ``raw_coordinates`` gives the
  integers.
* Setters of real values (coordinates, field radius/strength) round the value to float32
  first and multiply in float32 -- exactly the original's ``f32`` arithmetic, so
  ``0.7`` in L7 stores 70 (float64 arithmetic would give 69). Out-of-range values
  saturate as in the original; NaN is refused (``InvalidArgumentError``) because it is
  always a caller bug, even though the codec itself maps NaN to 0.
* A Token is mutable, so it is unhashable; equality compares the 64 bytes.
"""
from __future__ import annotations

import math
import operator
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import codec
from .errors import InvalidArgumentError
from .records import (
    AXES,
    ENTITY_TYPE_MASK,
    ENTITY_TYPE_SHIFT,
    LAYERS,
    MAX_TOKEN_ID,
    RAW64,
    TOKEN_DTYPE,
    TOKEN_SIZE,
    EntityType,
    TokenFlags,
)

__all__ = ["Token", "TokenArray", "as_token_array", "create_batch"]

#: id, flags, timestamp of a fresh token; every other byte stays 0 (weight 0.0 is all-zero).
_DEFAULTS = struct.Struct("<48xIH6xI")
assert _DEFAULTS.size == TOKEN_SIZE

_F32_100 = np.float32(100.0)
_F32_255 = np.float32(255.0)

#: Rows filled per step by :func:`create_batch`: the three column writes of a block hit
#: the same cache lines while they are still in cache (one pass over memory instead of
#: three; measured ~1.2x of bare ``np.zeros`` + ids instead of ~1.7x).
_FILL_BLOCK = 32768


def _now() -> int:
    return int(time.time()) & 0xFFFF_FFFF


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be an int in {lo}..{hi}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be an int in {lo}..{hi}, got {type(value).__name__} {value!r}") from None
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def _check_id(value: Any) -> int:
    return _check_int(value, "token id", 0, MAX_TOKEN_ID)


def _check_real(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(v):
        raise InvalidArgumentError(f"{name} must not be NaN")
    return v


def _real_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """float32 array of exactly ``shape``; NaN refused (the float32 cast is the original's)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{name} must be real numbers of shape {shape}: {exc}") from None
    if arr.shape != shape:
        raise InvalidArgumentError(f"{name} must have shape {shape}, got {arr.shape}")
    if np.isnan(arr).any():
        raise InvalidArgumentError(f"{name} must not contain NaN")
    with np.errstate(over="ignore"):  # huge values become +-inf and saturate
        return arr.astype(np.float32)


def _raw_array(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise InvalidArgumentError(f"raw coordinates must have shape {shape}, got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"raw coordinates must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < -32768 or int(arr.max()) > 32767):
        raise InvalidArgumentError("raw coordinates must be in -32768..32767 (int16)")
    return arr.astype(np.int16)


def _encode_u8(value: Any, scale: np.float32, name: str) -> int:
    """``(value as f32 * scale) as u8``: float32 multiply, truncate, saturate to 0..255."""
    v = _check_real(value, name)
    with np.errstate(over="ignore"):
        scaled = float(np.float32(v) * scale)
    return int(min(max(math.trunc(scaled) if math.isfinite(scaled) else scaled, 0), 255))


class Token:
    """One 64-byte token record (a view; see the module docstring for lifetimes).

    ``Token(id)`` makes a new, independent token with the original's defaults: all
    coordinates 0, ``flags`` = ACTIVE, weight 0.0, field radius and strength 0,
    ``timestamp`` = the current Unix time in seconds. ``id`` must be in 0..2**32-1.
    """

    __slots__ = ("_a",)
    __hash__ = None  # type: ignore[assignment]  # mutable: equality by bytes, no hash

    _a: np.ndarray

    def __init__(self, id: int) -> None:  # noqa: A002 - the original's parameter name
        # Packing the defaults into a bytearray is ~4x faster than np.zeros + three field
        # writes (0.6 vs 2.4 us), which matters for the README's per-token loop.
        buf = bytearray(TOKEN_SIZE)
        _DEFAULTS.pack_into(buf, 0, _check_id(id), TokenFlags.ACTIVE, _now())
        self._a = np.frombuffer(buf, dtype=TOKEN_DTYPE)

    @classmethod
    def _view(cls, row: np.ndarray) -> Token:
        """A Token over ``row`` (a 1-element TOKEN_DTYPE array); writes go to ``row``."""
        t = object.__new__(cls)
        t._a = row
        return t

    _from_record = _view  # the name the store uses

    # -- construction --------------------------------------------------------

    @staticmethod
    def create_batch(count: int, start: int = 0) -> TokenArray:
        """``count`` tokens with ids ``start .. start+count-1`` and the ``Token(id)`` defaults.

        Built vectorised (no per-token object); see :func:`create_batch`.
        """
        return create_batch(count, start)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Token:
        """A new token from its exact 64-byte image (the original's ``from_bytes``)."""
        try:
            mv = memoryview(data).cast("B")
        except TypeError:
            raise InvalidArgumentError(f"Token.from_bytes needs a bytes-like object, got {type(data).__name__}") from None
        if mv.nbytes != TOKEN_SIZE:
            raise InvalidArgumentError(f"a token image is exactly {TOKEN_SIZE} bytes, got {mv.nbytes}")
        return cls._view(np.frombuffer(mv, dtype=TOKEN_DTYPE).copy())

    @classmethod
    def from_state(cls, id: int, state: Sequence[float] | npt.ArrayLike) -> Token:  # noqa: A002
        """The original ``from_state_f32``: ``Token(id)`` with state[i] encoded into layer i's X axis.

        Y and Z stay 0; the state is taken as float32 (Appendix A2).
        """
        arr = np.asarray(state)
        if arr.shape != (LAYERS,):
            raise InvalidArgumentError(f"a state has exactly {LAYERS} values, got shape {arr.shape}")
        t = cls(id)
        t._a["coordinates"][0] = codec.state_coordinates(arr)
        return t

    def to_state(self) -> list[float]:
        """The decoded X axis of each layer (the original ``to_state_f32``), as 8 floats."""
        return codec.decode_state(self._a["coordinates"][0, :, 0]).tolist()

    def copy(self) -> Token:
        """An independent token with the same bytes (detached from any array)."""
        return Token._view(self._a.copy())

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> Token:
        return self.copy()

    # -- bytes, pickling, numpy --------------------------------------------------

    def to_bytes(self) -> bytes:
        """The 64-byte little-endian image (bit-exact with the original)."""
        return self._a.tobytes()

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # A pickled view unpickles as an independent token with the same bytes.
        return (_token_from_bytes, (self.to_bytes(),))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The 1-element TOKEN_DTYPE array behind this token (a view unless ``copy``)."""
        a = self._a if dtype is None else self._a.astype(dtype)
        return a.copy() if copy else a

    # -- fields ------------------------------------------------------------------------

    def _writable(self) -> np.ndarray:
        if not self._a.flags.writeable:
            raise InvalidArgumentError("this Token is a read-only view (e.g. of a snapshot); copy() it to modify it")
        return self._a

    @property
    def id(self) -> int:
        """The token id (u32), read-only: ids are identities, a new id is a new token."""
        return int(self._a["id"][0])

    @property
    def coordinates(self) -> list[list[float]]:
        """Decoded coordinates, 8 layers x [x, y, z] floats (raw / layer scale).

        Setting takes 8 x 3 reals, encoded like the original (float32, truncate, saturate).
        """
        return codec.decode(self._a["coordinates"][0]).tolist()

    @coordinates.setter
    def coordinates(self, value: Any) -> None:
        raw = codec.encode(_real_array(value, (LAYERS, AXES), "coordinates"))
        self._writable()["coordinates"][0] = raw

    @property
    def raw_coordinates(self) -> list[list[int]]:
        """The stored int16 fixed-point coordinates, 8 x 3 ints; settable (ints in int16 range)."""
        return self._a["coordinates"][0].tolist()

    @raw_coordinates.setter
    def raw_coordinates(self, value: Any) -> None:
        self._writable()["coordinates"][0] = _raw_array(value, (LAYERS, AXES))

    def set_coordinates(self, layer: int, x: float, y: float, z: float) -> None:
        """Sets the three decoded coordinates of one layer (0..7), encoded as in the original."""
        layer = _check_int(layer, "layer", 0, LAYERS - 1)
        vals = _real_array([x, y, z], (AXES,), f"coordinates of layer {layer}")
        self._writable()["coordinates"][0, layer] = codec.encode_layer(vals, layer)

    @property
    def weight(self) -> float:
        """Weight (f32). Setting refuses NaN, infinities and values beyond float32."""
        return float(self._a["weight"][0])

    @weight.setter
    def weight(self, value: float) -> None:
        v = _check_real(value, "weight")
        with np.errstate(over="ignore"):
            f = np.float32(v)
        if not np.isfinite(f):
            raise InvalidArgumentError(f"weight must be a finite float32, got {value!r}")
        self._writable()["weight"][0] = f

    @property
    def flags(self) -> int:
        """All 16 flag bits (system 0-7, entity type 8-11, user 12-15); settable (0..0xFFFF)."""
        return int(self._a["flags"][0])

    @flags.setter
    def flags(self, value: int) -> None:
        self._writable()["flags"][0] = _check_int(value, "flags", 0, 0xFFFF)

    @property
    def entity_type(self) -> EntityType:
        """Entity type from bits 8-11 of ``flags`` (independent of the id's copy)."""
        return EntityType((self.flags & ENTITY_TYPE_MASK) >> ENTITY_TYPE_SHIFT)

    @entity_type.setter
    def entity_type(self, value: int) -> None:
        v = _check_int(value, "entity_type", 0, 15)
        self._writable()["flags"][0] = (self.flags & ~ENTITY_TYPE_MASK & 0xFFFF) | (v << ENTITY_TYPE_SHIFT)

    @property
    def field_radius(self) -> float:
        """Field radius, stored as u8 x 100 (0.00..2.55); setting truncates and saturates."""
        return int(self._a["field_radius"][0]) / 100.0

    @field_radius.setter
    def field_radius(self, value: float) -> None:
        self._writable()["field_radius"][0] = _encode_u8(value, _F32_100, "field_radius")

    @property
    def field_strength(self) -> float:
        """Field strength, stored as u8 x 255 (0.0..1.0); setting truncates and saturates."""
        return int(self._a["field_strength"][0]) / 255.0

    @field_strength.setter
    def field_strength(self, value: float) -> None:
        self._writable()["field_strength"][0] = _encode_u8(value, _F32_255, "field_strength")

    @property
    def timestamp(self) -> int:
        """Unix time in seconds (u32); settable (0..2**32-1)."""
        return int(self._a["timestamp"][0])

    @timestamp.setter
    def timestamp(self, value: int) -> None:
        self._writable()["timestamp"][0] = _check_int(value, "timestamp", 0, 0xFFFF_FFFF)

    def grid_hash(self, shifts: Sequence[int] = codec.DEFAULT_SHIFTS) -> int:
        """The original grid hash of this token (pure-numpy reference; batch code uses C)."""
        return int(codec.grid_hash_reference(self._a["coordinates"][0], shifts))

    # -- Python protocol -----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Token):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return f"Token(id={self.id})"

    def __str__(self) -> str:
        return f"Token #{self.id}"


def _token_from_bytes(data: bytes) -> Token:
    return Token.from_bytes(data)


def _coerce_records(data: Any) -> np.ndarray:
    """A 1-D TOKEN_DTYPE array over ``data`` (a view whenever numpy can make one)."""
    if isinstance(data, TokenArray):
        return data._data
    if not isinstance(data, np.ndarray):
        raise InvalidArgumentError(
            f"TokenArray needs a TOKEN_DTYPE array, a RAW64 array or (n, 64) uint8 rows, got {type(data).__name__}")
    if data.dtype == TOKEN_DTYPE or data.dtype == RAW64:
        if data.ndim == 0:
            data = data.reshape(1)
        if data.ndim != 1:
            raise InvalidArgumentError(f"TokenArray needs a 1-D array of records, got shape {data.shape}")
        return data if data.dtype == TOKEN_DTYPE else data.view(TOKEN_DTYPE)
    if data.dtype == np.uint8:
        if data.ndim != 2 or data.shape[1] != TOKEN_SIZE:
            raise InvalidArgumentError(f"raw token rows must have shape (n, {TOKEN_SIZE}), got {data.shape}")
        if data.strides[1] != 1:
            data = np.ascontiguousarray(data)
        return data.view(TOKEN_DTYPE)[:, 0]
    raise InvalidArgumentError(
        f"TokenArray needs a TOKEN_DTYPE array, a RAW64 array or (n, 64) uint8 rows, got dtype {data.dtype}")


class TokenArray:
    """A sequence of token records backed by one 1-D TOKEN_DTYPE numpy array.

    ``TokenArray(data)`` wraps ``data`` without copying when it is a TOKEN_DTYPE or RAW64
    1-D array or an (n, 64) uint8 array with contiguous rows. Integer indexing returns a
    :class:`Token` *view* of the row; slicing returns a TokenArray view; fancy and
    boolean indexing return a TokenArray over a copy (numpy's rules). Column properties
    (``ids``, ``raw_coordinates``, ``weights``, ``flags``, ``timestamps``) are views;
    ``coordinates`` is a decoded copy. Views stay valid as long as the underlying memory
    (see the module docstring).
    """

    __slots__ = ("_data",)
    __hash__ = None  # type: ignore[assignment]

    _data: np.ndarray

    def __init__(self, data: Any = None) -> None:
        self._data = np.empty(0, dtype=TOKEN_DTYPE) if data is None else _coerce_records(data)

    @classmethod
    def from_array(cls, data: Any) -> TokenArray:
        """Same as ``TokenArray(data)``."""
        return cls(data)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> TokenArray:
        """A new array (a copy) from concatenated 64-byte token images."""
        mv = memoryview(data).cast("B")
        if mv.nbytes % TOKEN_SIZE:
            raise InvalidArgumentError(f"token images are {TOKEN_SIZE} bytes each; got {mv.nbytes} bytes")
        return cls(np.frombuffer(mv, dtype=TOKEN_DTYPE).copy())

    @classmethod
    def concat(cls, parts: Iterable[Any]) -> TokenArray:
        """A new array with the records of every part (TokenArray, array, Token or list) in order."""
        arrays = [as_token_array(p) for p in parts]
        return cls(np.concatenate(arrays) if arrays else np.empty(0, dtype=TOKEN_DTYPE))

    def copy(self) -> TokenArray:
        """An independent (contiguous) copy."""
        return TokenArray(self._data.copy())

    # -- sequence ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, key: Any) -> Token | TokenArray:
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            n = self._data.shape[0]
            i = int(key)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"token index {int(key)} out of range for a TokenArray of {n}")
            return Token._view(self._data[i:i + 1])
        if isinstance(key, slice):
            return TokenArray(self._data[key])
        if isinstance(key, (list, tuple)) and len(key) == 0:
            key = np.empty(0, dtype=np.intp)
        sub = self._data[key]
        if sub.ndim != 1:
            raise IndexError(f"a TokenArray index must select a 1-D set of records, got shape {sub.shape}")
        return TokenArray(sub)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Copies records into rows: ``arr[i] = token``, ``arr[a:b] = other_array``."""
        src = as_token_array(value)
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            if src.shape[0] != 1:
                raise InvalidArgumentError(f"one row takes one token, got {src.shape[0]}")
            self[key]  # bounds check with a clear IndexError
            self._data[key] = src[0]
        else:
            self._data[key] = src

    def __iter__(self) -> Iterator[Token]:
        data = self._data
        for i in range(data.shape[0]):
            yield Token._view(data[i:i + 1])

    # -- columns -----------------------------------------------------------------------

    @property
    def data(self) -> np.ndarray:
        """The structured TOKEN_DTYPE array itself (no copy)."""
        return self._data

    @property
    def ids(self) -> np.ndarray:
        """``uint32`` view of the ids."""
        return self._data["id"]

    @property
    def raw_coordinates(self) -> np.ndarray:
        """``int16`` (n, 8, 3) view of the stored coordinates."""
        return self._data["coordinates"]

    @property
    def coordinates(self) -> np.ndarray:
        """Decoded (n, 8, 3) float64 coordinates (a new array). Setting encodes like ``Token``."""
        return codec.decode(self._data["coordinates"])

    @coordinates.setter
    def coordinates(self, value: Any) -> None:
        raw = codec.encode(_real_array(value, (len(self), LAYERS, AXES), "coordinates"))
        self._data["coordinates"] = raw

    @property
    def weights(self) -> np.ndarray:
        """``float32`` view of the weights."""
        return self._data["weight"]

    @property
    def flags(self) -> np.ndarray:
        """``uint16`` view of the flags."""
        return self._data["flags"]

    @property
    def timestamps(self) -> np.ndarray:
        """``uint32`` view of the timestamps (Unix seconds)."""
        return self._data["timestamp"]

    @property
    def entity_types(self) -> np.ndarray:
        """Entity type codes (bits 8-11 of flags) as a new ``uint8`` array."""
        return ((self._data["flags"] & ENTITY_TYPE_MASK) >> ENTITY_TYPE_SHIFT).astype(np.uint8)

    # -- conversions ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The concatenated 64-byte images."""
        return self._data.tobytes()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        a = self._data if dtype is None else self._data.astype(dtype)
        return a.copy() if copy else a

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray]]:
        return (TokenArray, (np.ascontiguousarray(self._data).copy(),))

    def __eq__(self, other: object) -> bool:
        """True when both hold the same records, byte for byte, in the same order."""
        if not isinstance(other, TokenArray):
            return NotImplemented
        if len(self) != len(other):
            return False
        a = np.ascontiguousarray(self._data).view(np.uint8)
        b = np.ascontiguousarray(other._data).view(np.uint8)
        return bool(np.array_equal(a, b))

    def __repr__(self) -> str:
        ids = self._data["id"]
        if len(ids) <= 6:
            shown = ", ".join(str(int(i)) for i in ids)
        else:
            shown = ", ".join(str(int(i)) for i in ids[:3]) + ", ..., " + ", ".join(str(int(i)) for i in ids[-2:])
        return f"TokenArray(n={len(ids)}, ids=[{shown}])"


def create_batch(count: int, start: int = 0) -> TokenArray:
    """A new TokenArray of ``count`` tokens, ids ``start .. start+count-1``, ``Token(id)`` defaults.

    Coordinates, weight and field values 0, flags ACTIVE, one timestamp (now) for all.
    No per-token Python object is created.
    """
    count = _check_int(count, "count", 0, MAX_TOKEN_ID + 1)
    start = _check_id(start)
    if start + count - 1 > MAX_TOKEN_ID:
        raise InvalidArgumentError(f"ids {start}..{start + count - 1} exceed the u32 range (max {MAX_TOKEN_ID})")
    a = np.zeros(count, dtype=TOKEN_DTYPE)
    ts = _now()
    ids, flags, stamps = a["id"], a["flags"], a["timestamp"]
    for lo in range(0, count, _FILL_BLOCK):
        hi = min(lo + _FILL_BLOCK, count)
        ids[lo:hi] = np.arange(start + lo, start + hi, dtype=np.uint32)
        flags[lo:hi] = TokenFlags.ACTIVE
        stamps[lo:hi] = ts
    return TokenArray(a)


def as_token_array(obj: Any) -> np.ndarray:
    """A C-contiguous 1-D TOKEN_DTYPE array of the tokens in ``obj`` (the put path's input).

    Accepts a TokenArray, a TOKEN_DTYPE ndarray (0-d or 1-d, any strides) or record scalar
    (``np.void``), a single Token, or a list/tuple of Tokens. Returns a view of the caller's memory when it already is a
    contiguous 1-D array (TokenArray, Token, array input) -- do not keep it past a change
    to that memory -- and a new array otherwise (strided input, lists).
    Anything else raises InvalidArgumentError (a ValueError).
    """
    if isinstance(obj, TokenArray):
        arr = obj._data
    elif isinstance(obj, Token):
        arr = obj._a
    elif isinstance(obj, (np.ndarray, np.void)):
        if isinstance(obj, np.void):  # one record taken out of an array (a copy here)
            obj = np.asarray(obj)
        if obj.dtype != TOKEN_DTYPE:
            raise InvalidArgumentError(
                f"expected an array of TOKEN_DTYPE records, got dtype {obj.dtype}"
                + ("; wrap raw 64-byte rows with TokenArray(rows)" if obj.dtype in (RAW64, np.uint8) else ""))
        if obj.ndim > 1:
            raise InvalidArgumentError(f"expected a 0-d or 1-d array of tokens, got shape {obj.shape}")
        arr = obj.reshape(1) if obj.ndim == 0 else obj
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            if not isinstance(item, Token):
                raise InvalidArgumentError(
                    f"a list of tokens must hold only Token objects; item {i} is {type(item).__name__} {item!r:.40}")
        return np.concatenate([t._a for t in obj]) if obj else np.empty(0, dtype=TOKEN_DTYPE)
    else:
        raise InvalidArgumentError(
            f"expected a TokenArray, a TOKEN_DTYPE array, a Token or a list of Tokens, got {type(obj).__name__}")
    return np.ascontiguousarray(arr)
