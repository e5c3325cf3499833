"""The persistent reflex table: a typed wrapper of the C table in ``csrc/reflex.c``.

A reflex is a Connection v3 record (``CONNECTION_DTYPE``; its ``target_vector`` is the
action) filed under a state. A state is a Token (its 24 coordinates), 8 floats mapped to
the X axes of the 8 layers (the original ``from_state_f32``), or 24 raw ``int16``
coordinates. It is keyed by the original grid hash plus an independent fingerprint
(XXH3-64 of the quantized coordinates), so states whose grid hashes collide are told
apart. The bytes are specified in ``docs/format.md §7``.

Memory and lifetimes:

* :meth:`ReflexTable.create` allocates the segments as numpy ``uint8`` arrays owned by
  the table (in RAM, writable).
* :meth:`ReflexTable.attach` works **zero-copy** over caller-provided buffers, e.g. the
  memoryviews of LMDB values in a read transaction. The caller guarantees that those
  buffers stay valid and unchanged until :meth:`close` (or until the table object is
  garbage collected): for LMDB values, **the table must be closed before the read
  transaction that mapped them ends** -- after that the memory may be unmapped or reused
  and a lookup would read garbage or crash. ``writable=True`` needs writable buffers
  (not LMDB read-transaction memory).
* Arrays returned by lookups are copies and stay valid forever. The buffers returned by
  :meth:`segments` / :meth:`all_segments` are views of the live table: persist (copy)
  them before the next write.

Threads: any number of threads may call the lookup methods concurrently (cffi releases
the GIL during the C call and the C lookups never write to the table; counters are added
atomically once per call). Writes (``insert``, ``insert_batch``, ``delete``,
``segments``, ``reset_stats``) must be serialised by the caller and must not overlap
lookups on the same table.
"""
from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
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
from .records import CONNECTION_DTYPE, CONNECTION_SIZE, LAYERS, RAW64, SCALE_FACTORS, TOKEN_DTYPE


def _core() -> tuple[Any, Any]:
    """The cffi ``ffi`` and ``lib`` of the compiled core (one line to switch)."""
    return _native.ffi, _native.lib


ffi, lib = _core()

# Constants shared with csrc/reflex.h (the cdef exports them); checked here at import.
HEADER_SIZE = 128
SLOT_SIZE = 96
FORMAT_VERSION = 1
MAX_CANDIDATES = 4
EVICT_WINDOW = 32
MAGIC = b"NGREFLEX"

KIND_F32 = 0
KIND_TOKEN = 1
KIND_COORDS = 2
_STRIDE = {KIND_F32: 32, KIND_TOKEN: 64, KIND_COORDS: 48}

# Status codes of csrc/ngcore.h that get their own exception here.
_ECORRUPT = -4
_ENOTFOUND = -5

OUTCOMES = {1: "inserted", 2: "updated", 3: "evicted", 4: "replaced"}

_STAT_NAMES = ("lookups", "hits", "misses", "answers", "collisions", "candidates",
               "inserts", "updates", "deletes", "evictions")

#: One exported slot (``ng_reflex_entry``): 4 u64 then the 64-byte connection.
ENTRY_DTYPE = np.dtype({
    "names": ["slot", "grid_hash", "fingerprint", "tick", "connection"],
    "formats": ["<u8", "<u8", "<u8", "<u8", CONNECTION_DTYPE],
    "offsets": [0, 8, 16, 24, 32],
    "itemsize": 96,
})

#: ``ng_reflex_hit``: similarity f32, action f32[8], the 64-byte record.
_HIT_DTYPE = np.dtype({"names": ["similarity", "action", "connection"],
                       "formats": ["<f4", ("<f4", (8,)), CONNECTION_DTYPE], "offsets": [0, 4, 36], "itemsize": 100})

_HIT_ACTION_OFF = _HIT_DTYPE.fields["action"][1]
_HIT_CONN_OFF = _HIT_DTYPE.fields["connection"][1]

_HEADER = struct.Struct("<8sHHHHIIQQQ8sI64sI")
assert _HEADER.size == HEADER_SIZE


def _check_constants() -> None:
    assert (lib.NG_REFLEX_HEADER_SIZE, lib.NG_REFLEX_SLOT_SIZE) == (HEADER_SIZE, SLOT_SIZE)
    assert (lib.NG_REFLEX_FORMAT_VERSION, lib.NG_REFLEX_MAX_CANDIDATES) == (FORMAT_VERSION, MAX_CANDIDATES)
    assert lib.NG_REFLEX_EVICT_WINDOW == EVICT_WINDOW
    assert (lib.NG_REFLEX_STATE_F32, lib.NG_REFLEX_STATE_TOKEN, lib.NG_REFLEX_STATE_COORDS) == (0, 1, 2)
    assert lib.NG_REFLEX_NSTATS == len(_STAT_NAMES)
    assert ffi.sizeof("ng_reflex_entry") == ENTRY_DTYPE.itemsize
    assert ffi.sizeof("ng_reflex_hit") == _HIT_DTYPE.itemsize


_check_constants()

_SCALES32 = np.asarray(SCALE_FACTORS, dtype=np.float32)
_PACK8 = struct.Struct("<8f")


# --------------------------------------------------------------------------- keys

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


def _as_states(states: Any) -> tuple[int, np.ndarray, bool]:
    """Normalises a state or a batch of states to ``(kind, contiguous array, single)``."""
    to_bytes = getattr(states, "to_bytes", None)
    if to_bytes is not None and not isinstance(states, (np.ndarray, np.generic, int)):
        raw = to_bytes()  # a Token object
        if len(raw) != 64:
            raise InvalidArgumentError(f"a Token record is 64 bytes, to_bytes() returned {len(raw)}")
        return KIND_TOKEN, np.frombuffer(raw, dtype=np.uint8), True
    if isinstance(states, np.void):
        if states.dtype.itemsize != 64:
            raise InvalidArgumentError(f"a state record must be a 64-byte Token, got dtype {states.dtype}")
        return KIND_TOKEN, np.frombuffer(states.tobytes(), dtype=np.uint8), True
    arr = np.asarray(states)
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
    return KIND_F32, np.ascontiguousarray(arr.reshape(-1, LAYERS), dtype=np.float32), arr.ndim == 1


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
        if connection.dtype.itemsize != CONNECTION_SIZE or (isinstance(connection, np.ndarray) and connection.size != 1):
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


def _params(min_confidence: int, hypothesis_threshold: int, similarity_threshold: float) -> Any:
    for name, v in (("min_confidence", min_confidence), ("hypothesis_threshold", hypothesis_threshold)):
        if not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= 0xFFFFFFFF:
            raise InvalidArgumentError(f"{name} must be a non-negative integer, got {v!r}")
    sim = float(similarity_threshold)
    if sim != sim:
        raise InvalidArgumentError("similarity_threshold is NaN")
    return ffi.new("ng_reflex_params *", (int(min_confidence), int(hypothesis_threshold), sim))


_DEFAULT_PARAMS = _params(150, 200, 0.85)


def _record(raw: bytes) -> np.void:
    return np.frombuffer(raw, dtype=CONNECTION_DTYPE)[0]


# --------------------------------------------------------------------------- results

class LookupResult(NamedTuple):
    """Per-state results of :meth:`ReflexTable.lookup_batch` (all arrays are copies)."""

    found: np.ndarray        #: bool (n,): a reflex passed the thresholds
    known: np.ndarray        #: bool (n,): the state is in the table (found or not)
    slot: np.ndarray         #: int64 (n,): slot of the answer, -1 if none
    confidence: np.ndarray   #: uint8 (n,): its confidence, 0 if none
    similarity: np.ndarray   #: float32 (n,): confidence / 255, 0 if none
    action: np.ndarray       #: float32 (n, 8): decoded target_vector, zeros if none
    connections: np.ndarray | None  #: CONNECTION_DTYPE (n,) or None (with_connections=False)


class ReflexHit:
    """The answer of :meth:`ReflexTable.lookup`: ``connection`` (a CONNECTION_DTYPE record),
    ``action`` (float32 (8,), the decoded target_vector) and ``similarity``.

    It holds one copy of the C result; the numpy views are made on first access (and
    read-only, owning their bytes), so a caller that only needs the similarity or the
    action does not pay for the record. Unpacks like the tuple it replaces."""

    __slots__ = ("_raw", "similarity", "_conn", "_action")

    def __init__(self, raw: bytes, similarity: float) -> None:
        self._raw = raw
        self.similarity = similarity
        self._conn = self._action = None

    @property
    def connection(self) -> np.void:
        if self._conn is None:
            self._conn = np.frombuffer(self._raw, CONNECTION_DTYPE, 1, _HIT_CONN_OFF)[0]
        return self._conn

    @property
    def action(self) -> np.ndarray:
        if self._action is None:
            self._action = np.frombuffer(self._raw, np.float32, LAYERS, _HIT_ACTION_OFF)
        return self._action

    def __iter__(self):
        return iter((self.connection, self.action, self.similarity))

    def __repr__(self) -> str:
        return f"ReflexHit(similarity={self.similarity:.3f}, action={self.action.tolist()})"


class ReflexEntry(NamedTuple):
    slot: int
    grid_hash: int
    fingerprint: int
    tick: int
    connection: np.void


def parse_header(header: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decodes a 128-byte table header without validating it (for tools and messages)."""
    raw = bytes(header)
    if len(raw) != HEADER_SIZE:
        raise CorruptionError(f"reflex table header is {len(raw)} bytes, expected {HEADER_SIZE}")
    (magic, version, header_size, slot_size, max_candidates, sps, nseg, capacity, live, tick,
     shifts, flags, _reserved, crc) = _HEADER.unpack(raw)
    return {"magic": magic, "version": version, "header_size": header_size, "slot_size": slot_size,
            "max_candidates": max_candidates, "slots_per_segment": sps, "segment_count": nseg,
            "capacity": capacity, "live_count": live, "tick": tick, "shifts": tuple(shifts),
            "flags": flags, "crc": crc, "crc_ok": zlib.crc32(raw[:124]) == crc}


# --------------------------------------------------------------------------- the table

class ReflexTable:
    """An open-addressing (Robin Hood) table of reflexes in segments; see the module doc."""

    def __init__(self, handle: Any, segments: list[Any], keepalive: list[Any], writable: bool) -> None:
        # Use create / attach / from_bytes; this only takes over a C handle.
        self._h = handle
        self._segments = segments  # the buffers (numpy arrays or caller buffers), by index
        self._keepalive = keepalive
        self._writable = writable
        self._tls = threading.local()
        info = ffi.new("ng_reflex_info *")
        _native.check_status("ng_reflex_info_get", lib.ng_reflex_info_get(handle, info))
        self._capacity = int(info.capacity)
        self._slot_count = int(info.slot_count)
        self._sps = int(info.slots_per_segment)
        self._nseg = int(info.segment_count)
        self._shifts = tuple(int(x) for x in info.shifts)

    # ---- construction

    @classmethod
    def create(cls, capacity: int, shifts: Sequence[int] = DEFAULT_SHIFTS, *,
               slots_per_segment: int | None = None) -> ReflexTable:
        """An empty in-memory table for at most ``capacity`` reflexes (fixed for its life).

        Slots = ``capacity * 4 / 3`` rounded up to whole segments (load factor <= 0.75);
        ``slots_per_segment`` (a power of two in 16..2^20; default 4096, less for small
        tables) sets the unit of persistence.
        """
        if not isinstance(capacity, (int, np.integer)) or isinstance(capacity, bool) or capacity < 1:
            raise InvalidArgumentError(f"capacity must be a positive integer, got {capacity!r}")
        sh = check_shifts(shifts)
        hint = 0 if slots_per_segment is None else int(slots_per_segment)
        sps_c = ffi.new("uint32_t *")
        nseg_c = ffi.new("uint32_t *")
        rc = lib.ng_reflex_geometry(int(capacity), hint, sps_c, nseg_c)
        if rc != 0:
            raise InvalidArgumentError(
                f"cannot lay out a reflex table of capacity {capacity} with slots_per_segment={slots_per_segment}: "
                f"{_native.strerror(rc)} (capacity must be >= 1; slots_per_segment a power of two in 16..2^20)")
        sps, nseg = int(sps_c[0]), int(nseg_c[0])
        # One allocation carved into segment views: numpy asks the kernel for transparent
        # huge pages on large arrays, and with 4 KiB pages every random probe of a big
        # table pays a TLB miss (measured: ~3x slower lookups on this VM).
        arena = np.zeros(nseg * sps * SLOT_SIZE, dtype=np.uint8)
        segs = [arena[i * sps * SLOT_SIZE:(i + 1) * sps * SLOT_SIZE] for i in range(nseg)]
        ptrs = [ffi.from_buffer("uint8_t[]", s) for s in segs]
        out = ffi.new("ng_reflex_table **")
        rc = lib.ng_reflex_create(int(capacity), ffi.new("uint8_t[8]", sh.tolist()), sps, nseg,
                                  ffi.new("uint8_t *[]", ptrs), ffi.new("size_t[]", [len(s) for s in segs]), out)
        _native.check_status("ng_reflex_create", rc)
        return cls(ffi.gc(out[0], lib.ng_reflex_free), segs, ptrs, True)

    @classmethod
    def attach(cls, header: Any, segment_buffers: Sequence[Any], *, writable: bool = False) -> ReflexTable:
        """A table over stored bytes, zero-copy: ``header`` (128 bytes) and the segments in
        index order (any buffer: bytes, memoryview of an LMDB value, numpy array).

        The header and every segment length are validated (O(1); :meth:`check` scans the
        slots). Raises CorruptionError naming the failed check, FormatVersionError for a
        newer format. The buffers must outlive the table (see the module doc).
        """
        hdr = bytes(header)
        if len(hdr) == HEADER_SIZE and hdr[:8] == MAGIC:
            fields = parse_header(hdr)
            if fields["crc_ok"] and fields["version"] != FORMAT_VERSION:
                raise FormatVersionError(
                    f"reflex table format version {fields['version']} is not supported (this code reads "
                    f"version {FORMAT_VERSION}); upgrade ngstore")
        bufs = list(segment_buffers)
        try:
            ptrs = [ffi.from_buffer("uint8_t[]", b, require_writable=writable) for b in bufs]
        except (TypeError, BufferError) as exc:
            raise InvalidArgumentError(
                f"reflex segments must be buffers{' (writable, since writable=True)' if writable else ''}: {exc}"
            ) from None
        out = ffi.new("ng_reflex_table **")
        reason = ffi.new("char *[1]")
        rc = lib.ng_reflex_attach(hdr, len(hdr), ffi.new("uint8_t *[]", ptrs) if ptrs else ffi.NULL,
                                  ffi.new("size_t[]", [len(p) for p in ptrs]) if ptrs else ffi.NULL,
                                  len(ptrs), 1 if writable else 0, out, ffi.cast("const char **", reason))
        why = ffi.string(reason[0]).decode() if reason[0] != ffi.NULL else ""
        if rc == _ECORRUPT:
            raise CorruptionError(f"reflex table: {why}", path="reflex table header")
        if rc != 0:
            _native.check_status("ng_reflex_attach", rc, why)
        return cls(ffi.gc(out[0], lib.ng_reflex_free), bufs, ptrs + [hdr], bool(writable))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, writable: bool = True) -> ReflexTable:
        """A table from :meth:`to_bytes` output (copied into fresh numpy segments)."""
        raw = memoryview(data).cast("B")
        if len(raw) < HEADER_SIZE:
            raise CorruptionError(f"reflex table image is {len(raw)} bytes, shorter than its header")
        fields = parse_header(raw[:HEADER_SIZE])
        seg_bytes = fields["slots_per_segment"] * SLOT_SIZE
        body = len(raw) - HEADER_SIZE
        if not fields["crc_ok"] or seg_bytes == 0 or body != seg_bytes * fields["segment_count"]:
            # attach reports the precise reason (CRC, sizes, counts)
            segs: list[Any] = [np.frombuffer(raw[HEADER_SIZE:], dtype=np.uint8).copy()] if body else []
            return cls.attach(raw[:HEADER_SIZE], segs, writable=writable)
        segs = [np.frombuffer(raw[HEADER_SIZE + i * seg_bytes: HEADER_SIZE + (i + 1) * seg_bytes], dtype=np.uint8).copy()
                for i in range(fields["segment_count"])]
        return cls.attach(raw[:HEADER_SIZE], segs, writable=writable)

    def to_bytes(self) -> bytes:
        """Header followed by every segment in index order (what :meth:`from_bytes` reads)."""
        self._handle()
        return self.header() + b"".join(bytes(memoryview(s).cast("B")) for s in self._segments)

    # ---- lifetime

    def close(self) -> None:
        """Frees the C handle and drops the buffers; later calls raise StoreClosedError."""
        if self._h is not None:
            ffi.release(self._h)
            self._h = None
            self._segments = []
            self._keepalive = []

    def __enter__(self) -> ReflexTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise StoreClosedError("the reflex table is closed")
        return h

    def _writable_handle(self) -> Any:
        h = self._handle()
        if not self._writable:
            raise InvalidArgumentError("the reflex table is read-only (attached with writable=False); "
                                       "attach writable copies of the segments to change it")
        return h

    # ---- description

    def __len__(self) -> int:
        info = ffi.new("ng_reflex_info *")
        _native.check_status("ng_reflex_info_get", lib.ng_reflex_info_get(self._handle(), info))
        return int(info.live_count)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def slot_count(self) -> int:
        return self._slot_count

    @property
    def slots_per_segment(self) -> int:
        return self._sps

    @property
    def segment_count(self) -> int:
        return self._nseg

    @property
    def shifts(self) -> tuple[int, ...]:
        return self._shifts

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def closed(self) -> bool:
        return self._h is None

    def header(self) -> bytes:
        """The current 128-byte header (with CRC)."""
        buf = ffi.new("uint8_t[]", HEADER_SIZE)
        _native.check_status("ng_reflex_write_header", lib.ng_reflex_write_header(self._handle(), buf, HEADER_SIZE))
        return bytes(ffi.buffer(buf))

    # ---- errors

    def _raise(self, function: str, rc: int, hint: str = "") -> None:
        if rc == _ECORRUPT:
            raise CorruptionError(f"{function}: a slot fails a structural check ({_native.strerror(rc)}); "
                                  "run ReflexTable.check() to locate it and rebuild the table from its reflexes",
                                  path="reflex table segments")
        if rc == _ENOTFOUND:
            raise NotFoundError(hint or f"{function}: not found")
        _native.check_status(function, rc, hint)

    # ---- writes

    def insert(self, state: Any, connection: Any) -> str:
        """Upserts one reflex: ``connection`` (a CONNECTION_DTYPE record, a Connection or 64
        bytes) for ``state``. Returns ``"inserted"``, ``"updated"`` (same state and identity
        (token_a, token_b, connection_type): record replaced), ``"evicted"`` (table at
        capacity: the weakest reflex of the eviction window was evicted first) or
        ``"replaced"`` (the state already had 4 candidates: the weakest was replaced)."""
        h = self._writable_handle()
        kind, arr, single = _as_states(state)
        if not single:
            raise InvalidArgumentError("insert takes one state; use insert_batch for many")
        out = ffi.new("int *")
        rc = lib.ng_reflex_insert(h, kind, ffi.from_buffer(arr), _connection_bytes(connection), out, ffi.NULL)
        if rc != 0:
            self._raise("ng_reflex_insert", rc)
        return OUTCOMES[int(out[0])]

    def insert_batch(self, states: Any, connections: Any) -> np.ndarray:
        """Upserts ``n`` reflexes in order (states: (n, 8) floats, TOKEN_DTYPE (n,) or
        int16 (n, 8, 3); connections: CONNECTION_DTYPE (n,)). Returns the outcome codes
        (``int8``: 1 inserted, 2 updated, 3 evicted, 4 replaced; see :data:`OUTCOMES`)."""
        h = self._writable_handle()
        kind, arr, _ = _as_states(states)
        conns = np.asarray(connections)
        if conns.dtype.itemsize != CONNECTION_SIZE or conns.dtype.kind != "V" or conns.ndim != 1:
            raise InvalidArgumentError(f"connections must be a 1-D CONNECTION_DTYPE array, got {conns.dtype} {conns.shape}")
        n = _count(kind, arr)
        if len(conns) != n:
            raise InvalidArgumentError(f"{n} states but {len(conns)} connections")
        conns = np.ascontiguousarray(conns)
        outcomes = np.zeros(n, np.int8)
        done = ffi.new("size_t *")
        rc = lib.ng_reflex_insert_batch(h, kind, ffi.from_buffer(arr), n, ffi.from_buffer("uint8_t[]", conns),
                                        ffi.from_buffer("int8_t[]", outcomes), done)
        if rc != 0:
            self._raise("ng_reflex_insert_batch", rc, f"after {int(done[0])} of {n} inserts")
        return outcomes

    def delete(self, state: Any, connection: Any = None) -> int:
        """Deletes the reflex of ``state`` with the identity of ``connection`` (token_a,
        token_b, connection_type), or every reflex of the state if ``connection`` is None.
        Returns how many were deleted; raises NotFoundError if none."""
        h = self._writable_handle()
        kind, arr, single = _as_states(state)
        if not single:
            raise InvalidArgumentError("delete takes one state")
        raw = ffi.NULL if connection is None else _connection_bytes(connection)
        out = ffi.new("uint32_t *")
        rc = lib.ng_reflex_delete(h, kind, ffi.from_buffer(arr), raw, out)
        if rc != 0:
            self._raise("ng_reflex_delete", rc, "no reflex of that state" + ("" if connection is None else
                                                                           " with that identity"))
        return int(out[0])

    def delete_key(self, grid_hash: int, fingerprint: int, connection: Any = None) -> int:
        """Like :meth:`delete`, by the state's key (``grid_hash``, ``fingerprint``, as
        :meth:`entries` reports them) for a caller that does not have the state. Returns
        how many were deleted; raises NotFoundError if none."""
        h = self._writable_handle()
        raw = ffi.NULL if connection is None else _connection_bytes(connection)
        out = ffi.new("uint32_t *")
        rc = lib.ng_reflex_delete_key(h, int(grid_hash), int(fingerprint), raw, out)
        if rc != 0:
            self._raise("ng_reflex_delete_key", rc, "no reflex with that key")
        return int(out[0])

    # ---- lookups

    def lookup(self, state: Any, *, min_confidence: int = 150, hypothesis_threshold: int = 200,
               similarity_threshold: float = 0.85) -> ReflexHit | None:
        """The fast path for one state: ``ReflexHit(connection, action, similarity)`` of the
        best eligible reflex, or None (unknown state, or nothing passes the thresholds).

        Kept lean on purpose (one cffi call, a per-thread output struct, the default
        thresholds prebuilt): a single lookup costs a few cffi calls' worth of time."""
        h = self._h
        if h is None:
            raise StoreClosedError("the reflex table is closed")
        if type(state) is list or type(state) is tuple:
            try:
                buf: Any = _PACK8.pack(*state)
                kind = KIND_F32
            except (struct.error, OverflowError, TypeError):
                kind, arr, single = _as_states(state)
                buf = ffi.from_buffer(arr)
        else:
            kind, arr, single = _as_states(state)
            if not single:
                raise InvalidArgumentError("lookup takes one state; use lookup_batch for many")
            buf = ffi.from_buffer(arr)
        if min_confidence == 150 and hypothesis_threshold == 200 and similarity_threshold == 0.85:
            params = _DEFAULT_PARAMS
        else:
            params = _params(min_confidence, hypothesis_threshold, similarity_threshold)
        try:
            out = self._tls.out
        except AttributeError:
            out = self._tls.out = ffi.new("ng_reflex_hit *")
        r = lib.ng_reflex_lookup_one(h, kind, buf, params, out)
        if r != 1:
            if r < 0:
                self._raise("ng_reflex_lookup_one", r)
            return None
        # Views of fresh bytes objects (read-only, owned by the result): numpy's structured
        # copy is ~10x slower than this on a single record.
        return ReflexHit(ffi.buffer(out)[:], out.similarity)

    def lookup_batch(self, states: Any, *, min_confidence: int = 150, hypothesis_threshold: int = 200,
                     similarity_threshold: float = 0.85, with_connections: bool = True) -> LookupResult:
        """The main interface: one C call hashes, fingerprints and probes every state.

        ``states``: (n, 8) floats (X axes, encoded like the original), a TOKEN_DTYPE (n,)
        array or int16 (n, 8, 3) raw coordinates. Eligible: confidence >= min_confidence,
        and for a Hypothesis also >= hypothesis_threshold; answered if confidence/255 >
        similarity_threshold (the best: highest confidence, then most recently written).
        """
        h = self._handle()
        kind, arr, _ = _as_states(states)
        n = _count(kind, arr)
        status = np.empty(n, np.uint8)
        slot = np.empty(n, np.int64)
        conf = np.empty(n, np.uint8)
        sim = np.empty(n, np.float32)
        action = np.empty((n, LAYERS), np.float32)
        conns = np.empty(n, CONNECTION_DTYPE) if with_connections else None
        params = _params(min_confidence, hypothesis_threshold, similarity_threshold)
        rc = lib.ng_reflex_lookup_batch(h, kind, ffi.from_buffer(arr), n, params,
                                        ffi.from_buffer("uint8_t[]", status), ffi.from_buffer("int64_t[]", slot),
                                        ffi.from_buffer("uint8_t[]", conf), ffi.from_buffer("float[]", sim),
                                        ffi.from_buffer("float[]", action),
                                        ffi.from_buffer("uint8_t[]", conns) if conns is not None else ffi.NULL)
        if rc != 0:
            self._raise("ng_reflex_lookup_batch", rc)
        return LookupResult(status == 1, status != 0, slot, conf, sim, action, conns)

    # ---- iteration, check, stats, persistence

    def entries(self) -> np.ndarray:
        """Every live slot as an ENTRY_DTYPE array (slot, grid_hash, fingerprint, tick,
        connection), in slot order (a copy)."""
        h = self._handle()
        chunk = 4096
        buf = ffi.new("ng_reflex_entry[]", chunk)
        cursor = ffi.new("uint64_t *", 0)
        n = ffi.new("size_t *")
        parts = []
        while cursor[0] < self._slot_count:
            rc = lib.ng_reflex_export(h, cursor, buf, chunk, n)
            if rc != 0:
                self._raise("ng_reflex_export", rc)
            if n[0]:
                parts.append(np.frombuffer(ffi.buffer(buf, n[0] * ENTRY_DTYPE.itemsize), ENTRY_DTYPE).copy())
        return np.concatenate(parts) if parts else np.empty(0, ENTRY_DTYPE)

    def items(self) -> Iterator[ReflexEntry]:
        """Iterates over the live reflexes as ReflexEntry tuples (slot order)."""
        for e in self.entries():
            yield ReflexEntry(int(e["slot"]), int(e["grid_hash"]), int(e["fingerprint"]), int(e["tick"]),
                              e["connection"].copy())

    def check(self) -> None:
        """Full structural scan (state bytes, Robin Hood order, candidate cap, live count).
        Raises CorruptionError naming the segment and byte offset of the first bad slot."""
        bad = ffi.new("uint64_t *")
        rc = lib.ng_reflex_check(self._handle(), bad)
        if rc == _ECORRUPT:
            i = int(bad[0])
            if i >= self._slot_count:
                raise CorruptionError(f"reflex table: live count {len(self)} in the header disagrees with the slots",
                                      path="reflex table header")
            raise CorruptionError(f"reflex table slot {i} fails a structural check",
                                  path=f"reflex segment {i // self._sps}", offset=(i % self._sps) * SLOT_SIZE)
        if rc != 0:
            self._raise("ng_reflex_check", rc)

    def stats(self) -> dict[str, Any]:
        """Counters kept in C since create/attach (or :meth:`reset_stats`), with derived rates
        and the upstream names (``fast_path_hits``, ``total_reflexes``, ...)."""
        out = ffi.new("uint64_t[]", len(_STAT_NAMES))
        _native.check_status("ng_reflex_stats", lib.ng_reflex_stats(self._handle(), out, len(_STAT_NAMES)))
        s: dict[str, Any] = {k: int(out[i]) for i, k in enumerate(_STAT_NAMES)}
        live = len(self)
        s.update(
            live=live, capacity=self._capacity, slot_count=self._slot_count,
            load_factor=live / self._slot_count, segment_count=self._nseg, slots_per_segment=self._sps,
            segment_bytes=self._nseg * self._sps * SLOT_SIZE,
            hit_rate=s["hits"] / s["lookups"] if s["lookups"] else 0.0,
            collision_rate=s["collisions"] / s["hits"] if s["hits"] else 0.0,
            avg_candidates_per_lookup=s["candidates"] / s["lookups"] if s["lookups"] else 0.0,
            # upstream IntuitionStats / AssociativeStats names
            fast_path_hits=s["hits"], fast_path_misses=s["misses"], hash_collisions=s["collisions"],
            total_reflexes=live, associative_memory_size=live, reflexes_created=s["inserts"],
        )
        return s

    def reset_stats(self) -> None:
        _native.check_status("ng_reflex_reset_stats", lib.ng_reflex_reset_stats(self._handle()))

    def segments(self) -> tuple[bytes, list[tuple[int, memoryview]]]:
        """``(header, [(index, bytes-like), ...])``: the current header and the segments
        written since the previous call (all of them after create), then forgets them.

        The segment buffers are read-only views of the live table, valid until the next
        write: store or copy them first. A writer persists exactly these to keep the stored
        table equal to this one."""
        h = self._handle()
        idx = ffi.new("uint32_t[]", max(self._nseg, 1))
        n = ffi.new("size_t *")
        hd = ffi.new("int *")
        _native.check_status("ng_reflex_take_dirty", lib.ng_reflex_take_dirty(h, idx, self._nseg, n, hd))
        out = [(int(idx[k]), memoryview(self._segments[idx[k]]).cast("B").toreadonly()) for k in range(n[0])]
        return self.header(), out

    def all_segments(self) -> list[memoryview]:
        """Every segment, in index order (read-only views of the live table)."""
        self._handle()
        return [memoryview(s).cast("B").toreadonly() for s in self._segments]

    def __repr__(self) -> str:
        if self._h is None:
            return "<ReflexTable closed>"
        return (f"<ReflexTable {len(self)}/{self._capacity} reflexes, {self._nseg} x {self._sps} slots"
                f"{'' if self._writable else ', read-only'}>")


__all__ = [
    "ENTRY_DTYPE", "LookupResult", "ReflexEntry", "ReflexHit", "ReflexTable", "fingerprint_reference",
    "parse_header", "quantized_state_bytes", "state_keys", "xxh3_64",
]
