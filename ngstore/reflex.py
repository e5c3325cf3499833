"""The persistent reflex table: a typed wrapper of the C table in ``csrc/reflex.c``.

A reflex is a Connection v3 record (``CONNECTION_DTYPE``; its ``target_vector`` is the
action) stored with the **source state** it answers. A state is a Token (its 24
coordinates), 8 floats mapped to the X axes of the 8 layers (the original
``from_state_f32``), or 24 raw ``int16`` coordinates. Reflexes are filed under the state's
grid cell (the quantized coordinates); a lookup answers from the query's cell, measuring
the similarity of the query and each source state (the original ``token_similarity``), and
optionally from the nearest stored state within a radius (the nearest fallback). The
bytes are specified in ``docs/format.md §7`` (format version 2).

Memory and lifetimes:

* :meth:`ReflexTable.create` allocates the table in numpy arrays it owns (in RAM,
  writable). It starts small and **grows** (a rebuild into a larger allocation) as
  reflexes arrive, up to ``capacity``; beyond that the weakest reflexes are evicted.
  Allocations of 4 MiB and more get transparent huge pages from numpy.
* :meth:`ReflexTable.attach` works **zero-copy** over caller-provided buffers, e.g. the
  memoryviews of LMDB values in a read transaction. The caller guarantees that those
  buffers stay valid and unchanged until :meth:`close` (or until the table object is
  garbage collected): for LMDB values, **the table must be closed before the read
  transaction that mapped them ends**. ``writable=True`` needs writable buffers; when such
  a table grows it moves into memory of its own and stops using them.
* Results of lookups are copies and stay valid forever. The buffers returned by
  :meth:`segments` / :meth:`all_segments` are views of the live table: persist (copy)
  them before the next write.

Threads: any number of threads may call the lookup methods concurrently (cffi releases
the GIL during the C call; lookups never write to the table; counters are added
atomically once per call). Writes (``insert*``, ``delete*``, ``segments``, ``resize``,
``reserve``, ``reset_stats``) must be serialised by the caller. A lookup that overlaps a
write is memory-safe -- a growth publishes a new table version and the old one stays
alive until every lookup that holds it returns -- but it may see a torn record.
"""
from __future__ import annotations

import struct
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _native
from .codec import DEFAULT_SHIFTS, check_shifts
from .errors import (
    CorruptionError,
    FormatVersionError,
    InvalidArgumentError,
    NotFoundError,
    StoreClosedError,
)
from .records import CONNECTION_DTYPE, CONNECTION_SIZE, LAYERS, RAW64, TOKEN_DTYPE
from .tokens import Token

#: The cffi ``ffi`` and ``lib`` of the compiled core (shared with ``_native``).
ffi: Any = _native.ffi
lib: Any = _native.lib

# Constants shared with csrc/reflex.h (the cdef exports them); checked at import.
HEADER_SIZE = 256
RECORD_SIZE = 128
ENTRY_SIZE = 8
FORMAT_VERSION = 2
MAX_CANDIDATES = 4
EVICT_WINDOW = 32
MAGIC = b"NGREFLEX"

KIND_F32 = 0
KIND_TOKEN = 1
KIND_COORDS = 2
_STRIDE = {KIND_F32: 32, KIND_TOKEN: 64, KIND_COORDS: 48}

#: Bits of a lookup status (format §7.7).
ANSWERED = 1
KNOWN = 2
BY_FALLBACK = 4

#: Room of a new table unless the caller asks for more: a few KiB.
INITIAL_ROOM = 64

# Status codes of csrc/ngcore.h that get their own handling here.
_EFULL = -3
_ECORRUPT = -4
_ENOTFOUND = -5
_ERANGE = -6

OUTCOMES = {1: "inserted", 2: "updated", 3: "evicted", 4: "replaced"}

_STAT_NAMES = ("lookups", "hits", "misses", "answers", "collisions", "candidates", "inserts", "updates",
               "deletes", "evictions", "fallback_answers", "fallback_cells", "fallback_scans", "time_ns",
               "timed_lookups")

#: One exported reflex (``ng_reflex_entry``).
ENTRY_DTYPE = np.dtype({
    "names": ["record", "grid_hash", "fingerprint", "tick", "connection", "state"],
    "formats": ["<u8", "<u8", "<u8", "<u8", CONNECTION_DTYPE, ("<i2", (LAYERS, 3))],
    "offsets": [0, 8, 16, 24, 32, 96],
    "itemsize": 144,
})

#: ``ng_reflex_hit``.
_HIT_DTYPE = np.dtype({
    "names": ["similarity", "distance", "status", "record", "action", "connection"],
    "formats": ["<f4", "<f4", "<u4", "<u4", ("<f4", (LAYERS,)), CONNECTION_DTYPE],
    "offsets": [0, 4, 8, 12, 16, 48],
    "itemsize": 112,
})
_HIT_ACTION = 16
_HIT_CONN = 48
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")

#: The version 2 header (format §7.2).
_HEADER = struct.Struct("<8s6HIIIIIQQQ8s48s48s84sI")
assert _HEADER.size == HEADER_SIZE


def _check_constants() -> None:
    assert (lib.NG_REFLEX_HEADER_SIZE, lib.NG_REFLEX_RECORD_SIZE, lib.NG_REFLEX_ENTRY_SIZE) == (
        HEADER_SIZE, RECORD_SIZE, ENTRY_SIZE)
    assert (lib.NG_REFLEX_FORMAT_VERSION, lib.NG_REFLEX_MAX_CANDIDATES) == (FORMAT_VERSION, MAX_CANDIDATES)
    assert lib.NG_REFLEX_EVICT_WINDOW == EVICT_WINDOW
    assert (lib.NG_REFLEX_STATE_F32, lib.NG_REFLEX_STATE_TOKEN, lib.NG_REFLEX_STATE_COORDS) == (0, 1, 2)
    assert (lib.NG_REFLEX_ANSWERED, lib.NG_REFLEX_KNOWN, lib.NG_REFLEX_BY_FALLBACK) == (1, 2, 4)
    assert len(_STAT_NAMES) == lib.NG_REFLEX_NSTATS
    assert ffi.sizeof("ng_reflex_entry") == ENTRY_DTYPE.itemsize
    assert ffi.sizeof("ng_reflex_hit") == _HIT_DTYPE.itemsize == _native.HIT_SIZE


_check_constants()


# --------------------------------------------------------------------------- keys and measures

def quantized_state_bytes(coords: npt.ArrayLike, shifts: Sequence[int] = DEFAULT_SHIFTS) -> bytes:
    """The 48 bytes the fingerprint hashes: raw coordinates ``(8, 3)`` (layer-major x, y, z)
    with the low ``shifts[layer]`` bits cleared, as little-endian ``int16``."""
    c = np.asarray(coords, dtype=np.int16).reshape(LAYERS, 3)
    sh = check_shifts(shifts).astype(np.int32)
    keep = ((0xFFFF << sh) & 0xFFFF).astype(np.uint16)
    q = (c.view(np.uint16) & keep[:, None]).astype("<u2")
    return q.tobytes()


def fingerprint_reference(coords: npt.ArrayLike, shifts: Sequence[int] = DEFAULT_SHIFTS) -> int:
    """Python reference of the C fingerprint: ``xxhash.xxh3_64_intdigest`` of
    :func:`quantized_state_bytes` (seed 0)."""
    import xxhash

    return int(xxhash.xxh3_64_intdigest(quantized_state_bytes(coords, shifts)))


def xxh3_64(data: bytes) -> int:
    """The C XXH3-64 (seed 0) for 17..128 bytes (exposed for conformance tests)."""
    if not 17 <= len(data) <= 128:
        raise InvalidArgumentError(f"the C XXH3 path takes 17..128 bytes, got {len(data)}")
    return int(lib.ng_reflex_xxh3_64(data, len(data)))


def _raw24(state: Any) -> np.ndarray:
    kind, arr, single = _as_states(state)
    if not single:
        raise InvalidArgumentError("one state expected")
    if kind == KIND_COORDS:
        return np.ascontiguousarray(arr.reshape(24), dtype=np.int16)
    if kind == KIND_TOKEN:
        return np.frombuffer(arr.tobytes()[:48], "<i2").astype(np.int16)
    from .codec import encode_state

    out = np.zeros((LAYERS, 3), np.int16)
    out[:, 0] = encode_state(arr.reshape(1, LAYERS))[0]
    return out.reshape(24)


def similarity(a: Any, b: Any) -> float:
    """The table's similarity of two states (format §7.7): the original ``token_similarity``
    (cosine over the 24 raw coordinates, clamped to [0, 1], 0 for an all-zero state), except
    that identical states have similarity 1. Computed in C."""
    return float(lib.ng_reflex_similarity(ffi.from_buffer(_raw24(a)), ffi.from_buffer(_raw24(b))))


def distance(a: Any, b: Any, shifts: Sequence[int] = DEFAULT_SHIFTS) -> float:
    """Distance of two states in grid cells (format §7.7), computed in C."""
    sh = ffi.new("uint8_t[8]", check_shifts(shifts).tolist())
    return float(lib.ng_reflex_distance(ffi.from_buffer(_raw24(a)), ffi.from_buffer(_raw24(b)), sh))


def _as_states(states: Any) -> tuple[int, np.ndarray, bool]:
    """Normalises a state or a batch of states to ``(kind, contiguous array, single)``."""
    to_bytes = getattr(states, "to_bytes", None)
    if to_bytes is not None and not isinstance(states, (np.ndarray, np.generic, int)):
        raw = to_bytes()  # a Token object
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 64:
            raise InvalidArgumentError("a Token's to_bytes() must return its 64-byte record")
        return KIND_TOKEN, np.frombuffer(raw, dtype=np.uint8), True
    if isinstance(states, np.void):
        if states.dtype.itemsize != 64:
            raise InvalidArgumentError(f"a state record must be a 64-byte Token, got dtype {states.dtype}")
        return KIND_TOKEN, np.frombuffer(states.tobytes(), dtype=np.uint8), True
    if states is None or isinstance(states, (str, bytes, bytearray, memoryview, dict, set)):
        raise InvalidArgumentError(f"a state must be 8 floats, a Token or int16 coordinates (8, 3); "
                                   f"got {type(states).__name__}")
    try:
        arr = np.asarray(states)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"not a state: {exc}") from None
    if arr.dtype == TOKEN_DTYPE or arr.dtype == RAW64:
        if arr.ndim > 1:
            raise InvalidArgumentError(f"token states must be 0- or 1-dimensional, got shape {arr.shape}")
        return KIND_TOKEN, np.ascontiguousarray(arr.reshape(-1)), arr.ndim == 0
    if arr.dtype.names is not None or arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(
            f"states must be 8 floats per state, TOKEN_DTYPE records or int16 coordinates (..., 8, 3); "
            f"got dtype {arr.dtype}")
    if arr.dtype == np.int16 and arr.ndim >= 2 and arr.shape[-2:] == (LAYERS, 3):
        if arr.ndim > 3:
            raise InvalidArgumentError(f"raw coordinates must be (8, 3) or (n, 8, 3), got {arr.shape}")
        return KIND_COORDS, np.ascontiguousarray(arr.reshape(-1, LAYERS, 3)), arr.ndim == 2
    if arr.ndim == 0 or arr.ndim > 2 or arr.shape[-1] != LAYERS:
        raise InvalidArgumentError(f"float states must have shape (8,) or (n, 8), got {arr.shape}")
    with np.errstate(over="ignore"):  # beyond float32 becomes +-inf, which saturates
        f32 = np.ascontiguousarray(arr.reshape(-1, LAYERS), dtype=np.float32)
    return KIND_F32, f32, arr.ndim == 1


def _count(kind: int, arr: np.ndarray) -> int:
    return arr.nbytes // _STRIDE[kind]


def state_keys(states: Any, shifts: Sequence[int] = DEFAULT_SHIFTS) -> tuple[np.ndarray, np.ndarray]:
    """``(grid_hashes, fingerprints)`` (``uint64`` arrays) of one or many states, in C."""
    kind, arr, _ = _as_states(states)
    n = _count(kind, arr)
    sh = ffi.new("uint8_t[8]", check_shifts(shifts).tolist())
    h = np.empty(n, np.uint64)
    f = np.empty(n, np.uint64)
    rc = lib.ng_reflex_keys(kind, ffi.from_buffer(arr), n, sh, ffi.from_buffer("uint64_t[]", h),
                            ffi.from_buffer("uint64_t[]", f))
    _native.check_status("ng_reflex_keys", rc)
    return h, f


def _connection_bytes(connection: Any) -> bytes:
    if isinstance(connection, (bytes, bytearray, memoryview)):
        raw = bytes(connection)
    elif isinstance(connection, (np.ndarray, np.void)):
        many = isinstance(connection, np.ndarray) and connection.size != 1
        if connection.dtype.itemsize != CONNECTION_SIZE or many:
            raise InvalidArgumentError(
                f"a connection must be one 64-byte CONNECTION_DTYPE record, got dtype {connection.dtype}"
                + (f" shape {connection.shape}" if isinstance(connection, np.ndarray) else ""))
        raw = connection.tobytes()
    elif hasattr(connection, "to_bytes"):
        raw = connection.to_bytes()
    else:
        raise InvalidArgumentError(f"a connection must be a CONNECTION_DTYPE record, a Connection or 64 bytes, "
                                   f"got {type(connection).__name__}")
    if len(raw) != CONNECTION_SIZE:
        raise InvalidArgumentError(f"a connection record is 64 bytes, got {len(raw)}")
    return raw


def _connection_rows(connections: Any, n: int) -> np.ndarray:
    conns = np.asarray(connections)
    if conns.dtype.itemsize != CONNECTION_SIZE or conns.dtype.kind != "V" or conns.ndim != 1:
        raise InvalidArgumentError(f"connections must be a 1-D CONNECTION_DTYPE array, got {conns.dtype} {conns.shape}")
    if len(conns) != n:
        raise InvalidArgumentError(f"{n} states but {len(conns)} connections")
    return np.ascontiguousarray(conns)


# --------------------------------------------------------------------------- parameters and results

class LookupParams:
    """The thresholds of a lookup, prepared once for C (immutable).

    ``min_confidence`` (150) and ``hypothesis_threshold`` (200, for ``mutability`` 2) make a
    reflex eligible; ``similarity_threshold`` (0.85): it is answered only if its similarity
    to the query is greater; ``nearest_fallback``: a radius in grid cells (None: off) within
    which a query whose cell gives no answer is answered by the nearest eligible reflex;
    ``fallback_budget``: neighbour cells probed before scanning every record instead (0:
    ``max(256, live / 8)``).
    """

    __slots__ = ("_c", "_one", "address", "fallback_budget", "hypothesis_threshold", "min_confidence",
                 "nearest_fallback", "similarity_threshold")

    def __init__(self, min_confidence: int = 150, hypothesis_threshold: int = 200,
                 similarity_threshold: float = 0.85, nearest_fallback: float | None = None,
                 fallback_budget: int = 0) -> None:
        for name, v, hi in (("min_confidence", min_confidence, 0xFFFFFFFF),
                            ("hypothesis_threshold", hypothesis_threshold, 0xFFFFFFFF),
                            ("fallback_budget", fallback_budget, 2**63)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= hi:
                raise InvalidArgumentError(f"{name} must be a non-negative integer, got {v!r}")
        sim = float(similarity_threshold)
        if sim != sim:
            raise InvalidArgumentError("similarity_threshold is NaN")
        radius = 0.0
        if nearest_fallback is not None:
            radius = float(nearest_fallback)
            if not radius > 0.0 or radius == float("inf"):
                raise InvalidArgumentError(f"nearest_fallback must be a finite distance > 0 (grid cells) or None, "
                                           f"got {nearest_fallback!r}")
        self.min_confidence = int(min_confidence)
        self.hypothesis_threshold = int(hypothesis_threshold)
        self.similarity_threshold = sim
        self.nearest_fallback = None if nearest_fallback is None else radius
        self.fallback_budget = int(fallback_budget)
        self._c: Any = ffi.new("ng_reflex_params *", (self.min_confidence, self.hypothesis_threshold, sim,
                                                      radius, self.fallback_budget))
        # A lookup without a fallback is a bounded probe of one cell, whose C call keeps the
        # GIL; a fallback may probe many cells or scan every record, and releases it.
        self._one: Any = lib.ng_reflex_lookup_one if radius == 0.0 else lib.ng_reflex_lookup_one_released
        #: the C params' address, what a probe (:attr:`ReflexTable.probe`) takes; it keeps or
        #: releases the GIL by the radius itself
        self.address = int(ffi.cast("uintptr_t", self._c))

    def __repr__(self) -> str:
        return (f"LookupParams(min_confidence={self.min_confidence}, hypothesis_threshold="
                f"{self.hypothesis_threshold}, similarity_threshold={self.similarity_threshold}, "
                f"nearest_fallback={self.nearest_fallback})")


DEFAULT_PARAMS = LookupParams()


class LookupResult(NamedTuple):
    """Per-state results of :meth:`ReflexTable.lookup_batch` (all arrays are copies)."""

    found: np.ndarray        #: bool (n,): a reflex answered (exact path or fallback)
    known: np.ndarray        #: bool (n,): the state's own cell holds a reflex
    record: np.ndarray       #: int64 (n,): record number of the answer, -1 if none
    confidence: np.ndarray   #: uint8 (n,): its confidence, 0 if none
    similarity: np.ndarray   #: float32 (n,): similarity of the query and its source state
    action: np.ndarray       #: float32 (n, 8): decoded target_vector, zeros if none
    connections: np.ndarray | None  #: CONNECTION_DTYPE (n,) or None (with_connections=False)
    fallback: np.ndarray     #: bool (n,): answered by the nearest fallback
    distance: np.ndarray     #: float32 (n,): grid cells from the query to the source state


class ReflexHit(bytes):
    """The answer of one lookup: ``connection`` (a CONNECTION_DTYPE record), ``action``
    (float32 (8,), the decoded target_vector), ``similarity``, ``distance`` (grid cells),
    ``fallback`` (answered by the nearest fallback), ``confidence`` and ``record``.

    It *is* the 112-byte C result (``ng_reflex_hit``), copied in one step: a bytes object
    costs one allocation and no Python frame, which a single lookup cannot otherwise
    afford (measured: the object and its fields would cost more than the lookup). Fields
    are decoded on access; the numpy views are read-only and own their bytes. Unpacks like
    the tuple ``(connection, action, similarity)`` it replaces."""

    __slots__ = ()

    @property
    def similarity(self) -> float:
        return float(_F32.unpack_from(self, 0)[0])

    @property
    def distance(self) -> float:
        return float(_F32.unpack_from(self, 4)[0])

    @property
    def fallback(self) -> bool:
        return bool(_U32.unpack_from(self, 8)[0] & BY_FALLBACK)

    @property
    def record(self) -> int:
        return int(_U32.unpack_from(self, 12)[0])

    @property
    def confidence(self) -> int:
        return self[_HIT_CONN + 33]

    @property
    def action(self) -> np.ndarray:
        return np.frombuffer(self, np.float32, LAYERS, _HIT_ACTION)

    @property
    def connection(self) -> np.void:
        rec: np.void = np.frombuffer(self, CONNECTION_DTYPE, 1, _HIT_CONN)[0]
        return rec

    def __iter__(self) -> Iterator[Any]:  # unpacks as the tuple, not as bytes
        return iter((self.connection, self.action, self.similarity))

    def __str__(self) -> str:  # not bytes' str()
        return self.__repr__()

    def __repr__(self) -> str:
        how = "fallback" if self.fallback else "exact"
        return (f"ReflexHit({how}, similarity={self.similarity:.3f}, distance={self.distance:.3f}, "
                f"confidence={self.confidence}, action={self.action.tolist()})")


class ReflexEntry(NamedTuple):
    record: int
    grid_hash: int
    fingerprint: int
    tick: int
    connection: np.void
    state: np.ndarray


class InsertPlan(NamedTuple):
    """What an ``insert_batch`` would do (:meth:`ReflexTable.plan_insert`)."""

    new_reflexes: int            #: reflexes it adds (an upsert of an existing one adds none)
    first_eviction: int | None   #: index of the first state that would evict or replace one


@dataclass(frozen=True)
class Geometry:
    """How a table's memory is cut into segments (format §7.3)."""

    records_per_segment: int
    record_segments: int
    entries_per_segment: int
    index_segments: int

    @classmethod
    def for_room(cls, room: int, *, records_per_segment: int | None = None,
                 entries_per_segment: int | None = None) -> Geometry:
        """The geometry of a table that holds ``room`` reflexes (C's plan: load <= 3/4)."""
        g = ffi.new("ng_reflex_geometry *")
        rc = lib.ng_reflex_plan_geometry(int(room), int(records_per_segment or 0), int(entries_per_segment or 0), g)
        if rc != 0:
            raise InvalidArgumentError(
                f"cannot lay out a reflex table for {room} reflexes with records_per_segment={records_per_segment}, "
                f"entries_per_segment={entries_per_segment}: {_native.strerror(rc)} (room 1..2^32; segment sizes "
                f"powers of two, 16..2^16 records and 16..2^20 entries)")
        return cls._of(g)

    @classmethod
    def _of(cls, g: Any) -> Geometry:
        return cls(int(g.records_per_segment), int(g.record_segments), int(g.entries_per_segment),
                   int(g.index_segments))

    @property
    def records(self) -> int:
        return self.records_per_segment * self.record_segments

    @property
    def slots(self) -> int:
        return self.entries_per_segment * self.index_segments

    @property
    def segment_count(self) -> int:
        return self.record_segments + self.index_segments

    def segment_lengths(self) -> list[int]:
        return ([self.records_per_segment * RECORD_SIZE] * self.record_segments
                + [self.entries_per_segment * ENTRY_SIZE] * self.index_segments)

    def c(self) -> Any:
        return ffi.new("ng_reflex_geometry *", (self.records_per_segment, self.record_segments,
                                                self.entries_per_segment, self.index_segments))


class RoomPlan(NamedTuple):
    """A table's allocation, known before it is made (:func:`plan_room`)."""

    room: int          #: reflexes it holds before it must grow again
    memory_bytes: int  #: what it occupies (:attr:`ReflexTable.memory_bytes`)


def plan_room(capacity: int, room: int) -> RoomPlan:
    """The allocation :meth:`ReflexTable.create` and growth make when asked for ``room``
    reflexes (default segment sizes): its real room (a whole number of segments, load at
    most 3/4) and its memory. So memory can be counted, and refused, before it is taken."""
    g = Geometry.for_room(max(1, min(capacity, room)))
    real = min(capacity, g.records, 3 * g.slots // 4)
    return RoomPlan(real, sum(g.segment_lengths()) + HEADER_SIZE + _handle_bytes(g.segment_count))


def grown_room(capacity: int, room: int, wanted: int) -> int | None:
    """The room a table asks for when ``wanted`` reflexes must fit: at least twice its room,
    so that a table filled one reflex at a time is rebuilt O(log n) times, and at most its
    capacity; None when its room already is its capacity (it evicts instead)."""
    if room >= capacity:
        return None
    return min(capacity, max(wanted, 2 * room))


_handle_base: int | None = None


def _handle_bytes(segment_count: int) -> int:
    """The C handle's size for a table of ``segment_count`` segments: the struct, then a
    pointer and a dirty flag per segment (``alloc_table`` in csrc/reflex.c); the struct's
    size is read once from a real handle, not assumed."""
    global _handle_base
    per_segment = int(ffi.sizeof("uint8_t *")) + 1
    if _handle_base is None:
        g = Geometry.for_room(1)
        info = ReflexTable._info(_new_version(1, np.zeros(8, np.uint8), g))
        _handle_base = int(info.handle_bytes) - g.segment_count * per_segment
    return _handle_base + segment_count * per_segment


def _version_error(raw: bytes) -> FormatVersionError | None:
    """A FormatVersionError for a well-formed header of another format version, else None."""
    if len(raw) < 10 or raw[:8] != MAGIC:
        return None
    version = int.from_bytes(raw[8:10], "little")
    if version == FORMAT_VERSION:
        return None
    v1_ok = version == 1 and len(raw) == 128 and zlib.crc32(raw[:124]) == int.from_bytes(raw[124:128], "little")
    other_ok = len(raw) == HEADER_SIZE and zlib.crc32(raw[:252]) == int.from_bytes(raw[252:], "little")
    if not (v1_ok or other_ok):
        return None  # a damaged header: attach reports it as corruption
    if version == 1:
        return FormatVersionError(
            "reflex table format version 1 was written by an older ngstore; this code reads version 2, which keeps "
            "each reflex's source state (version 1 never stored it, so it cannot be converted): write the reflexes "
            "again (consolidate them, or put_reflexes from their states)")
    return FormatVersionError(f"reflex table format version {version} is not supported (this code reads version "
                              f"{FORMAT_VERSION}); upgrade ngstore")


def parse_header(header: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decodes a 256-byte table header without validating it (for tools and messages).

    ``segment_count`` is the number of segment values (record segments, then index
    segments). Raises FormatVersionError for a header of another format version and
    CorruptionError for one of the wrong length."""
    raw = bytes(header)
    err = _version_error(raw)
    if err is not None:
        raise err
    if len(raw) != HEADER_SIZE:
        raise CorruptionError(f"reflex table header is {len(raw)} bytes, expected {HEADER_SIZE}")
    (magic, version, header_size, record_size, entry_size, max_candidates, window, flags, rps, nrseg, eps, niseg,
     capacity, live, tick, shifts, box_min, box_max, _reserved, crc) = _HEADER.unpack(raw)
    return {"magic": magic, "version": version, "header_size": header_size, "record_size": record_size,
            "entry_size": entry_size, "max_candidates": max_candidates, "eviction_window": window, "flags": flags,
            "records_per_segment": rps, "record_segments": nrseg, "entries_per_segment": eps,
            "index_segments": niseg, "segment_count": nrseg + niseg, "capacity": capacity, "live_count": live,
            "tick": tick, "shifts": tuple(shifts), "box_min": tuple(np.frombuffer(box_min, "<i2").tolist()),
            "box_max": tuple(np.frombuffer(box_max, "<i2").tolist()), "crc": crc,
            "crc_ok": zlib.crc32(raw[:252]) == crc}


# --------------------------------------------------------------------------- the table

class _Version:
    """One C handle and every buffer it reads. A lookup holds a reference to the version it
    started on, so a growth that publishes a new version never frees memory under it."""

    __slots__ = ("__weakref__", "buffers", "handle", "keepalive")

    def __init__(self, handle: Any, buffers: list[Any], keepalive: list[Any]) -> None:
        self.handle = handle
        self.buffers = buffers      # segment buffers, by segment index
        self.keepalive = keepalive  # cffi buffer exports and arenas that back them


def _probe_of(v: _Version) -> Any:
    """The single-state lookups of ``v`` through the CPython API; the probe keeps ``v``."""
    return _native.Probe(int(ffi.cast("uintptr_t", v.handle)), v, ReflexHit)


def _allocate(geometry: Geometry) -> tuple[np.ndarray, list[np.ndarray]]:
    """One zeroed arena cut into the segments of ``geometry``. One allocation: numpy asks
    the kernel for transparent huge pages on arrays of 4 MiB and more, and with 4 KiB
    pages every random probe of a big table would also pay a TLB miss."""
    lengths = geometry.segment_lengths()
    arena = np.zeros(sum(lengths), dtype=np.uint8)
    segs, off = [], 0
    for n in lengths:
        segs.append(arena[off:off + n])
        off += n
    return arena, segs


def _segment_pointer(buf: Any, writable: bool) -> tuple[Any, int]:
    """``(pointer, length)`` of a segment the table reads in place, kept with ``buf``.

    A memoryview (an LMDB value's, or one over another object it keeps exported) gets a
    plain pointer (``_native.buffer_pointer``: no cffi export of a memoryview may stay in
    the table, where a reference cycle -- a table reached from an exception's traceback --
    would crash the garbage collector); an LMDB value's memory is kept by the read lease
    (``attach``'s ``release``). Other buffers stay exported, so that an object such as a
    bytearray cannot be resized under the table."""
    if isinstance(buf, memoryview) and not writable:
        return _native.buffer_pointer(buf)
    exported = ffi.from_buffer("uint8_t[]", buf, require_writable=writable)
    return exported, len(exported)


class Current:
    """The table version lookups use now (None before the first reflex of a store, and
    once the store is closed). One attribute read per lookup: the fast path reads it
    without a lock or a call; its owner (a store's applier or read-only handle, or an in-memory engine) replaces it."""

    __slots__ = ("table",)

    def __init__(self, table: ReflexTable | None = None) -> None:
        self.table = table


class ReflexTable:
    """Reflexes and their source states in segments; see the module doc and format §7."""

    def __init__(self, version: _Version, writable: bool) -> None:
        # Use create / attach / from_bytes; this only takes over a C handle.
        self._v: _Version | None = version
        #: single-state lookups on the current version, for any thread (``_native.Probe``;
        #: :meth:`lookup_with` is its checked use), None once closed. Replaced with the
        #: version, and it keeps the version it was made for alive while a call runs.
        self.probe: Any = _probe_of(version)
        self._writable = writable
        self._growths = 0
        self._segment_hints: tuple[int | None, int | None] = (None, None)  # sizes asked for at create
        info = self._info(version)
        self._shifts = tuple(int(x) for x in info.shifts)

    # ---- construction

    @classmethod
    def create(cls, capacity: int, shifts: Sequence[int] = DEFAULT_SHIFTS, *, room: int | None = None,
               records_per_segment: int | None = None, entries_per_segment: int | None = None) -> ReflexTable:
        """An empty in-memory table for at most ``capacity`` reflexes.

        It allocates room for ``room`` reflexes (default ``min(capacity, 64)``: a few KiB)
        and grows on demand, so an unused table costs almost nothing. The segment sizes
        (powers of two; default 512 records = 64 KiB and 8192 index entries = 64 KiB,
        smaller for small tables) set the unit of persistence.
        """
        cap = _positive_int("capacity", capacity)
        initial = INITIAL_ROOM if room is None else _positive_int("room", room)
        geometry = Geometry.for_room(min(cap, initial), records_per_segment=records_per_segment,
                                     entries_per_segment=entries_per_segment)
        table = cls(_new_version(cap, check_shifts(shifts), geometry), True)
        table._segment_hints = (records_per_segment, entries_per_segment)
        return table

    @classmethod
    def attach(cls, header: Any, segment_buffers: Sequence[Any], *, writable: bool = False,
               release: Callable[[], object] | None = None) -> ReflexTable:
        """A table over stored bytes, zero-copy: ``header`` (256 bytes) and the segments in
        index order (any buffer: bytes, memoryview of an LMDB value, numpy array).

        The header and every segment length are validated (O(1); :meth:`check` scans the
        rest). Raises CorruptionError naming the failed check and FormatVersionError for a
        table of another format version (version 1 included: see format §7). The buffers
        must outlive the table (see the module doc): ``release`` is called once nothing
        can read them any more -- the table and every lookup running on it are gone (or
        closed) -- and is how a caller ties their memory to the table's lifetime (an LMDB
        read lease, released then). It is not called at interpreter exit: the exit's own
        collection frees everything, and releasing a map while a daemon thread still
        looks up in it would fault."""
        hdr = bytes(header)
        err = _version_error(hdr)
        if err is not None:
            raise err
        bufs = list(segment_buffers)
        try:
            segs = [_segment_pointer(b, writable) for b in bufs]
        except (TypeError, BufferError) as exc:
            raise InvalidArgumentError(
                f"reflex segments must be buffers{' (writable, since writable=True)' if writable else ''}: {exc}"
            ) from None
        out = ffi.new("ng_reflex_table **")
        reason = ffi.new("char *[1]")
        ptrs = [p for p, _n in segs]
        rc = lib.ng_reflex_attach(hdr, len(hdr), ffi.new("uint8_t *[]", ptrs) if ptrs else ffi.NULL,
                                  ffi.new("size_t[]", [n for _p, n in segs]) if ptrs else ffi.NULL,
                                  len(ptrs), 1 if writable else 0, out, ffi.cast("const char **", reason))
        why = ffi.string(reason[0]).decode() if reason[0] != ffi.NULL else ""
        if rc == _ECORRUPT:
            raise CorruptionError(f"reflex table: {why}", path="reflex table header")
        if rc == _ERANGE:
            raise FormatVersionError(f"reflex table: {why}")
        _native.check_status("ng_reflex_attach", rc, why)
        version = _Version(ffi.gc(out[0], lib.ng_reflex_free), bufs, [*ptrs, hdr])
        if release is not None:
            weakref.finalize(version, release).atexit = False
        return cls(version, bool(writable))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, writable: bool = True) -> ReflexTable:
        """A table from :meth:`to_bytes` output (copied into fresh numpy segments)."""
        raw = memoryview(data).cast("B")
        head = bytes(raw[:HEADER_SIZE])
        err = _version_error(bytes(raw[:128])) or _version_error(head)
        if err is not None:
            raise err
        if len(raw) < HEADER_SIZE:
            raise CorruptionError(f"reflex table image is {len(raw)} bytes, shorter than its header")
        fields = parse_header(head)
        rec, idx = fields["records_per_segment"] * RECORD_SIZE, fields["entries_per_segment"] * ENTRY_SIZE
        body = raw[HEADER_SIZE:]
        # Sizes before lists: the unvalidated counts may be up to 2^32 each, so the list of
        # segment lengths is made only once the body is known to hold them all.
        if not fields["crc_ok"] or not rec or not idx or \
                len(body) != rec * fields["record_segments"] + idx * fields["index_segments"]:
            # attach reports the precise reason (CRC, sizes, counts)
            whole: list[Any] = [np.frombuffer(body, dtype=np.uint8).copy()] if len(body) else []
            return cls.attach(head, whole, writable=writable)
        lengths = [rec] * fields["record_segments"] + [idx] * fields["index_segments"]
        segs, off = [], 0
        for n in lengths:
            segs.append(np.frombuffer(body[off:off + n], dtype=np.uint8).copy())
            off += n
        return cls.attach(head, segs, writable=writable)

    def to_bytes(self) -> bytes:
        """Header followed by every segment in index order (what :meth:`from_bytes` reads)."""
        v = self._version()
        return self.header() + b"".join(bytes(memoryview(s).cast("B")) for s in v.buffers)

    # ---- lifetime

    def close(self) -> None:
        """Drops the table; later calls raise StoreClosedError. Memory is freed when the
        last lookup still running on it returns."""
        self._v = None
        self.probe = None

    def __enter__(self) -> ReflexTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _version(self) -> _Version:
        v = self._v
        if v is None:
            raise StoreClosedError("the reflex table is closed")
        return v

    def _writable_version(self) -> _Version:
        v = self._version()
        if not self._writable:
            raise InvalidArgumentError("the reflex table is read-only (attached with writable=False); "
                                       "attach writable copies of the segments to change it")
        return v

    @staticmethod
    def _info(v: _Version) -> Any:
        info = ffi.new("ng_reflex_info *")
        _native.check_status("ng_reflex_info_get", lib.ng_reflex_info_get(v.handle, info))
        return info

    # ---- description

    def __len__(self) -> int:
        return int(self._info(self._version()).live_count)

    @property
    def capacity(self) -> int:
        """The most live reflexes the table keeps (then it evicts the weakest)."""
        return int(self._info(self._version()).capacity)

    @property
    def room(self) -> int:
        """Reflexes the current allocation holds before the table grows (<= capacity)."""
        return int(self._info(self._version()).room)

    @property
    def slot_count(self) -> int:
        """Index slots (the load factor is ``len(self) / slot_count``, at most 3/4)."""
        return int(self._info(self._version()).slots)

    @property
    def geometry(self) -> Geometry:
        return Geometry._of(self._info(self._version()).geometry)

    @property
    def segment_count(self) -> int:
        return int(self._info(self._version()).segment_count)

    @property
    def memory_bytes(self) -> int:
        """Bytes the table occupies: every segment (owned or mapped), the header and the C
        handle. For a table attached to LMDB the segments are the mapped values."""
        info = self._info(self._version())
        return int(info.segment_bytes) + HEADER_SIZE + int(info.handle_bytes)

    @property
    def shifts(self) -> tuple[int, ...]:
        return self._shifts

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def closed(self) -> bool:
        return self._v is None

    def header(self) -> bytes:
        """The current 256-byte header (with CRC)."""
        buf = ffi.new("uint8_t[]", HEADER_SIZE)
        rc = lib.ng_reflex_write_header(self._version().handle, buf, HEADER_SIZE)
        _native.check_status("ng_reflex_write_header", rc)
        return bytes(ffi.buffer(buf))

    # ---- errors

    def _raise(self, function: str, rc: int, hint: str = "") -> None:
        if rc == _ECORRUPT:
            raise CorruptionError(f"{function}: the table fails a structural check ({_native.strerror(rc)}); "
                                  "run ReflexTable.check() to locate it and rebuild the table from its reflexes",
                                  path="reflex table segments")
        if rc == _ENOTFOUND:
            raise NotFoundError(hint or f"{function}: not found")
        _native.check_status(function, rc, hint)

    def _raise_write(self, function: str, rc: int, hint: str) -> None:
        if rc == _EFULL:
            # Growth could not make room: at capacity, a probe run longer than 254 entries.
            # That does not happen to a sound table (load <= 3/4, XXH3 placement), so look
            # for the corruption that causes it first.
            self.check()
            hint = (f"{hint}; " if hint else "") + ("a probe sequence reached its maximum length at full "
                                                    "capacity; resize() the table to a larger capacity")
        self._raise(function, rc, hint)

    # ---- growth

    def _rebuild(self, capacity: int, room: int) -> None:
        """Publishes a new version: ``room`` reflexes in fresh memory, the same reflexes."""
        old = self._writable_version()
        info = self._info(old)
        rps, eps = self._segment_hints  # None: the default sizes for the new room
        g = Geometry.for_room(max(1, room), records_per_segment=rps, entries_per_segment=eps)
        new = _new_version(capacity, np.asarray(self._shifts, np.uint8), g)
        rc = lib.ng_reflex_rebuild(old.handle, new.handle)
        if rc != 0:
            self._raise("ng_reflex_rebuild", rc, f"rebuilding {int(info.live_count)} reflexes into room for {room}")
        self._v = new
        self.probe = _probe_of(new)
        self._growths += 1

    def _grow_for(self, wanted: int) -> bool:
        """Grows so that ``wanted`` reflexes fit (capped at capacity): at least doubling, so
        that a table filled one reflex at a time is rebuilt O(log n) times. False if the
        table is already as large as its capacity allows."""
        info = self._info(self._version())
        room = grown_room(int(info.capacity), int(info.room), wanted)
        if room is None:
            return False
        self._rebuild(int(info.capacity), room)
        return True

    def reserve(self, n: int) -> None:
        """Makes room for ``n`` reflexes now (at most capacity), e.g. before a bulk load."""
        want = _positive_int("n", n)
        info = self._info(self._writable_version())
        if int(info.room) < min(want, int(info.capacity)):
            self._rebuild(int(info.capacity), min(want, int(info.capacity)))

    def resize(self, capacity: int) -> None:
        """Sets a new capacity (>= the live count) and fits the allocation to it: it grows
        when needed later, and shrinks now if it exceeds the new capacity. The table is
        rebuilt (every segment changes): the unit of a logged ``resize_reflexes``."""
        cap = _positive_int("capacity", capacity)
        info = self._info(self._writable_version())
        live = int(info.live_count)
        if cap < live:
            raise InvalidArgumentError(f"cannot resize the reflex table to capacity {cap}: it holds {live} "
                                       "reflexes; delete some first")
        self._rebuild(cap, min(cap, max(int(info.room), live, 1)))

    # ---- writes

    def insert(self, state: Any, connection: Any) -> str:
        """Upserts one reflex: ``connection`` (a CONNECTION_DTYPE record, a Connection or 64
        bytes) for ``state``. Returns ``"inserted"``, ``"updated"`` (same cell and identity
        (token_a, token_b, connection_type): record and source state replaced),
        ``"evicted"`` (table at capacity: the weakest reflex of the eviction window went
        first) or ``"replaced"`` (the cell already had 4 reflexes: the weakest was
        replaced)."""
        kind, arr, single = _as_states(state)
        if not single:
            raise InvalidArgumentError("insert takes one state; use insert_batch for many")
        raw = _connection_bytes(connection)
        out = ffi.new("int *")
        while True:
            rc = lib.ng_reflex_insert(self._writable_version().handle, kind, ffi.from_buffer(arr), raw, out, ffi.NULL)
            if rc != _EFULL or not self._grow_for(len(self) + 1):
                break
        if rc != 0:
            self._raise_write("ng_reflex_insert", rc, "")
        return OUTCOMES[int(out[0])]

    def insert_batch(self, states: Any, connections: Any) -> np.ndarray:
        """Upserts ``n`` reflexes in order (states: (n, 8) floats, TOKEN_DTYPE (n,) or
        int16 (n, 8, 3); connections: CONNECTION_DTYPE (n,)). Grows the table first if the
        batch may not fit. Returns the outcome codes (``int8``: 1 inserted, 2 updated,
        3 evicted, 4 replaced; see :data:`OUTCOMES`)."""
        self._writable_version()
        kind, arr, _ = _as_states(states)
        n = _count(kind, arr)
        conns = _connection_rows(connections, n)
        outcomes = np.zeros(n, np.int8)
        if n == 0:
            return outcomes
        live = len(self)
        if live + n > self.room:
            self._grow_for(live + n)
        stride = _STRIDE[kind]
        exports = (ffi.from_buffer(arr), ffi.from_buffer(conns), ffi.from_buffer(outcomes))  # alive below
        base = ffi.cast("uint8_t *", exports[0])
        cbase = ffi.cast("uint8_t *", exports[1])
        obase = ffi.cast("int8_t *", exports[2])
        done = ffi.new("size_t *")
        start = 0
        while True:
            rc = lib.ng_reflex_insert_batch(self._writable_version().handle, kind, base + start * stride, n - start,
                                            cbase + start * CONNECTION_SIZE, obase + start, done)
            start += int(done[0])
            if rc != _EFULL or not self._grow_for(len(self) + (n - start)):
                break
        if rc != 0:
            self._raise_write("ng_reflex_insert_batch", rc, f"after {start} of {n} inserts")
        return outcomes

    def plan_insert(self, states: Any, connections: Any) -> InsertPlan:
        """What :meth:`insert_batch` would do with these reflexes, without writing:
        ``new_reflexes`` and ``first_eviction`` (the index of the first state that would
        evict or replace a reflex, or None). Exact: a policy that refuses evictions can
        call this first and refuse before anything is written."""
        v = self._version()
        kind, arr, _ = _as_states(states)
        n = _count(kind, arr)
        conns = _connection_rows(connections, n)
        new = ffi.new("uint64_t *")
        first = ffi.new("int64_t *")
        rc = lib.ng_reflex_plan_insert(v.handle, kind, ffi.from_buffer(arr), n,
                                       ffi.from_buffer("uint8_t[]", conns) if n else ffi.NULL, new, first)
        if rc != 0:
            self._raise("ng_reflex_plan_insert", rc)
        return InsertPlan(int(new[0]), None if first[0] < 0 else int(first[0]))

    def would_evict(self, states: Any, connections: Any) -> bool:
        """Whether :meth:`insert_batch` of these reflexes would evict or replace any."""
        return self.plan_insert(states, connections).first_eviction is not None

    def delete(self, state: Any, connection: Any = None) -> int:
        """Deletes the reflex of ``state``'s cell with the identity of ``connection`` (token_a,
        token_b, connection_type), or every reflex of the cell if ``connection`` is None.
        Returns how many were deleted; raises NotFoundError if none."""
        v = self._writable_version()
        kind, arr, single = _as_states(state)
        if not single:
            raise InvalidArgumentError("delete takes one state")
        raw = ffi.NULL if connection is None else _connection_bytes(connection)
        out = ffi.new("uint32_t *")
        rc = lib.ng_reflex_delete(v.handle, kind, ffi.from_buffer(arr), raw, out)
        if rc != 0:
            self._raise("ng_reflex_delete", rc, "no reflex of that state" + ("" if connection is None else
                                                                           " with that identity"))
        return int(out[0])

    def delete_key(self, grid_hash: int, fingerprint: int, connection: Any = None) -> int:
        """Like :meth:`delete`, by the cell's key (``grid_hash``, ``fingerprint``, as
        :meth:`entries` reports them) for a caller that does not have the state. Returns
        how many were deleted; raises NotFoundError if none."""
        v = self._writable_version()
        raw = ffi.NULL if connection is None else _connection_bytes(connection)
        out = ffi.new("uint32_t *")
        rc = lib.ng_reflex_delete_key(v.handle, int(grid_hash), int(fingerprint), raw, out)
        if rc != 0:
            self._raise("ng_reflex_delete_key", rc, "no reflex with that key")
        return int(out[0])

    # ---- lookups

    def lookup(self, state: Any, *, min_confidence: int = 150, hypothesis_threshold: int = 200,
               similarity_threshold: float = 0.85, nearest_fallback: float | None = None) -> ReflexHit | None:
        """The fast path for one state: a :class:`ReflexHit`, or None (nothing eligible in
        the state's cell, nor -- with ``nearest_fallback`` -- within that many grid cells).
        See :class:`LookupParams` for the thresholds and format §7.7 for the rules."""
        if (min_confidence == 150 and hypothesis_threshold == 200 and similarity_threshold == 0.85
                and nearest_fallback is None):
            return self.lookup_with(DEFAULT_PARAMS, state)
        return self.lookup_with(LookupParams(min_confidence, hypothesis_threshold, similarity_threshold,
                                             nearest_fallback), state)

    def lookup_with(self, params: LookupParams, state: Any) -> ReflexHit | None:
        """:meth:`lookup` with prepared parameters. A list or tuple of 8 numbers, a float
        row and a Token take one call through the CPython API (``_native.Probe``: no cffi
        conversions, and a hit is built in one allocation); other forms of a state go
        through cffi."""
        probe = self.probe
        if probe is None:
            raise StoreClosedError("the reflex table is closed")
        r = probe.lookup(params.address, state)
        if type(r) is not int:
            return r  # type: ignore[no-any-return]  # a ReflexHit or None
        return self._lookup_general(probe, params, state, r)

    def _lookup_general(self, probe: Any, params: LookupParams, state: Any, r: int) -> ReflexHit | None:
        """The rest of :meth:`lookup_with`: ``probe``'s status ``r`` was an error, or the
        state was not a list or tuple of 8 numbers."""
        if r == _native.NOT_SIMPLE:
            if type(state) is Token:  # its 64 bytes as they are
                hit = probe.lookup_token(params.address, state.to_bytes())
                if type(hit) is not int:
                    return hit  # type: ignore[no-any-return]
                r = hit
            else:
                v = self._version()  # held for the call, as the probe holds its own
                ctx = ffi.new("ng_reflex_ctx *")
                ctx.table = v.handle
                r = self._lookup_any(ctx, params, state)
                if r > KNOWN:  # answered
                    return ReflexHit(ffi.buffer(ffi.addressof(ctx, "out"), _HIT_DTYPE.itemsize))
        if r < 0:
            self._raise("ng_reflex_lookup_one", r)
        return None

    @staticmethod
    def _lookup_any(ctx: Any, params: LookupParams, state: Any) -> int:
        kind, arr, single = _as_states(state)
        if not single:
            raise InvalidArgumentError("lookup takes one state; use lookup_batch for many")
        return int(params._one(ctx, params._c, kind, ffi.from_buffer(arr)))

    def lookup_batch(self, states: Any, *, params: LookupParams | None = None, min_confidence: int = 150,
                     hypothesis_threshold: int = 200, similarity_threshold: float = 0.85,
                     nearest_fallback: float | None = None, with_connections: bool = True) -> LookupResult:
        """The main interface: one C call hashes and probes every state (and, with a
        fallback radius, searches the neighbourhood of the states it could not answer).

        ``states``: (n, 8) floats (X axes, encoded like the original), a TOKEN_DTYPE (n,)
        array or int16 (n, 8, 3) raw coordinates. ``params`` (prepared) or the keyword
        thresholds, as for :meth:`lookup`."""
        v = self._version()
        if params is None:
            params = (DEFAULT_PARAMS if (min_confidence, hypothesis_threshold, similarity_threshold,
                                         nearest_fallback) == (150, 200, 0.85, None)
                      else LookupParams(min_confidence, hypothesis_threshold, similarity_threshold, nearest_fallback))
        kind, arr, _ = _as_states(states)
        n = _count(kind, arr)
        status = np.empty(n, np.uint8)
        record = np.empty(n, np.int64)
        conf = np.empty(n, np.uint8)
        sim = np.empty(n, np.float32)
        dist = np.empty(n, np.float32)
        action = np.empty((n, LAYERS), np.float32)
        conns = np.empty(n, CONNECTION_DTYPE) if with_connections else None
        rc = lib.ng_reflex_lookup_batch(v.handle, kind, ffi.from_buffer(arr), n, params._c,
                                        ffi.from_buffer("uint8_t[]", status), ffi.from_buffer("int64_t[]", record),
                                        ffi.from_buffer("uint8_t[]", conf), ffi.from_buffer("float[]", sim),
                                        ffi.from_buffer("float[]", dist), ffi.from_buffer("float[]", action),
                                        ffi.from_buffer("uint8_t[]", conns) if conns is not None else ffi.NULL)
        if rc != 0:
            self._raise("ng_reflex_lookup_batch", rc)
        return LookupResult((status & ANSWERED) != 0, (status & KNOWN) != 0, record, conf, sim, action, conns,
                            (status & BY_FALLBACK) != 0, dist)

    # ---- iteration, check, stats, persistence

    def entries(self) -> np.ndarray:
        """Every reflex as an ENTRY_DTYPE array (record, grid_hash, fingerprint, tick,
        connection, state), in record order (a copy)."""
        v = self._version()
        live = len(self)
        out = np.empty(live, ENTRY_DTYPE)
        if live == 0:
            return out
        cursor = ffi.new("uint64_t *", 0)
        n = ffi.new("size_t *")
        rc = lib.ng_reflex_export(v.handle, cursor, ffi.from_buffer("ng_reflex_entry[]", out), live, n)
        if rc != 0:
            self._raise("ng_reflex_export", rc)
        return out[: int(n[0])]

    def items(self) -> Iterator[ReflexEntry]:
        """Iterates over the reflexes as ReflexEntry tuples (record order)."""
        for e in self.entries():
            yield ReflexEntry(int(e["record"]), int(e["grid_hash"]), int(e["fingerprint"]), int(e["tick"]),
                              e["connection"].copy(), e["state"].copy())

    def check(self) -> None:
        """Full structural scan (records, index, Robin Hood order, candidate cap, box, live
        count). Raises CorruptionError naming the segment and byte offset of the first bad
        record or entry."""
        v = self._version()
        seg = ffi.new("uint64_t *")
        off = ffi.new("uint64_t *")
        why = ffi.new("char *[1]")
        rc = lib.ng_reflex_check(v.handle, seg, off, ffi.cast("const char **", why))
        if rc == _ECORRUPT:
            reason = ffi.string(why[0]).decode() if why[0] != ffi.NULL else "structural check failed"
            g = self.geometry
            s = int(seg[0])
            if s >= g.segment_count:
                raise CorruptionError(f"reflex table: {reason}", path="reflex table header")
            what = "record" if s < g.record_segments else "index"
            raise CorruptionError(f"reflex table: {reason}", path=f"reflex segment {s} ({what})", offset=int(off[0]))
        if rc != 0:
            self._raise("ng_reflex_check", rc)

    def stats(self) -> dict[str, Any]:
        """Counters kept in C since create/attach (or :meth:`reset_stats`; a growth keeps
        them), with derived rates, the sizes, and the upstream names (``fast_path_hits``,
        ``total_reflexes``, ...)."""
        v = self._version()
        out = ffi.new("uint64_t[]", len(_STAT_NAMES))
        _native.check_status("ng_reflex_stats", lib.ng_reflex_stats(v.handle, out, len(_STAT_NAMES)))
        s: dict[str, Any] = {k: int(out[i]) for i, k in enumerate(_STAT_NAMES)}
        info = self._info(v)
        live, slots = int(info.live_count), int(info.slots)
        s.update(
            live=live, capacity=int(info.capacity), room=int(info.room), slot_count=slots,
            records_allocated=int(info.records), load_factor=live / slots, segment_count=int(info.segment_count),
            segment_bytes=int(info.segment_bytes), memory_bytes=int(info.segment_bytes) + HEADER_SIZE
            + int(info.handle_bytes), growths=self._growths,
            exact_answers=s["answers"] - s["fallback_answers"],
            hit_rate=s["hits"] / s["lookups"] if s["lookups"] else 0.0,
            collision_rate=s["collisions"] / s["hits"] if s["hits"] else 0.0,
            avg_candidates_per_lookup=s["candidates"] / s["lookups"] if s["lookups"] else 0.0,
            avg_lookup_ns=s["time_ns"] / s["timed_lookups"] if s["timed_lookups"] else 0.0,
            # upstream IntuitionStats / AssociativeStats names
            fast_path_hits=s["hits"], fast_path_misses=s["misses"], hash_collisions=s["collisions"],
            total_reflexes=live, associative_memory_size=live, reflexes_created=s["inserts"],
        )
        return s

    def reset_stats(self) -> None:
        _native.check_status("ng_reflex_reset_stats", lib.ng_reflex_reset_stats(self._version().handle))

    def segments(self) -> tuple[bytes, list[tuple[int, memoryview]]]:
        """``(header, [(index, bytes-like), ...])``: the current header and the segments
        written since the previous call (all of them after create or a growth), then
        forgets them.

        The segment buffers are read-only views of the live table, valid until the next
        write: store or copy them first. A writer persists exactly these (and the header,
        whose ``segment_count`` says how many segments the table has now) to keep the
        stored table equal to this one."""
        v = self._version()
        nseg = len(v.buffers)
        idx = ffi.new("uint32_t[]", max(nseg, 1))
        n = ffi.new("size_t *")
        hd = ffi.new("int *")
        _native.check_status("ng_reflex_take_dirty", lib.ng_reflex_take_dirty(v.handle, idx, nseg, n, hd))
        out = [(int(idx[k]), memoryview(v.buffers[idx[k]]).cast("B").toreadonly()) for k in range(n[0])]
        return self.header(), out

    def all_segments(self) -> list[memoryview]:
        """Every segment, in index order (read-only views of the live table)."""
        return [memoryview(s).cast("B").toreadonly() for s in self._version().buffers]

    def __repr__(self) -> str:
        v = self._v
        if v is None:
            return "<ReflexTable closed>"
        info = self._info(v)
        return (f"<ReflexTable {int(info.live_count)}/{int(info.capacity)} reflexes, room {int(info.room)}, "
                f"{self.memory_bytes} bytes{'' if self._writable else ', read-only'}>")


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1 or int(v) > 1 << 32:
        raise InvalidArgumentError(f"{name} must be an integer in 1..2^32, got {v!r}")
    return int(v)


def _new_version(capacity: int, shifts: np.ndarray, geometry: Geometry) -> _Version:
    arena, segs = _allocate(geometry)
    ptrs = [ffi.from_buffer("uint8_t[]", s) for s in segs]
    out = ffi.new("ng_reflex_table **")
    rc = lib.ng_reflex_create(capacity, ffi.new("uint8_t[8]", [int(x) for x in shifts]), geometry.c(),
                              ffi.new("uint8_t *[]", ptrs), ffi.new("size_t[]", [len(s) for s in segs]), len(segs), out)
    _native.check_status("ng_reflex_create", rc, f"capacity {capacity}, {geometry}")
    return _Version(ffi.gc(out[0], lib.ng_reflex_free), list(segs), [*ptrs, arena])


__all__ = [
    "DEFAULT_PARAMS", "ENTRY_DTYPE", "Geometry", "InsertPlan", "LookupParams", "LookupResult", "ReflexEntry",
    "ReflexHit", "ReflexTable", "RoomPlan", "distance", "fingerprint_reference", "grown_room", "parse_header",
    "plan_room", "quantized_state_bytes", "similarity", "state_keys", "xxh3_64",
]
