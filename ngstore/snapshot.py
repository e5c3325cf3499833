"""Snapshots: one consistent read view of a store, and zero-copy numpy views into it.

A :class:`Snapshot` is one LMDB read transaction, held through a ``kv.ReadLease``. Its
token view hands out numpy arrays that point into LMDB's memory map (no copy); its
connection and event views return copies.

Lifetime rule
-------------
LMDB memory is valid only while its read transaction is open, so **every zero-copy view
keeps the transaction alive for as long as the view, or any array derived from it, is
referenced** -- even after ``snapshot.close()`` or ``store.close()``. A view can never show
freed or reused memory. Closing the snapshot only forbids new reads through it. The
cost of a long-lived view is LMDB's: pages it can see are not reused, so the file grows
while it lives. Drop views (or copy what you keep) promptly.

How a view holds its transaction: numpy keeps the final ``base`` of every view alive; that
base is a :class:`_MappedRegion`, an object exposing a span of the map through
``__array_interface__`` that holds one reference on the lease and gives it back when it
is collected. All views of a snapshot share one region, so the per-chunk cost of a scan
is a slice. The region spans exactly the part of the map that is file data when the
snapshot begins (``kv.KV.map_span``): any byte of it, reached through ``.base`` or
otherwise, is readable -- no sequence of calls can fault. Where the map cannot be found,
each view gets a region bounded to its own value instead.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import _native, graph, similarity, spatial
from .connections import Connection, ConnectionArray
from .errors import CorruptionError, InvalidArgumentError, NotFoundError, StoreClosedError
from .inputs import connection_keys, ids_array
from .kv import KV, ReadLease
from .layout import (
    CONN_KEY_BYTES,
    DB_CONN_REVERSE,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_META,
    DB_SPATIAL,
    DB_TOKENS,
    M_COUNTERS,
    M_SPATIAL,
    ChunkLayout,
    Counters,
    Meta,
    conn_key,
    decode_spatial_layers,
    event_key,
    event_sequence,
    forward_of_reverse,
    meta_page_txnid,
    meta_region_bytes,
)
from .records import CONNECTION_DTYPE, EVENT_DTYPE, MAX_TOKEN_ID, TOKEN_DTYPE
from .tokens import Token, TokenArray

_ffi = _native.ffi
#: ``ChunkLayout.key`` without its descriptor lookup: the point-read path calls it once per read
_chunk_key = ChunkLayout.key


def _address(value: Any) -> int:
    return int(_ffi.cast("uintptr_t", _ffi.from_buffer(value)))


class _MappedRegion:
    """The base object of zero-copy views: ``size`` bytes of LMDB's map at ``addr``.

    numpy keeps it as the final ``base`` of each view and of every array derived from
    one; when the last of them is collected, the finalizer releases the lease (and so,
    eventually, the read transaction). ``data=(addr, True)`` makes the arrays read-only
    in a way numpy will not let a caller undo.
    """

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, addr: int, size: int, lease: ReadLease) -> None:
        self.__array_interface__ = {"data": (addr, True), "shape": (size,), "typestr": "|u1", "version": 3}
        lease.acquire()
        weakref.finalize(self, lease.release)


class _Views:
    """Makes the zero-copy views of one lease."""

    def __init__(self, lease: ReadLease) -> None:
        self.lease = lease
        self._region: np.ndarray | None = None
        self._start = 0
        self._records: np.ndarray | None = None  # the region typed as TOKEN_DTYPE rows
        self._records_start = 0
        self._records_base: Any = _ffi.NULL  # _records_start as a char * (records)
        self._unbounded = False  # True when the map could not be found

    def drop(self) -> None:
        """Forgets the shared region: from now on only the views hold it."""
        self._region = self._records = None

    def _shared(self, addr: int) -> np.ndarray | None:
        if self._region is None and not self._unbounded:
            span = self.lease.kv.map_span(addr)
            if span is None:
                self._unbounded = True
                return None
            self._start = span[0]
            self._region = np.asarray(_MappedRegion(span[0], span[1], self.lease))
        return self._region

    def bytes_of(self, value: Any, nbytes: int) -> np.ndarray:
        """A read-only uint8 view of the first ``nbytes`` of an LMDB value."""
        addr = _address(value)
        region = self._shared(addr)
        if region is not None:
            off = addr - self._start
            if off >= 0 and off + nbytes <= region.shape[0]:
                return region[off:off + nbytes]
        return np.asarray(_MappedRegion(addr, nbytes, self.lease))

    def records(self, value: Any, count: int) -> np.ndarray:
        """``count`` TOKEN_DTYPE records at the start of an LMDB value.

        LMDB places a large value 16 bytes into a page, so every chunk value of a
        snapshot sits at the same address modulo 64: the region typed as TOKEN_DTYPE rows
        from that residue turns each chunk into a plain slice. Once that region exists, a
        value's row is the distance of its pointer from the region's, in bytes (a cffi
        pointer difference: half what turning the pointer into an int costs, once a chunk
        in a scan)."""
        rows = self._records
        if rows is not None:
            off = (_ffi.from_buffer(value) + 0) - self._records_base
            if off >= 0 and not off & 63 and (off >> 6) + count <= rows.shape[0]:
                return rows[off >> 6:(off >> 6) + count]
        addr = _address(value)
        region = self._shared(addr)
        if region is not None:
            if self._records is None:
                skip = (addr - self._start) % 64
                table = region[skip:]
                self._records = table[: table.shape[0] // 64 * 64].view(TOKEN_DTYPE)
                self._records_start = self._start + skip
                self._records_base = _ffi.cast("char *", self._records_start)
            off = addr - self._records_start
            if off >= 0 and off % 64 == 0 and off // 64 + count <= self._records.shape[0]:
                return self._records[off // 64: off // 64 + count]
        return self.bytes_of(value, count * 64).view(TOKEN_DTYPE)


class Snapshot:
    """A consistent, read-only view of a store at one moment.

    ``snapshot.tokens`` gives zero-copy numpy views (see the module docstring for how
    long they stay valid); ``snapshot.connections`` and ``snapshot.events`` give copies.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, kv: KV, layout: ChunkLayout, path: str) -> None:
        self._kv = kv
        self._layout = layout
        self._path = path
        self._lease = ReadLease(kv)
        self._views = _Views(self._lease)
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def tokens(self) -> TokenView:
        """The snapshot's tokens (zero-copy views, gathers, columns)."""
        return TokenView(self)

    @property
    def connections(self) -> ConnectionView:
        """The snapshot's connections (copies)."""
        return ConnectionView(self)

    @property
    def events(self) -> EventView:
        """The snapshot's experience events (copies)."""
        return EventView(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def counters(self) -> Counters:
        """The store's live counters as of this snapshot."""
        value = self._txn().get(M_COUNTERS, db=self._kv.db(DB_META))
        if value is not None:
            value = self._kv.record(DB_META, M_COUNTERS, value, meta_region_bytes(M_COUNTERS))
        return Counters.decode(value, self._path)

    # -- for analytics and backups (ngstore.arrow, ngstore.duckdb, ngstore.backup) ------

    def meta(self) -> Meta:
        """The store's ``meta`` as of this snapshot (applied position, store id, ...)."""
        return self._kv.read_meta(self._txn())

    def txn_id(self) -> int:
        """The LMDB transaction id this snapshot reads."""
        return int(self._txn().id())

    def copy_lmdb(self, fd: int, *, compact: bool = True) -> None:
        """Writes LMDB's copy of exactly this snapshot to descriptor ``fd`` (see
        ``kv.KV.copy_to_fd``): a consistent data.mdb whatever the writer does meanwhile."""
        self._kv.copy_to_fd(fd, self._txn(), compact=compact)

    def _txn(self) -> Any:
        txn = self._lease.txn
        if self._closed or txn is None or self._kv.inherited:
            if self._kv.inherited:
                raise StoreClosedError(f"this snapshot of {self._kv.path} was taken by another process and inherited "
                                       "through fork(), which LMDB's transactions cannot cross")
            raise StoreClosedError("this snapshot is closed")
        return txn

    def _db(self, name: bytes) -> Any:
        return self._kv.db(name)

    def close(self) -> None:
        """Ends the snapshot. Views handed out stay valid until they are dropped."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._views.drop()
        self._lease.release()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def chunk_values(txn: Any, kv: KV, layout: ChunkLayout, ids: np.ndarray, *,
                 writing: bool = False) -> tuple[np.ndarray, list[Any]]:
    """The chunk keys (ascending) and the record regions of the chunks holding ``ids``
    (absent chunks left out), verified as ``kv`` says for a read (``writing``: for the
    writer's own reads)."""
    db = kv.db(DB_TOKENS)
    if ids.size == 0 or db is None:
        return np.zeros(0, np.uint32), []
    chunks = ids >> layout.shift
    lo, hi = int(chunks.min()), int(chunks.max())
    if hi - lo < 4 * ids.size + 1024:
        seen = np.zeros(hi - lo + 1, dtype=bool)
        seen[chunks - lo] = True
        uniq = np.flatnonzero(seen).astype(np.uint32) + np.uint32(lo)
    else:
        uniq = np.unique(chunks)
    keys, bufs = [], []
    record, region_bytes = kv.record, layout.region_bytes
    for c in uniq.tolist():
        key = layout.key(c)
        v = txn.get(key, db=db)
        if v is not None:
            keys.append(c)
            bufs.append(record(DB_TOKENS, key, v, region_bytes, writing=writing))
    return np.asarray(keys, dtype=np.uint32), bufs


def presence(txn: Any, kv: KV, layout: ChunkLayout, ids: np.ndarray, *, writing: bool = False) -> np.ndarray:
    """A bool per id of ``ids`` (uint32): is the token present in ``txn``."""
    keys, bufs = chunk_values(txn, kv, layout, ids, writing=writing)
    present = np.zeros(ids.size, dtype=bool)
    if not bufs:
        return present
    pos = np.searchsorted(keys, ids >> layout.shift)
    pos_c = np.minimum(pos, keys.size - 1)
    has_chunk = keys[pos_c] == (ids >> layout.shift)
    bitmaps = np.stack([layout.bitmap(b) for b in bufs])
    slots = (ids & layout.mask).astype(np.intp)
    bits = bitmaps[pos_c, slots >> 3] >> (slots & 7) & 1
    present[:] = has_chunk & (bits == 1)
    return present


def token_reader(kv: KV, layout: ChunkLayout) -> Callable[[Any, dict[Any, Any], int], bytes | None]:
    """The point read of a store's tokens, for ``KV.read_one``: ``read(txn, values,
    token_id)`` is the 64 bytes of token ``token_id`` in ``txn``, None if absent (a copy),
    its chunk verified as ``kv`` says for a read. ``values``: chunk values already read in
    ``txn`` (``KV.read_one``), by chunk number; a chunk read here is added.

    A closure over the layout's numbers, made once per handle: ``get_token`` is a few
    hundred nanoseconds of Python all told, and attribute loads and an argument tuple
    forwarded with ``*args`` were a third of it (measured: ~1.0 us against ~0.6 us a read
    of a cached chunk), and the bit test and the copy in Python ~250 ns (now one C call,
    ``_fastpath.chunk_record``)."""
    chunk_record = _native.chunk_record
    shift, mask, records_bytes = layout.shift, layout.mask, layout.records_bytes
    sealed_bytes, region_bytes = layout.sealed_bytes, layout.region_bytes

    def read(txn: Any, values: dict[Any, Any], token_id: int) -> bytes | None:
        chunk = token_id >> shift
        v = values.get(chunk)
        if v is None:
            db = kv.db(DB_TOKENS)
            if db is None:
                return None
            key = _chunk_key(chunk)
            v = txn.get(key, db=db)
            if v is None:
                return None
            if kv.verify_reads or len(v) != sealed_bytes:
                v = kv.record(DB_TOKENS, key, v, region_bytes)  # verified, or reported if malformed
            # else a sealed chunk read unverified: its record region is its prefix, read in place
            values[chunk] = v
        return chunk_record(v, token_id & mask, records_bytes)

    return read


class TokenView:
    """The tokens of a snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap  # Snapshot.tokens makes a new view each time: no reference cycle
        self._layout = snap._layout

    def count(self) -> int:
        return self._snap.counters().tokens_live

    def __len__(self) -> int:
        return self.count()

    def chunks(self, first_chunk: int = 0, end_chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(first_id, array)``: zero-copy, read-only views of runs of present ids.

        A full chunk is one run. Each array is a TOKEN_DTYPE view into the LMDB map,
        valid for as long as it is referenced (see the module docstring). With
        ``first_chunk``/``end_chunk`` only chunks ``first_chunk <= c < end_chunk`` (chunk
        ``c`` holds ids ``c * chunk_slots`` ...) are read.
        """
        snap = self._snap
        txn = snap._txn()
        views = snap._views
        layout = self._layout
        full = layout.full_bitmap
        rb, region_bytes, slots, shift = layout.records_bytes, layout.region_bytes, layout.slots, layout.shift
        records = views.records
        kv = snap._kv
        record, verify, sealed = kv.record, kv.verify_reads, layout.sealed_bytes
        from_bytes = int.from_bytes
        db = snap._db(DB_TOKENS)
        if db is None:
            return
        cur = txn.cursor(db=db)
        if not cur.set_range(layout.key(first_chunk)):
            return
        for key, stored in cur:
            if end_chunk is not None and from_bytes(key, "big") >= end_chunk:
                return
            # verified (per the store's verify mode) before any view of it is handed out; a
            # sealed chunk read unverified is used in place (its record region is its prefix)
            value = stored if not verify and len(stored) == sealed else record(DB_TOKENS, bytes(key), stored,
                                                                               region_bytes)
            first = from_bytes(key, "big") << shift
            rows = records(value, slots)
            bitmap = value[rb:region_bytes]
            # a memoryview compares with bytes item by item: its bytes, at once (1 -> 0.4 µs)
            if (bitmap.tobytes() if type(bitmap) is memoryview else bitmap) == full:
                yield first, rows
                continue
            bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little").astype(np.int8)
            edges = np.flatnonzero(np.diff(np.concatenate(([0], bits, [0]))))
            for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
                yield first + s, rows[s:e]

    def mapped_runs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(rows, runs)``: the snapshot's whole mapped region typed as TOKEN_DTYPE rows
        (zero-copy, read-only; most rows are not tokens) and an int64 array of
        ``(first_id, row, count)`` per run of present ids, in id order: the run's records
        are ``rows[row:row + count]``. One strided array per field then covers every
        token (what ``ngstore.duckdb`` scans). None when some chunk is not a row of that
        region (chunks small enough to be stored inside LMDB pages, or a map that could
        not be found): use :meth:`chunks` then. Lifetime: as every view's."""
        out = []
        records = None
        for first, arr in self.chunks():
            records = self._snap._views._records
            start = self._snap._views._records_start
            if records is None:
                return None
            off = arr.__array_interface__["data"][0] - start
            if off < 0 or off % 64:
                return None
            out.append((first, off // 64, arr.shape[0]))
        if records is None:
            return np.zeros(0, TOKEN_DTYPE), np.zeros((0, 3), np.int64)
        return records, np.asarray(out, dtype=np.int64).reshape(-1, 3)

    def __iter__(self) -> Iterator[Token]:
        """Yields a Token (a copy) per present token, in id order."""
        for _first, arr in self.chunks():
            raw = arr.tobytes()
            for i in range(arr.shape[0]):
                yield Token.from_bytes(raw[i * 64:i * 64 + 64])

    def ids(self) -> np.ndarray:
        parts = [a["id"].copy() for _f, a in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint32)

    def column(self, name: str) -> np.ndarray:
        """One field of every present token, in id order (a new array).

        C reads the field straight out of the mapped chunk values (GIL released; a scan
        of 128 chunks or more is split between this thread and a helper thread), so this
        is the fast way to scan a column: about the cost of the same field access on an
        in-RAM array."""
        if name not in (TOKEN_DTYPE.names or ()):
            raise InvalidArgumentError(f"no token field {name!r}; fields are {TOKEN_DTYPE.names}")
        fields = TOKEN_DTYPE.fields
        assert fields is not None
        field_dt, offset = fields[name][:2]
        layout = self._layout
        bufs = self._chunk_buffers()
        raw_dt = np.dtype((np.void, field_dt.itemsize))
        # Room for every slot of the chunks read, not for the tokens_live counter: the counter
        # is stored bytes too, and no stored number may size an allocation (invariant 4).
        out = _native.gather_column(bufs, layout.shift, offset, raw_dt, len(bufs) << layout.shift)
        return out.view(field_dt.base).reshape((-1, *field_dt.shape))

    def to_arrow(self, columns: Sequence[str] | None = None) -> Any:
        """A ``pyarrow.Table`` of the present tokens in id order, one chunk per run of
        present ids (``ngstore.arrow`` explains the layout; needs ``ngstore[arrow]``).

        ``columns=None`` gives the column ``record``: each token's 64 bytes as
        ``fixed_size_binary(64)``, whose buffers are the mapped chunk bytes (no copy; they
        keep the read transaction alive like any view). Field names (``"id"``,
        ``"weight"``, ``"coordinates"``, ...) add a column each, a copy of that field
        (Arrow has no strided arrays)."""
        from . import arrow

        mapped = self.mapped_runs()
        return arrow.token_table(iter(()) if mapped is not None else self.chunks(), self.column, columns, mapped)

    def _chunk_buffers(self) -> list[Any]:
        """Every chunk value, in id order (memory of the snapshot's transaction)."""
        snap = self._snap
        txn = snap._txn()
        db = snap._db(DB_TOKENS)
        layout = self._layout
        bufs: list[Any] = []
        if db is not None:
            kv = snap._kv
            record, region_bytes, sealed = kv.record, layout.region_bytes, layout.sealed_bytes
            append = bufs.append
            if kv.verify_reads:
                for key, value in txn.cursor(db=db):
                    append(record(DB_TOKENS, bytes(key), value, region_bytes))  # verified as a scan is
                return bufs
            # unverified, a sealed chunk is used whole (the C reads its region, a prefix);
            # values alone, a third cheaper than (key, value) pairs: the key is read only
            # for a chunk of another length, from the cursor that stands on it
            cursor = txn.cursor(db=db)
            for value in cursor.iternext(keys=False, values=True):
                append(value if len(value) == sealed else record(DB_TOKENS, bytes(cursor.key()), value, region_bytes))
        return bufs

    # -- similarity (ngstore/similarity.py, docs/api.md "Similarity and traversal") ------

    def knn(self, queries: Any, k: int, *, layers: Any = None, metric: str = "l2") -> similarity.Neighbors:
        """The ``k`` tokens nearest to each query, exactly: ``(ids, distances)``.

        ``queries``: raw coordinates -- shape ``(24,)`` or ``(8, 3)`` for one query,
        ``(n, 24)`` or ``(n, 8, 3)`` for a batch -- or tokens (a Token: one query; a
        TokenArray: a batch). ``layers``: None (all 24 coordinates), a layer or layers
        0..7 (their coordinates only). ``metric``: ``"l2"`` (squared Euclidean distance in
        raw units, exact) or ``"cosine"`` (1 - cosine similarity; a zero vector is at 1
        from everything but another zero vector). Nearest first; ties go to the smaller
        id. Shape ``(min(k, len(self)),)`` per query; ``(n, ·)`` for a batch. One pass
        over the mapped chunks in C, the GIL released."""
        q, single = similarity.query_coordinates(queries)
        dims = similarity.coordinate_dims(layers)
        metric_code = similarity.check_metric(metric)
        k = similarity.check_k(k)
        ids, dist = similarity.knn(self._chunk_buffers(), self._layout.shift, self.count(), q, dims, metric_code, k)
        return similarity.Neighbors(ids[0], dist[0]) if single else similarity.Neighbors(ids, dist)

    @property
    def spatial_layers(self) -> tuple[int, ...]:
        """The layers the store's spatial index covers (empty: the store has none, and
        ``within``/``box`` scan every token instead)."""
        snap = self._snap
        txn = snap._txn()
        if snap._db(DB_SPATIAL) is None:
            return ()
        raw = txn.get(M_SPATIAL, db=snap._db(DB_META))
        mask = decode_spatial_layers(None if raw is None else snap._kv.record(DB_META, M_SPATIAL, raw, 8), snap._path)
        return tuple(spatial.layers_of(mask))

    def within(self, center: Any, radius: float, *, layer: int) -> np.ndarray:
        """Ids (ascending uint32) of the tokens whose coordinates in ``layer`` are within
        ``radius`` of ``center`` (3 raw coordinates; Euclidean distance in raw units,
        boundary included)."""
        c = _raw_point(center, "center")
        r = _radius(radius)
        lo = tuple(max(math.ceil(v - r), -32768) for v in c)
        hi = tuple(min(math.floor(v + r), 32767) for v in c)
        return self._spatial(_layer(layer), lo, hi, c, r * r)

    def box(self, lo: Any, hi: Any, *, layer: int) -> np.ndarray:
        """Ids (ascending uint32) of the tokens whose coordinates in ``layer`` lie in the
        box ``lo..hi`` (3 raw coordinates each, bounds included)."""
        lo_a, hi_a = _raw_point(lo, "lo"), _raw_point(hi, "hi")
        if any(a > b for a, b in zip(lo_a, hi_a, strict=True)):
            raise InvalidArgumentError(f"box bounds must have lo <= hi on every axis, got {lo!r} and {hi!r}")
        return self._spatial(_layer(layer), lo_a, hi_a, None, 0.0)

    def _spatial(self, layer: int, lo: tuple[int, ...], hi: tuple[int, ...], center: tuple[int, ...] | None,
                 r2: float) -> np.ndarray:
        if any(a > b for a, b in zip(lo, hi, strict=True)):  # a ball that misses the coordinate range
            return np.zeros(0, np.uint32)
        if layer in self.spatial_layers:
            snap = self._snap
            return spatial.query(snap._txn(), snap._db(DB_SPATIAL), layer, lo, hi, center, r2, snap._kv.record)
        return similarity.filter_chunks(self._chunk_buffers(), self._layout.shift, layer, self.count(), lo, hi,
                                        center, r2)

    def to_array(self) -> np.ndarray:
        """Every present token as one TOKEN_DTYPE array (a copy)."""
        parts = [a for _f, a in self.chunks()]
        return np.concatenate(parts) if parts else np.zeros(0, TOKEN_DTYPE)

    def get(self, ids: Any, *, missing: str = "raise") -> TokenArray:
        """Tokens for ``ids`` (in order) by a vectorised gather; a TokenArray copy."""
        if missing not in ("raise", "skip"):
            raise InvalidArgumentError(f"missing must be 'raise' or 'skip', got {missing!r}")
        id_arr = ids_array(ids)
        snap = self._snap
        keys, bufs = chunk_values(snap._txn(), snap._kv, self._layout, id_arr)
        out, found = _native.gather64(id_arr, keys, bufs, self._layout.shift)
        if not found.all():
            if missing == "raise":
                absent = id_arr[~found]
                shown = ", ".join(str(int(x)) for x in absent[:5])
                more = f" and {absent.size - 5} more" if absent.size > 5 else ""
                raise NotFoundError(f"no token with id {shown}{more} in {snap._path}")
            out = out[found]
        return TokenArray(out.view(TOKEN_DTYPE) if out.dtype != TOKEN_DTYPE else out)

    def presence(self, ids: Any) -> np.ndarray:
        """A bool per id: is the token present."""
        snap = self._snap
        return presence(snap._txn(), snap._kv, self._layout, ids_array(ids))

    def __contains__(self, token_id: object) -> bool:
        try:
            ids = ids_array([token_id])
        except InvalidArgumentError:
            return False
        return bool(self.presence(ids)[0])


def _raw_point(value: Any, what: str) -> tuple[int, int, int]:
    """3 raw coordinates in the i16 range, or InvalidArgumentError."""
    try:
        x, y, z = value
        point = (_raw_int(x), _raw_int(y), _raw_int(z))
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be 3 raw integer coordinates (x, y, z), got {value!r}") from None
    if not all(-32768 <= v <= 32767 for v in point):
        raise InvalidArgumentError(f"{what} must be in the i16 range -32768..32767, got {value!r}")
    return point


def _raw_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(v)
    return int(v)


def _radius(radius: Any) -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.integer, np.floating)) \
            or not radius >= 0 or radius == float("inf"):
        raise InvalidArgumentError(f"radius must be a finite number >= 0 (raw units), got {radius!r}")
    return float(radius)


def _layer(layer: Any) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) <= 7:
        raise InvalidArgumentError(f"layer must be an int 0..7, got {layer!r}")
    return int(layer)


def _records_array(parts: list[bytes], dtype: np.dtype, what: str, where: str) -> np.ndarray:
    """The stored records ``parts`` as one array; CorruptionError if one is not exactly a
    record long (format §3: a ``connections`` value is 64 bytes, an ``events`` value 128)."""
    for p in parts:
        if len(p) != dtype.itemsize:
            raise CorruptionError(f"a stored {what} in {where} is {len(p)} bytes, expected {dtype.itemsize}")
    out: np.ndarray = np.zeros(0, dtype) if not parts else np.frombuffer(b"".join(parts), dtype=dtype).copy()
    return out


class ConnectionView:
    """The connections of a snapshot (every result is a copy)."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def count(self) -> int:
        return self._snap.counters().connections_live

    def __len__(self) -> int:
        return self.count()

    def get(self, keys: Any, *, missing: str = "raise") -> ConnectionArray:
        """Connections for ``keys`` -- (a, b, type) triples, or connections whose key to
        use -- in order. ``missing="raise"`` raises NotFoundError naming absent keys;
        ``"skip"`` leaves them out."""
        if missing not in ("raise", "skip"):
            raise InvalidArgumentError(f"missing must be 'raise' or 'skip', got {missing!r}")
        k = connection_keys(keys)
        snap = self._snap
        txn, db = snap._txn(), snap._db(DB_CONNECTIONS)
        out, absent = [], []
        record = snap._kv.record
        for a, b, t in zip(k["token_a"].tolist(), k["token_b"].tolist(), k["connection_type"].tolist(),
                           strict=True):
            key = conn_key(a, b, t)
            v = txn.get(key, db=db) if db is not None else None
            if v is None:
                absent.append((a, b, t))
            else:
                out.append(bytes(record(DB_CONNECTIONS, key, v, CONNECTION_DTYPE.itemsize)))
        if absent and missing == "raise":
            shown = ", ".join(map(str, absent[:5])) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise NotFoundError(f"no connection {shown} in {snap._path}")
        return ConnectionArray(_records_array(out, CONNECTION_DTYPE, "connection", snap._path))

    def between(self, a: int, b: int) -> ConnectionArray:
        """Every connection joining tokens a and b (any order)."""
        if type(a) is not int or type(b) is not int or not 0 <= min(a, b) <= max(a, b) <= MAX_TOKEN_ID:
            a, b = ids_array([a, b]).tolist()
        snap = self._snap
        found = connection_records(snap._kv, snap._txn(), conn_key(min(a, b), max(a, b), 0)[:CONN_KEY_BYTES - 1])
        return ConnectionArray(_records_array(found, CONNECTION_DTYPE, "connection", snap._path))

    def neighbors(self, token_id: int, direction: str = "both") -> ConnectionArray:
        """Connections of ``token_id``: ``"out"`` where it is ``token_a``, ``"in"`` where it
        is ``token_b``, ``"both"`` the union (a self-connection appears once)."""
        if direction not in ("out", "in", "both"):
            raise InvalidArgumentError(f"direction must be 'out', 'in' or 'both', got {direction!r}")
        if type(token_id) is not int or not 0 <= token_id <= MAX_TOKEN_ID:
            token_id = int(ids_array([token_id])[0])
        prefix = conn_key(token_id, 0, 0)[:4]
        snap = self._snap
        # records as bytes, joined once: np.concatenate of the two structured arrays and a
        # mask to drop self-loops cost ~35 of a ~53 us call (numpy promotes every field)
        found: list[bytes] = []
        if direction in ("out", "both"):
            found += connection_records(snap._kv, snap._txn(), prefix)
        if direction in ("in", "both"):
            inn = connection_records(snap._kv, snap._txn(), prefix, reverse=True)
            found += [r for r in inn if r[:4] != r[4:8]] if direction == "both" else inn  # a self-loop once
        return ConnectionArray(_records_array(found, CONNECTION_DTYPE, "connection", snap._path))

    def k_hop(self, ids: Any, k: int, *, types: Any = None, min_strength: float | None = None,
              direction: str = "both") -> graph.Hops:
        """The tokens within ``k`` connections of any of ``ids`` (one id or many): ``(ids,
        depth)``, ids ascending, seeds at depth 0. ``types``: connection types to follow
        (None: all); ``min_strength``: follow only connections with ``pull_strength`` >= it;
        ``direction``: ``"both"`` (connections are stored undirected, a <= b), ``"out"``
        (a -> b) or ``"in"`` (b -> a). Costs time in proportion to the connections touched
        (ngstore/graph.py)."""
        snap = self._snap
        f = graph.Filter(types, min_strength, direction)
        return graph.k_hop(snap._txn(), snap._db(DB_CONNECTIONS), snap._db(DB_CONN_REVERSE), ids, k, f,
                           self._tree(), self.count())

    def _tree(self) -> graph.Tree | None:
        """Where this snapshot's connection B-trees lie in the map, for walks in C; None
        when the map cannot be found (the walk then goes through py-lmdb)."""
        snap = self._snap
        txn = snap._txn()
        kv = snap._kv
        probe = txn.get(M_COUNTERS, db=snap._db(DB_META))
        span = kv.map_span(_address(probe)) if probe is not None else None
        psize = kv.page_size()
        if span is None or span[1] < 2 * psize:
            return None
        start, length = span
        if meta_page_txnid(bytes(_ffi.buffer(_ffi.cast("uint8_t *", start), psize))) is None:
            return None  # the mapping does not begin at the file's first page
        roots = []
        for name in (DB_CONNECTIONS, DB_CONN_REVERSE):
            record = txn.get(name)  # the named database's MDB_db record in the main database
            if record is not None and len(record) != 48:
                return None
            roots.append(int.from_bytes(bytes(record[40:48]), "little") if record is not None else 2**64 - 1)
        return graph.Tree(start, length, psize, roots[0], roots[1])

    def shortest_path(self, a: int, b: int, *, weight: str | None = "pull_strength", types: Any = None,
                      min_strength: float | None = None, direction: str = "both") -> graph.Path | None:
        """The cheapest path from token ``a`` to ``b``: ``(ids, cost)``, or None when there
        is none. ``weight="pull_strength"``: a connection costs 1/pull_strength (1 when the
        strength is <= 0), Dijkstra; ``None``: hops, breadth first. Filters as ``k_hop``."""
        snap = self._snap
        return graph.shortest_path(snap._txn(), snap._db(DB_CONNECTIONS), snap._db(DB_CONN_REVERSE), a, b, weight,
                                   graph.Filter(types, min_strength, direction))

    def to_array(self) -> np.ndarray:
        """Every connection, in key order (a CONNECTION_DTYPE copy)."""
        snap = self._snap
        return _records_array(connection_records(snap._kv, snap._txn(), b""), CONNECTION_DTYPE, "connection",
                              snap._path)

    def to_arrow(self, columns: Sequence[str] | None = None) -> Any:
        """Every connection, in key order, as a ``pyarrow.Table`` with a column per field
        (or the ``columns`` named, ``"record"`` for the 64 bytes). A copy: each connection
        is its own LMDB value (needs ``ngstore[arrow]``)."""
        from . import arrow

        return arrow.records_table(self.to_array(), columns)


def connection_records(kv: KV, txn: Any, prefix: bytes, reverse: bool = False) -> list[bytes]:
    """The records (copies, each verified as ``kv`` says for a read) of the connections
    whose key in ``connections`` -- in ``conn_by_b`` when ``reverse`` -- begins with
    ``prefix``, in key order."""
    db = kv.db(DB_CONN_REVERSE if reverse else DB_CONNECTIONS)
    out: list[bytes] = []
    if db is None:
        return out
    cdb = kv.db(DB_CONNECTIONS)
    record = kv.record
    cur = txn.cursor(db=db)
    if cur.set_range(prefix):
        for key, value in cur:
            k = bytes(key)
            if not k.startswith(prefix):
                break
            if reverse:  # the reverse index is empty: fetch the record by its forward key
                rk, k = k, forward_of_reverse(k)
                value = txn.get(k, db=cdb)
                if value is None:
                    raise CorruptionError(f"reverse index entry {rk.hex()} of {kv.path} has no connection")
            out.append(bytes(record(DB_CONNECTIONS, k, value, CONNECTION_DTYPE.itemsize)))
    return out


def pair_key(a: int, b: int, connection_type: Any) -> bytes | None:
    """What ``pair_reader`` reads for connections of tokens ``a`` and ``b`` (valid ids):
    the key of the one of type ``connection_type``, the pair's key prefix for None, and
    None for a type no connection can have (not an integer from 0 to 255)."""
    lo, hi = min(a, b), max(a, b)  # stored as a <= b
    if connection_type is None:
        return conn_key(lo, hi, 0)[:CONN_KEY_BYTES - 1]
    try:
        t = int(connection_type)
        same = t == connection_type
    except (TypeError, ValueError, OverflowError):
        return None
    return conn_key(lo, hi, t) if same and 0 <= t <= 255 else None


def pair_connection(kv: KV, read: Callable[[Any, dict[Any, Any], bytes], list[bytes]], a: Any, b: Any,
                    connection_type: Any) -> Connection:
    """``Store.get_connection``'s read, once LMDB holds every connection committed:
    through ``kv.read_one`` with ``read`` (the handle's ``pair_reader``)."""
    if type(a) is not int or type(b) is not int or not 0 <= min(a, b) <= max(a, b) <= MAX_TOKEN_ID:
        a, b = ids_array([a, b]).tolist()
    key = pair_key(a, b, connection_type)
    found = kv.read_one(read, key) if key is not None else []
    if not found:
        kind = "" if connection_type is None else (
            f" of type {key[8]:#x}" if key is not None else f" of type {connection_type!r}")
        raise NotFoundError(f"no connection {a}-{b}{kind}")
    if len(found) > 1:
        raise InvalidArgumentError(f"{len(found)} connections join {a} and {b}; pass connection_type=")
    return Connection.from_bytes(found[0])


def pair_reader(kv: KV) -> Callable[[Any, dict[Any, Any], bytes], list[bytes]]:
    """The point read of connections, for ``KV.read_one``: ``read(txn, values, key)`` is
    the record of the connection with the 9-byte ``key`` (``conn_key``), or of every
    connection of a pair given its 8-byte key prefix, in ``txn`` (as
    ``connection_records``)."""

    def read(txn: Any, _values: dict[Any, Any], key: bytes) -> list[bytes]:
        if len(key) != CONN_KEY_BYTES:
            return connection_records(kv, txn, key)
        db = kv.db(DB_CONNECTIONS)
        value = txn.get(key, db=db) if db is not None else None
        return [] if value is None else [bytes(kv.record(DB_CONNECTIONS, key, value, CONNECTION_DTYPE.itemsize))]

    return read


class EventView:
    """The experience events of a snapshot (every result is a copy)."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def next_sequence(self) -> int:
        """The sequence number the next event will get (= events ever written)."""
        return self._snap.counters().events_next_seq

    def count(self) -> int:
        return self._snap.counters().events_live

    def __len__(self) -> int:
        return self.count()

    def since(self, first: int) -> tuple[int, np.ndarray]:
        """The stored events with sequence number ``first`` and later, in order:
        ``(sequence of the first one returned, EVENT_DTYPE array)``."""
        snap = self._snap
        txn, db = snap._txn(), snap._db(DB_EVENTS)
        rows: list[bytes] = []
        first_seq = self.next_sequence()
        record = snap._kv.record
        if db is not None:
            cur = txn.cursor(db=db)
            if cur.set_range(event_key(first)):
                for key, value in cur:
                    if not rows:
                        first_seq = event_sequence(key)
                    rows.append(bytes(record(DB_EVENTS, bytes(key), value, EVENT_DTYPE.itemsize)))
        return first_seq, _records_array(rows, EVENT_DTYPE, "event", snap._path)

    def to_arrow(self, columns: Sequence[str] | None = None, *, first: int = 0) -> Any:
        """The stored events with sequence number ``first`` and later, in order, as a
        ``pyarrow.Table`` with a column per field (or the ``columns`` named). A copy: each
        event is its own LMDB value (needs ``ngstore[arrow]``)."""
        from . import arrow

        return arrow.records_table(self.since(first)[1], columns)
