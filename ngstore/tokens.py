"""The original NeuroGraph ``Token`` Python API: light record objects and numpy arrays.

A :class:`Token` is a small Python object over exactly 64 bytes, the record of
``records.TOKEN_DTYPE`` (``docs/format.md`` §2). Its fields are read and written with
precompiled ``struct`` formats at fixed offsets; no numpy object is made unless one is asked
for (``record``, ``np.asarray(token)``, ``grid_hash``, the whole-matrix setters). A
:class:`TokenArray` is a numpy-backed sequence of records; batch code works on its columns
(``ids``, ``raw_coordinates``, ``weights`` ...) and never builds per-token objects unless it
indexes or iterates.

Where a Token's bytes live
--------------------------
* **Its own** -- ``Token(id)``, ``Token.from_bytes``, ``copy()``, unpickling. The bytes are
  an immutable ``bytes`` object until the first write, which swaps in a private
  ``bytearray`` (copy on write). So making, copying and serialising a token each cost one
  64-byte object at most (``copy()`` of an unwritten token shares the immutable bytes and
  copies nothing), and no two tokens ever see each other's writes.
* **A row of an array** -- ``token_array[i]`` and iteration. The token holds a 64-byte
  ``memoryview`` of that row: reading a field reads the row as it is now, and every setter
  writes through to the row (and the row's writes show in the token). Indexing costs one
  memoryview slice and one small object; no record is copied.

Lifetimes: a row token keeps its array's memory alive (the memoryview holds a buffer export
of the numpy array), so it can never read freed memory. When the array is itself a view of
memory that something else owns -- a store snapshot's memory map -- the row token is
exactly as valid as that array: see the snapshot's documentation. ``copy()`` detaches it.
A row token of a read-only array (a snapshot view) refuses writes with
``InvalidArgumentError``.

Decisions where the original was ambiguous:

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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

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
    SCALE_FACTORS,
    TOKEN_DTYPE,
    TOKEN_SIZE,
    EntityType,
    TokenFlags,
    new_second,
    unix_seconds,
)
from .records import CURRENT_SECOND as _CURRENT_SECOND

__all__ = ["Token", "TokenArray", "as_token_array", "create_batch"]

# -- the byte layout, as struct formats (little-endian, no padding; offsets in records) ------
# Each reader/writer is a bound method of a precompiled Struct, called with an explicit
# offset: one C call per field, no format parsing, no numpy. The writers are declared to
# take any buffer: bytes is refused by struct at run time (TypeError), which is how a
# setter notices a token still holding its immutable bytes (see Token._mutable).

#: id, flags, timestamp of a fresh token; every other byte is 0 (weight 0.0 is all-zero).
_NEW = struct.Struct("<48xIH6xI")
assert _NEW.size == TOKEN_SIZE
#: The whole image, field by field: the legacy pure-Python token packs exactly this.
_IMAGE = struct.Struct("<24hIHfBBI")
assert _IMAGE.size == TOKEN_SIZE

_new_image: Callable[[int, int, int], bytes] = _NEW.pack
_coords: Callable[[Any], tuple[int, ...]] = struct.Struct("<24h").unpack_from
_coords_u16: Callable[[Any], tuple[int, ...]] = struct.Struct("<24H").unpack_from
_layer_x: Callable[[Any], tuple[int, ...]] = struct.Struct("<h4xh4xh4xh4xh4xh4xh4xh").unpack_from
_u8: Callable[[Any, int], tuple[int]] = struct.Struct("<B").unpack_from
_u16: Callable[[Any, int], tuple[int]] = struct.Struct("<H").unpack_from
_u32: Callable[[Any, int], tuple[int]] = struct.Struct("<I").unpack_from
_f32: Callable[[Any, int], tuple[float]] = struct.Struct("<f").unpack_from

_put_coords: Callable[..., None] = struct.Struct("<24h").pack_into
_put_layer: Callable[[Any, int, int, int, int], None] = struct.Struct("<3h").pack_into
_put_u8: Callable[[Any, int, int], None] = struct.Struct("<B").pack_into
_put_u16: Callable[[Any, int, int], None] = struct.Struct("<H").pack_into
_put_u32: Callable[[Any, int, int], None] = struct.Struct("<I").pack_into
_put_f32: Callable[[Any, int, float], None] = struct.Struct("<f").pack_into

_OFF_ID, _OFF_FLAGS, _OFF_WEIGHT, _OFF_RADIUS, _OFF_STRENGTH, _OFF_TIMESTAMP = 48, 52, 54, 58, 59, 60
# The unrolled decode in Token.coordinates / to_state spells these scales out.
assert SCALE_FACTORS == (100, 10000, 1000, 10000, 10000, 10000, 100, 10000)

#: The decoded value of every stored coordinate, indexed by its bits read as a u16, for
#: the scales 100, 1000 and 10000: ``Token.coordinates`` looks its 24 values up instead of
#: dividing (an int / int division costs more than the list index, and the float it makes
#: is a new object each time). Built at the first use (a few ms); 3 x 65,536 floats, about
#: 6 MB. Each value is ``int16 / scale`` in double precision, as ``codec.decode`` computes it.
_decoded: tuple[list[float], list[float], list[float]] | None = None


def _decoded_tables() -> tuple[list[float], list[float], list[float]]:
    global _decoded
    raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.float64)
    _decoded = ((raw / 100).tolist(), (raw / 1000).tolist(), (raw / 10000).tolist())
    return _decoded

_ACTIVE = int(TokenFlags.ACTIVE)
_ENTITY_TYPES = tuple(EntityType)
_time = time.time
_new = object.__new__
#: Serialises the first write of owned records (see ``_own``).
_FIRST_WRITE = threading.Lock()

#: Rows filled per step by :func:`create_batch`: the three column writes of a block hit
#: the same cache lines while they are still in cache (one pass over memory instead of
#: three; measured ~1.2x of bare ``np.zeros`` + ids instead of ~1.7x).
_FILL_BLOCK = 32768

_READ_ONLY = "this Token is a read-only view (e.g. of a snapshot); copy() it to modify it"


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is int and lo <= value <= hi:  # the common case, first
        return value
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be an int in {lo}..{hi}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(
            f"{name} must be an int in {lo}..{hi}, got {type(value).__name__} {value!r}") from None
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def _check_id(value: Any) -> int:
    return _check_int(value, "token id", 0, MAX_TOKEN_ID)


def _check_real(value: Any, name: str) -> float:
    if type(value) is float:
        v = value
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{name} must be a real number, got {value!r}") from None
    if v != v:
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


def _encode_u8(value: Any, scale: float, name: str) -> int:
    """``(value as f32 * scale) as u8``: float32 multiply, truncate, saturate to 0..255."""
    return codec.encode_scalar(_check_real(value, name), scale, 0, 255)


class Token:
    """One 64-byte token record (see the module docstring for where its bytes live).

    ``Token(id)`` makes a new, independent token with the original's defaults: all
    coordinates 0, ``flags`` = ACTIVE, weight 0.0, field radius and strength 0,
    ``timestamp`` = the current Unix time in seconds. ``id`` must be in 0..2**32-1.
    """

    __slots__ = ("_buf",)
    __hash__ = None  # type: ignore[assignment]  # mutable: equality by bytes, no hash

    #: bytes (own, not yet written), bytearray (own, written) or a 64-byte memoryview of
    #: an array row (writable or not).
    _buf: bytes | bytearray | memoryview

    def __init__(self, id: int) -> None:
        if type(id) is not int or not 0 <= id <= 0xFFFF_FFFF:
            id = _check_id(id)
        now = _time()
        sec = _CURRENT_SECOND[0]  # records.unix_seconds(), inlined: this is the hot path
        if not sec[0] <= now < sec[1]:
            sec = new_second(now)
        self._buf = _new_image(id, 1, sec[2])  # flags = ACTIVE

    # -- construction --------------------------------------------------------

    @staticmethod
    def create_batch(count: int, start: int = 0) -> TokenArray:
        """``count`` tokens with ids ``start .. start+count-1`` and the ``Token(id)`` defaults.

        Built vectorised (no per-token object); see :func:`create_batch`.
        """
        return create_batch(count, start)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Token:
        """A new, independent token from its exact 64-byte image (the original's ``from_bytes``).

        Accepts any bytes-like object of 64 bytes (``bytes``, ``bytearray``, a memoryview,
        an LMDB buffer, a one-record numpy array). Costs one 64-byte copy, or none for
        ``bytes``, which is immutable and so can be shared.
        """
        if type(data) is bytes and len(data) == TOKEN_SIZE:
            buf = data
        else:
            try:
                mv = memoryview(data)
            except TypeError:
                raise InvalidArgumentError(
                    f"Token.from_bytes needs a bytes-like object, got {type(data).__name__}") from None
            if mv.nbytes != TOKEN_SIZE:
                raise InvalidArgumentError(f"a token image is exactly {TOKEN_SIZE} bytes, got {mv.nbytes}")
            buf = mv.tobytes()
        t = _new(cls)
        t._buf = buf
        return t

    @classmethod
    def from_state(cls, id: int, state: Sequence[float] | npt.ArrayLike) -> Token:
        """The original ``from_state_f32``: ``Token(id)`` with state[i] encoded into layer i's X axis.

        Y and Z stay 0; the state is taken as float32 (Appendix A2).
        """
        arr = np.asarray(state)
        if arr.shape != (LAYERS,):
            raise InvalidArgumentError(f"a state has exactly {LAYERS} values, got shape {arr.shape}")
        coords = codec.state_coordinates(arr).astype("<i2").tobytes()
        t = cls(id)
        t._buf = coords + bytes(t._buf[48:])
        return t

    def to_state(self) -> list[float]:
        """The decoded X axis of each layer (the original ``to_state_f32``), as 8 floats."""
        a, b, c, d, e, f, g, h = _layer_x(self._buf)
        return [a / 100, b / 10000, c / 1000, d / 10000, e / 10000, f / 10000, g / 100, h / 10000]

    def copy(self) -> Token:
        """An independent token with the same bytes (detached from any array).

        One 64-byte copy at most: an unwritten token's immutable bytes are shared.
        """
        t = _new(Token)
        b = self._buf
        t._buf = b if type(b) is bytes else bytes(b)
        return t

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> Token:
        return self.copy()

    # -- bytes, pickling, numpy --------------------------------------------------

    def to_bytes(self) -> bytes:
        """The 64-byte little-endian image (bit-exact with the original)."""
        b = self._buf
        return b if type(b) is bytes else bytes(b)

    def __reduce__(self) -> tuple[Callable[[bytes], Token], tuple[bytes]]:
        # A pickled view unpickles as an independent token with the same bytes.
        return (_token_from_bytes, (self.to_bytes(),))

    @property
    def record(self) -> np.ndarray:
        """A one-record ``TOKEN_DTYPE`` array over this token's 64 bytes, made on request.

        A view, not a copy: writing to it writes to the token (and, for a row token, to the
        row); it is read-only when the token is. It keeps the token's bytes alive.
        """
        return np.frombuffer(self._own(), dtype=TOKEN_DTYPE)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        """The one-record TOKEN_DTYPE array over this token (:attr:`record`; a copy if ``copy``)."""
        a = self.record if dtype is None else self.record.astype(dtype)
        return a.copy() if copy else a

    def _own(self) -> bytearray | memoryview:
        """The buffer to write to, made private on the first write (copy on write).

        The swap from the immutable bytes to a bytearray happens once, under a lock: two
        threads making their first writes to the same token at once must not each copy
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

    # -- fields ------------------------------------------------------------------------

    @property
    def id(self) -> int:
        """The token id (u32), read-only: ids are identities, a new id is a new token."""
        return _u32(self._buf, _OFF_ID)[0]

    @property
    def coordinates(self) -> list[list[float]]:
        """Decoded coordinates, 8 layers x [x, y, z] floats (raw / layer scale).

        Setting takes 8 x 3 reals, encoded like the original (float32, truncate, saturate).
        """
        # Unrolled on purpose: one struct call and 24 lookups in the tables of decoded
        # values (bit-identical to codec.decode), about a third of a loop over the scales.
        h, k, t = _decoded or _decoded_tables()  # scales 100, 1000, 10000
        (a, b, c, d, e, f, g, i, j, l, m, n,  # noqa: E741 - 24 coordinates
         o, p, q, r, s, u, v, w, x, y, z, zz) = _coords_u16(self._buf)
        return [[h[a], h[b], h[c]], [t[d], t[e], t[f]],
                [k[g], k[i], k[j]], [t[l], t[m], t[n]],
                [t[o], t[p], t[q]], [t[r], t[s], t[u]],
                [h[v], h[w], h[x]], [t[y], t[z], t[zz]]]

    @coordinates.setter
    def coordinates(self, value: Any) -> None:
        raw = codec.encode(_real_array(value, (LAYERS, AXES), "coordinates"))
        self._put_raw(raw)

    @property
    def raw_coordinates(self) -> list[list[int]]:
        """The stored int16 fixed-point coordinates, 8 x 3 ints; settable (ints in int16 range).

        ``token.record["coordinates"][0]`` is the same as an int16 array view.
        """
        (a, b, c, d, e, f, g, h, i, j, k, l, m,  # noqa: E741
         n, o, p, q, r, s, t, u, v, w, x) = _coords(self._buf)
        return [[a, b, c], [d, e, f], [g, h, i], [j, k, l], [m, n, o], [p, q, r], [s, t, u], [v, w, x]]

    @raw_coordinates.setter
    def raw_coordinates(self, value: Any) -> None:
        self._put_raw(_raw_array(value, (LAYERS, AXES)))

    def _put_raw(self, raw: np.ndarray) -> None:
        values = raw.reshape(-1).tolist()
        try:
            _put_coords(self._buf, 0, *values)
        except TypeError:
            _put_coords(self._mutable(), 0, *values)

    def set_coordinates(self, layer: int, x: float, y: float, z: float) -> None:
        """Sets the three decoded coordinates of one layer (0..7), encoded as in the original."""
        layer = _check_int(layer, "layer", 0, LAYERS - 1)
        what = f"coordinates of layer {layer}"
        scale = SCALE_FACTORS[layer]
        enc = codec.encode_scalar
        rx = enc(_check_real(x, what), scale)
        ry = enc(_check_real(y, what), scale)
        rz = enc(_check_real(z, what), scale)
        try:
            _put_layer(self._buf, 6 * layer, rx, ry, rz)
        except TypeError:
            _put_layer(self._mutable(), 6 * layer, rx, ry, rz)

    @property
    def weight(self) -> float:
        """Weight (f32). Setting refuses NaN, infinities and values beyond float32."""
        return _f32(self._buf, _OFF_WEIGHT)[0]

    @weight.setter
    def weight(self, value: float) -> None:
        v = _check_real(value, "weight")
        if not -codec.F32_OVERFLOW < v < codec.F32_OVERFLOW:
            raise InvalidArgumentError(f"weight must be a finite float32, got {value!r}")
        self._put(_put_f32, _OFF_WEIGHT, v)  # struct rounds to float32 like np.float32

    @property
    def flags(self) -> int:
        """All 16 flag bits (system 0-7, entity type 8-11, user 12-15); settable (0..0xFFFF)."""
        return _u16(self._buf, _OFF_FLAGS)[0]

    @flags.setter
    def flags(self, value: int) -> None:
        self._put(_put_u16, _OFF_FLAGS, _check_int(value, "flags", 0, 0xFFFF))

    @property
    def entity_type(self) -> EntityType:
        """Entity type from bits 8-11 of ``flags`` (independent of the id's copy)."""
        return _ENTITY_TYPES[(_u16(self._buf, _OFF_FLAGS)[0] & ENTITY_TYPE_MASK) >> ENTITY_TYPE_SHIFT]

    @entity_type.setter
    def entity_type(self, value: int) -> None:
        v = _check_int(value, "entity_type", 0, 15)
        self._put(_put_u16, _OFF_FLAGS, (self.flags & ~ENTITY_TYPE_MASK & 0xFFFF) | (v << ENTITY_TYPE_SHIFT))

    @property
    def field_radius(self) -> float:
        """Field radius, stored as u8 x 100 (0.00..2.55); setting truncates and saturates."""
        return _u8(self._buf, _OFF_RADIUS)[0] / 100.0

    @field_radius.setter
    def field_radius(self, value: float) -> None:
        self._put(_put_u8, _OFF_RADIUS, _encode_u8(value, 100.0, "field_radius"))

    @property
    def field_strength(self) -> float:
        """Field strength, stored as u8 x 255 (0.0..1.0); setting truncates and saturates."""
        return _u8(self._buf, _OFF_STRENGTH)[0] / 255.0

    @field_strength.setter
    def field_strength(self, value: float) -> None:
        self._put(_put_u8, _OFF_STRENGTH, _encode_u8(value, 255.0, "field_strength"))

    @property
    def timestamp(self) -> int:
        """Unix time in seconds (u32); settable (0..2**32-1)."""
        return _u32(self._buf, _OFF_TIMESTAMP)[0]

    @timestamp.setter
    def timestamp(self, value: int) -> None:
        self._put(_put_u32, _OFF_TIMESTAMP, _check_int(value, "timestamp", 0, 0xFFFF_FFFF))

    def grid_hash(self, shifts: Sequence[int] = codec.DEFAULT_SHIFTS) -> int:
        """The original grid hash of this token (pure-numpy reference; batch code uses C)."""
        raw = np.frombuffer(self._buf, dtype="<i2", count=LAYERS * AXES).reshape(LAYERS, AXES)
        return int(codec.grid_hash_reference(raw.astype(np.int16), shifts))

    # -- Python protocol -----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Token):
            return NotImplemented
        return self._buf == other._buf

    def __repr__(self) -> str:
        return f"Token(id={self.id})"

    def __str__(self) -> str:
        return f"Token #{self.id}"


def _token_from_bytes(data: bytes) -> Token:
    return Token.from_bytes(data)


def token_of_image(image: bytes) -> Token:
    """A token over ``image``, 64 immutable bytes a read just copied (not checked: the
    point-read path's ``Token.from_bytes``; the first write copies them, as for any token)."""
    t = _new(Token)
    t._buf = image
    return t


def _row_token(buf: memoryview) -> Token:
    """A Token over a 64-byte row buffer (no copy; writes go to the row)."""
    t = _new(Token)
    t._buf = buf
    return t


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
        records: np.ndarray = data if data.dtype == TOKEN_DTYPE else data.view(TOKEN_DTYPE)
        return records
    if data.dtype == np.uint8:
        if data.ndim != 2 or data.shape[1] != TOKEN_SIZE:
            raise InvalidArgumentError(f"raw token rows must have shape (n, {TOKEN_SIZE}), got {data.shape}")
        if data.strides[1] != 1:
            data = np.ascontiguousarray(data)
        rows: np.ndarray = data.view(TOKEN_DTYPE)[:, 0]
        return rows
    raise InvalidArgumentError(
        f"TokenArray needs a TOKEN_DTYPE array, a RAW64 array or (n, 64) uint8 rows, got dtype {data.dtype}")


def _flat_bytes(data: np.ndarray) -> memoryview | None:
    """A flat byte memoryview over a C-contiguous record array, or None if it is strided."""
    if not data.flags.c_contiguous:
        return None
    return data.view(np.uint8).data


def _row_bytes(data: np.ndarray, i: int) -> memoryview:
    """The 64 bytes of row ``i`` of any (also strided) 1-D record array, as a memoryview."""
    return data[i:i + 1].view(np.uint8).data


class TokenArray:
    """A sequence of token records backed by one 1-D TOKEN_DTYPE numpy array.

    ``TokenArray(data)`` wraps ``data`` without copying when it is a TOKEN_DTYPE or RAW64
    1-D array or an (n, 64) uint8 array with contiguous rows.

    * ``arr[i]`` (an int) returns a :class:`Token` over row ``i``: a write-through proxy,
      not a copy. Its getters read the row as it is now; its setters write the row. It
      keeps the array's memory alive and is valid exactly as long as that memory (for a
      snapshot view: see the snapshot). ``arr[i].copy()`` detaches it. Iteration yields
      the same proxies, in order.
    * Slicing returns a TokenArray view; fancy and boolean indexing return a TokenArray
      over a copy (numpy's rules).
    * Column properties (``ids``, ``raw_coordinates``, ``weights``, ``flags``,
      ``timestamps``) are numpy views; ``coordinates`` is a decoded copy.
    """

    __slots__ = ("_data", "_rows")
    __hash__ = None  # type: ignore[assignment]

    _data: np.ndarray
    #: A flat byte memoryview of ``_data``, made on the first integer index (None before,
    #: and always None for a strided array, whose rows are fetched one by one).
    _rows: memoryview | None

    def __init__(self, data: Any = None) -> None:
        self._data = np.empty(0, dtype=TOKEN_DTYPE) if data is None else _coerce_records(data)
        self._rows = None

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
        return len(self._data)

    @overload
    def __getitem__(self, key: int) -> Token: ...
    @overload
    def __getitem__(self, key: slice | Sequence[int] | np.ndarray) -> TokenArray: ...

    def __getitem__(self, key: Any) -> Token | TokenArray:
        if type(key) is int or isinstance(key, np.integer):
            n = self._data.shape[0]
            i = int(key)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"token index {int(key)} out of range for a TokenArray of {n}")
            rows = self._rows
            if rows is None:
                rows = self._rows = _flat_bytes(self._data)
                if rows is None:
                    return _row_token(_row_bytes(self._data, i))
            t = _new(Token)  # _row_token, inlined
            t._buf = rows[i * 64:i * 64 + 64]
            return t
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
            self[int(key)]  # bounds check with a clear IndexError
            self._data[key] = src[0]
        else:
            self._data[key] = src

    def __iter__(self) -> Iterator[Token]:
        data = self._data
        rows = self._rows
        if rows is None:
            rows = self._rows = _flat_bytes(data)
        if rows is None:
            for i in range(data.shape[0]):
                yield _row_token(_row_bytes(data, i))
            return
        for o in range(0, len(rows), TOKEN_SIZE):
            yield _row_token(rows[o:o + TOKEN_SIZE])

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

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        a = self._data if dtype is None else self._data.astype(dtype)
        return a.copy() if copy else a

    def __reduce__(self) -> tuple[type[TokenArray], tuple[np.ndarray]]:
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
    ts = unix_seconds()
    ids, flags, stamps = a["id"], a["flags"], a["timestamp"]
    for lo in range(0, count, _FILL_BLOCK):
        hi = min(lo + _FILL_BLOCK, count)
        ids[lo:hi] = np.arange(start + lo, start + hi, dtype=np.uint32)
        flags[lo:hi] = _ACTIVE
        stamps[lo:hi] = ts
    return TokenArray(a)


def as_token_array(obj: Any) -> np.ndarray:
    """A C-contiguous 1-D TOKEN_DTYPE array of the tokens in ``obj`` (the put path's input).

    Accepts a TokenArray, a TOKEN_DTYPE ndarray (0-d or 1-d, any strides) or record scalar
    (``np.void``), a single Token, or a list/tuple of Tokens. Returns a view of the
    caller's memory when it already is a contiguous 1-D array (TokenArray, array input) or
    a Token (a view of its 64 bytes: read-only while the token was never written) -- do
    not keep it past a change to that memory -- and a new array otherwise (strided input,
    lists). Anything else raises InvalidArgumentError (a ValueError).
    """
    if isinstance(obj, TokenArray):
        arr = obj._data
    elif isinstance(obj, Token):
        return np.frombuffer(obj._buf, dtype=TOKEN_DTYPE)
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
        # One copy: the images joined straight into a new, writable buffer.
        return np.frombuffer(bytearray().join([t._buf for t in obj]), dtype=TOKEN_DTYPE)
    else:
        raise InvalidArgumentError(
            f"expected a TokenArray, a TOKEN_DTYPE array, a Token or a list of Tokens, got {type(obj).__name__}")
    return np.ascontiguousarray(arr)


# Guard against a layout drift between the struct formats above and records.TOKEN_DTYPE.
def _check_layout() -> None:
    names = TOKEN_DTYPE.names or ()
    image = bytes(range(TOKEN_SIZE))
    values = _IMAGE.unpack(image)
    probe = np.zeros(1, TOKEN_DTYPE)
    for name, value in zip(names, (values[:24], *values[24:]), strict=True):
        probe[name] = np.reshape(value, (LAYERS, AXES)) if name == "coordinates" else value
    assert probe.tobytes() == image, "struct formats disagree with TOKEN_DTYPE"
    fields = TOKEN_DTYPE.fields
    assert fields is not None
    assert tuple(fields[n][1] for n in names[1:]) == (
        _OFF_ID, _OFF_FLAGS, _OFF_WEIGHT, _OFF_RADIUS, _OFF_STRENGTH, _OFF_TIMESTAMP)
    probe = np.zeros(1, TOKEN_DTYPE)
    probe["id"], probe["flags"], probe["timestamp"] = 1, _ACTIVE, 3
    assert _new_image(1, 1, 3) == probe.tobytes() and _ACTIVE == 1 and MAX_TOKEN_ID == 0xFFFF_FFFF
    assert math.isinf(codec.to_f32(codec.F32_OVERFLOW)) and codec.to_f32(codec.F32_MAX) == codec.F32_MAX


_check_layout()
