"""Fuzz targets: one function per parser of untrusted bytes, each checking the contract.

The contract
------------
Every file and every LMDB value ngstore reads may hold any bytes: a crash tore it, a disk
flipped a bit, an operator copied the wrong file. For ANY input, each parser either returns
a value or raises the error documented for it (``CorruptionError``, ``FormatVersionError``,
``NotAStoreError``, ``NotFoundError`` for an absent record; ``ValueError`` for the readers of
``ngstore.obs``, which document it) -- never another exception, never a crash in C, never a
hang, and never an allocation beyond the format's limits because a length field says so.

A target is a function ``(data: bytes) -> None``. It feeds ``data`` to one parser the way
the store does, then uses what came back the way the store's own callers do (lookups on an
attached reflex table, reads through every path of a token chunk, JSON of a black-box
event), because a parser that returns a value its callers cannot use has only moved the
failure. Documented errors are swallowed by :func:`documented`; anything else propagates,
and that is the breach. Crashes, hangs and allocation are watched by whoever runs the
targets: ``worker.py`` (the tests, under an address-space limit, in a child process) and
``run_atheris.py``.

``TARGETS`` is the registry. Each :class:`Target` also has a ``fixup``: re-computes the
checksums of a mutated input (LevelDB's byte surgery), so that mutations reach the checks
behind the CRC instead of stopping at it; the input generators apply it to half of their
mutations. Targets that read through LMDB share one small real store, made by
:func:`prepare` before any input runs (``stores.py`` builds it).
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import stores

import ngstore
from ngstore import kv as kv_module
from ngstore import layout, learning, ops, pages, wal, waltools
from ngstore.errors import CorruptionError, FormatVersionError, NotAStoreError, NotFoundError
from ngstore.fileio import DEFAULT_IO
from ngstore.kv import KV, ReadTxn, check_data_file
from ngstore.obs import blackbox, statspage
from ngstore.reflex import HEADER_SIZE, ReflexTable, parse_header

Errors = tuple[type[BaseException], ...]


@contextlib.contextmanager
def documented(*errors: type[BaseException]) -> Iterator[None]:
    """Swallows the errors a parser documents (and only those): the rest of the ``with``
    block is skipped, anything else propagates as a contract breach."""
    try:
        yield
    except errors:
        pass


# ----------------------------------------------------------------------------- scratch
_scratch_dir: str | None = None


def scratch(name: str) -> str:
    """An empty directory ``name`` under this process's scratch directory (tmpfs when there
    is one: the log targets fsync, and a disk would make every input cost milliseconds)."""
    global _scratch_dir
    if _scratch_dir is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _scratch_dir = tempfile.mkdtemp(prefix="ngstore-fuzz-", dir=base)
        atexit.register(shutil.rmtree, _scratch_dir, True)
    path = os.path.join(_scratch_dir, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# -------------------------------------------------------------------- the log (format §6)
def wal_segment_header(data: bytes) -> None:
    """The 40-byte segment header: a (salt, first) pair, the reason it is invalid, or
    FormatVersionError for a well-formed header of another version."""
    first = struct.unpack_from("<Q", data, 24)[0] if len(data) >= 32 else 1
    for name_first in (first, 1):
        with documented(FormatVersionError):
            r = wal._check_header(data, name_first)
            assert isinstance(r, str) or (r[0] != 0 and r[1] == name_first), r


def wal_frames(data: bytes) -> None:
    """A segment image scanned in memory, as recovery does: the header, then each frame
    (``_parse_frame``), the search for later valid frames after a bad one, the salt guess
    of an unreadable header, and the decompression of every valid payload."""
    size = len(data)
    mv = memoryview(data)
    first = struct.unpack_from("<Q", data, 24)[0] if size >= 32 else 1
    with documented(FormatVersionError):
        hdr = wal._check_header(data, first)
        salt = hdr[0] if not isinstance(hdr, str) else (wal._guess_salt(data, first) or 1)
        off, expected = wal.SEGMENT_HEADER_SIZE, None
        while off < size:
            r = wal._parse_frame(data, mv, off, size, salt, expected)
            if isinstance(r, str):
                for o, h in wal._valid_frames_after(data, off + 1, salt, 0):
                    _payload(h, mv[o + wal.FRAME_HEADER_SIZE:o + wal.FRAME_HEADER_SIZE + h[1]], o)
                break
            _payload(r, mv[off + wal.FRAME_HEADER_SIZE:off + wal.FRAME_HEADER_SIZE + r[1]], off)
            off += wal.FRAME_HEADER_SIZE + r[1]
            expected = r[3] + 1


def _payload(hdr: wal.FrameHeader, stored: memoryview, off: int) -> None:
    with documented(CorruptionError):
        out = wal._decode_payload(hdr, stored, "segment", off, _dctx())
        assert len(out) == hdr[8], (len(out), hdr[8])


_DCTX: Any = None


def _dctx() -> Any:
    global _DCTX
    if _DCTX is None:
        import zstandard
        _DCTX = zstandard.ZstdDecompressor()
    return _DCTX


def split_segments(data: bytes) -> list[tuple[int, bytes]]:
    """The segment files an input stands for: it is cut before every segment magic after
    offset 0; each piece is named by the first position its header gives (when that keeps
    the names increasing), else by the previous name + 1."""
    cuts = [0]
    i = data.find(wal.SEGMENT_MAGIC, 1)
    while i > 0:
        cuts.append(i)
        i = data.find(wal.SEGMENT_MAGIC, i + 1)
    pieces = [data[a:b] for a, b in zip(cuts, [*cuts[1:], len(data)], strict=True)][:8]
    out: list[tuple[int, bytes]] = []
    prev = 0
    for piece in pieces:
        named = struct.unpack_from("<Q", piece, 24)[0] if len(piece) >= 32 else 0
        first = named if prev < named < 1 << 63 else prev + 1
        out.append((first, piece))
        prev = first
    return out


def wal_recovery(data: bytes) -> None:
    """The log directory recovery opens: ``verify``, ``dump``, and ``Log.open`` in each
    recovery mode, then replay (``iter_records`` and the batch decoder) and one append.
    After a ``tolerate-tail`` open the log must verify clean: the tear was truncated."""
    d = os.path.join(scratch("wal"), "wal")
    segments = split_segments(data)

    def lay_out() -> None:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for first, piece in segments:
            write(os.path.join(d, wal.segment_name(first)), piece)

    lay_out()
    with documented(FormatVersionError):
        report = waltools.verify(d)
        assert isinstance(report.sound, bool)
        for _ in waltools.dump(d):
            pass
    for mode in wal.RECOVERY_MODES:
        lay_out()
        with documented(CorruptionError, FormatVersionError):
            log, _report = wal.Log.open(d, recovery=mode, preallocate_bytes=0, segment_bytes=1 << 16)
            try:
                for rec in log.iter_records(0):
                    with documented(CorruptionError, FormatVersionError):
                        ops.decode_ops(rec.payload, f"log record {rec.position}")
                log.append([(wal.BATCH, b"after recovery")])
                log.sync()
            finally:
                log.close()
            if mode == "tolerate-tail":
                after = waltools.verify(d)
                assert after.sound and not after.problems, str(after)


def fix_wal(data: bytes) -> bytes:
    """Re-computes the header CRC and every frame CRC of each segment of ``data``."""
    b = bytearray(data)
    starts = [i for i in range(len(b)) if b.startswith(wal.SEGMENT_MAGIC, i)] or [0]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(b)
        if start + 40 <= end:
            struct.pack_into("<I", b, start + 36, zlib.crc32(b[start:start + 36]))
        off = start + wal.SEGMENT_HEADER_SIZE
        while off + wal.FRAME_HEADER_SIZE <= end:
            stop = off + wal.FRAME_HEADER_SIZE + struct.unpack_from("<I", b, off + 4)[0]
            if stop > end:
                break
            struct.pack_into("<I", b, off, zlib.crc32(b[off + 4:stop]))
            off = stop
    return bytes(b)


def batch_payload(data: bytes) -> None:
    """A log record's payload as replay decodes it (format §5): the ops, a LEARN_UPDATE's
    fold rules, and the token writes the overlay indexes."""
    with documented(CorruptionError, FormatVersionError):  # an unknown op kind: a newer writer's
        decoded = ops.decode_ops(data)
        for op in decoded:
            assert op.data.nbytes == op.count * ops.OP_ITEM_SIZE[op.kind]
            if op.kind == ops.OP_LEARN_UPDATE:
                with documented(CorruptionError):
                    learning.check_fold(op.data)
        ops.token_writes(decoded, 1 << 20)
        assert len(ops.encode_ops(decoded)) == len(data)


# ---------------------------------------------- checkpoint, state, marker, data.mdb (§1, §4)
def checkpoint_file(data: bytes) -> None:
    """``checkpoint``: a Checkpoint that encodes back to the same bytes, or an error."""
    with documented(CorruptionError, FormatVersionError):
        ckpt = layout.decode_checkpoint(data, "checkpoint")
        assert layout.encode_checkpoint(ckpt) == data


def fix_checkpoint(data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) >= 16:
        end = 32 + struct.unpack_from("<I", b, 12)[0]
        if end + 4 <= len(b):
            struct.pack_into("<I", b, end, zlib.crc32(b[:end]))
    return bytes(b)


def state_file(data: bytes) -> None:
    """``state``: never an error. A file that does not say, in the writer's own JSON, that
    the writer closed cleanly is unclean with an unknown boot (recovery assumes the worst)."""
    st = layout.decode_state(data)
    assert isinstance(st.clean, bool) and isinstance(st.pid, int), st
    assert st.boot_id is None or isinstance(st.boot_id, str), st
    assert layout.decode_state(layout.encode_state(st)) == st
    if st.clean:
        assert json.loads(data)["clean"] is True, st


def marker_file(data: bytes) -> None:
    """``NGSTORE``: the format version it names, or NotAStoreError / FormatVersionError."""
    with documented(NotAStoreError, FormatVersionError):
        version = layout.decode_marker(data, "store")
        assert isinstance(version, int) and version <= layout.FORMAT_VERSION


def lmdb_meta_page(data: bytes) -> None:
    """An LMDB meta page (the checkpoint's copy, or page 0/1 of data.mdb): its transaction
    id (None if it is not a meta page), last page and page size, or CorruptionError."""
    txnid = layout.meta_page_txnid(data)
    assert txnid is None or isinstance(txnid, int)
    # The callers' guards (kv.check_data_file): the page size is read from a page of at
    # least 44 bytes, the last page number only from a page that is a meta page.
    if txnid is not None:
        assert layout.meta_page_last_pgno(data) >= 0
    if len(data) >= 44:
        assert layout.meta_page_size(data) >= 0
    with documented(CorruptionError):
        chosen = pages.choose_meta(data + data)
        assert chosen is None or chosen[0] in (0, 1), chosen
    assert layout.meta_page_for_slot(data, 1)[8:] == data[8:] if len(data) >= 8 else True


def data_file(data: bytes) -> None:
    """data.mdb checked before LMDB maps it (``kv.check_data_file``, with the walk of its
    small B-trees that a writer's open does), then every tree walked (``pages.verify``, what
    ``check()`` does): problems are reported, never raised."""
    d = scratch("data")
    write(os.path.join(d, layout.DATA_FILE), data)
    with documented(CorruptionError):
        walked = check_data_file(d, DEFAULT_IO, walk=True)
        assert (walked is None) == (not data), walked  # an empty file is LMDB's to create
        chosen = pages.choose_meta(data[:2 * layout.MAX_PAGE_SIZE])
        if walked is not None and chosen is not None:
            full = pages.verify(memoryview(data), chosen[1])
            assert all(isinstance(p.reason, str) for p in full.problems)


# ------------------------------------------------------------------ meta values (§3.1, §3.3)
#: TLV tags of a meta input: the ``meta`` keys, then the two ``learn`` value kinds.
META_TAGS = (*layout.META_KEYS, b"learn cursor", b"learn group")


def meta_tlv(values: dict[bytes, bytes]) -> bytes:
    """The input that stands for some meta (and learn) values: per value, a tag byte (its
    index in :data:`META_TAGS`), a length byte and the bytes."""
    out = bytearray()
    for key, value in values.items():
        out += bytes([META_TAGS.index(key), len(value)]) + value
    return bytes(out)


def meta_values_of(data: bytes) -> dict[bytes, bytes]:
    values: dict[bytes, bytes] = {}
    i = 0
    while i + 2 <= len(data):
        tag, n = data[i], data[i + 1]
        values[META_TAGS[tag % len(META_TAGS)]] = data[i + 2:i + 2 + n]
        i += 2 + n
    return values


def meta_values(data: bytes) -> None:
    """The ``meta`` values as the store reads them at open (``decode_meta``), and the chunk
    layout it then builds from them; the counter codec; the ``learn`` value codecs."""
    values = meta_values_of(data)
    meta_only = {k: v for k, v in values.items() if k in layout.META_KEYS}
    with documented(CorruptionError, FormatVersionError, NotAStoreError):
        meta = layout.decode_meta(meta_only, "meta")
        layout.ChunkLayout(meta.chunk_slots)
        assert layout.Counters.decode(meta.counters.encode(), "meta") == meta.counters
    with documented(CorruptionError):
        layout.Counters.decode(values.get(layout.M_COUNTERS), "meta")
    with documented(CorruptionError):
        layout.LearnCursor.decode(values.get(b"learn cursor", b""), "learn")
    with documented(CorruptionError):
        layout.decode_learn_moments(values.get(b"learn group", b""), "learn")


# ----------------------------------------------------------------- the fuzz store (LMDB)
@dataclass
class _Fixture:
    path: str
    kv: KV
    reader: ngstore.Store
    writes: int = 0


_fixture: _Fixture | None = None
_pristine: str | None = None
_generation = 0
#: Writes after which the fuzz store is replaced by a fresh copy. The read-only store keeps
#: its reflex table's read transaction open, so LMDB reuses no page freed after it and each
#: write grows data.mdb by a few pages: a copy keeps it far below the map size.
RESET_AFTER_WRITES = 1000


def fixture() -> _Fixture:
    """The store the LMDB targets write their input into, with a raw writable LMDB handle
    and a read-only Store over it (one environment, shared)."""
    global _fixture, _pristine, _generation
    if _fixture is not None and _fixture.writes >= RESET_AFTER_WRITES:
        old = _fixture
        _fixture = None
        old.reader.close()
        old.kv.close()
        gc.collect()  # a reflex table's read lease is released by a finalizer
        # Every handle a target opened on the store is closed by now: one still registered
        # is a leak (a snapshot or lease an error path did not end).
        assert old.kv.path not in kv_module._registry, f"a handle of {old.kv.path} was never closed"
        shutil.rmtree(os.path.dirname(old.path), ignore_errors=True)
    if _fixture is None:
        if _pristine is None:
            _pristine = os.path.join(scratch("pristine"), "s")
            stores.make(_pristine)
        _generation += 1
        path = os.path.join(scratch(f"store-{_generation}"), "s")
        shutil.copytree(_pristine, path)
        kv = KV(path, readonly=False, map_size=stores.MAP_SIZE)
        reader = ngstore.open(path, readonly=True, map_size=stores.MAP_SIZE, observability=False)
        _fixture = _Fixture(path, kv, reader)
    return _fixture


@contextlib.contextmanager
def stored(puts: dict[tuple[bytes, bytes], bytes | None]) -> Iterator[_Fixture]:
    """Puts ``(database, key) -> value`` (None: delete) into the fuzz store for the length
    of the block, then restores what was there."""
    fx = fixture()
    dbs = fx.kv.dbs

    def apply(values: dict[tuple[bytes, bytes], bytes | None]) -> None:
        def txn_fn(txn: Any) -> None:
            for (db, key), value in values.items():
                if value is None:
                    txn.delete(key, db=dbs[db])
                else:
                    txn.put(key, value, db=dbs[db])
        fx.kv.write(txn_fn)

    with ReadTxn(fx.kv) as txn:
        before = {}
        for db, key in puts:
            v = txn.get(key, db=dbs[db])
            before[(db, key)] = bytes(v) if v is not None else None
    apply(puts)
    fx.writes += 2
    try:
        yield fx
    finally:
        apply(before)


#: The chunk the token target replaces (ids 8..15 of the fuzz store).
CHUNK = 1


def token_chunk(data: bytes) -> None:
    """A token chunk value read through every read path: single gets (Python), gathers and
    columns (C, zero copy), chunk views, presence, iteration, and ``check()``."""
    ids = list(range(CHUNK * stores.CHUNK_SLOTS, (CHUNK + 1) * stores.CHUNK_SLOTS))
    with stored({(layout.DB_TOKENS, layout.ChunkLayout.key(CHUNK)): data}) as fx:
        r = fx.reader
        for i in ids[:3]:
            with documented(CorruptionError, NotFoundError):
                r.get_token(i)
        with documented(CorruptionError):
            r.contains(ids[-1])
        with documented(CorruptionError, NotFoundError):
            r.get_tokens(ids)
        with r.snapshot() as snap:
            t = snap.tokens
            for read in (lambda: t.get(ids, missing="skip"), lambda: t.presence(ids), lambda: ids[1] in t,
                         lambda: t.column("weight"), lambda: t.column("coordinates"), lambda: t.to_array(),
                         lambda: t.ids(), lambda: list(t), lambda: [a.copy() for _f, a in t.chunks()]):
                with documented(CorruptionError):
                    read()
        assert isinstance(r.check().ok, bool)


def connection_value(data: bytes) -> None:
    """A ``connections`` value read by key, by scans of either direction, and ``check()``."""
    with stored({(layout.DB_CONNECTIONS, layout.conn_key(1, 9, 0)): data}) as fx:
        r = fx.reader
        for read in (lambda: r.get_connection(1, 9, 0), lambda: r.get_connection(1, 9),
                     lambda: r.get_connections([(1, 9, 0), (4, 9, 1)]), lambda: r.connections_between(9, 1),
                     lambda: r.neighbors(1), lambda: r.neighbors(9, "in"), lambda: r.neighbors(9)):
            with documented(CorruptionError, NotFoundError):
                read()
        with r.snapshot() as snap, documented(CorruptionError):
            snap.connections.to_array()
        assert isinstance(r.check().ok, bool)


def event_value(data: bytes) -> None:
    """An ``events`` value read by the event scans and ``check()``."""
    with stored({(layout.DB_EVENTS, layout.event_key(2)): data}) as fx:
        r = fx.reader
        with r.snapshot() as snap:
            for first in (0, 2, 3):
                with documented(CorruptionError):
                    snap.events.since(first)
        assert isinstance(r.check().ok, bool)


def store_meta(data: bytes) -> None:
    """``meta`` values (the TLV of :func:`meta_values`) in a store that is then opened
    read-only and read: what a damaged ``meta`` database does to an open."""
    values = meta_values_of(data)
    puts: dict[tuple[bytes, bytes], bytes | None] = {(layout.DB_META, k): values.get(k) for k in layout.META_KEYS}
    with stored(puts) as fx, documented(CorruptionError, FormatVersionError, NotAStoreError), \
            ngstore.open(fx.path, readonly=True, map_size=stores.MAP_SIZE, observability=False) as r:
        r.count()
        r.stats()
        assert isinstance(r.check().ok, bool)
        with r.snapshot() as snap, documented(CorruptionError):
            snap.tokens.column("id")
            snap.tokens.get(list(range(20)), missing="skip")
            snap.events.since(0)


# -------------------------------------------------------------------- reflex table (§7)
def split_table(data: bytes) -> tuple[bytes, list[bytes]]:
    """A header and its segments: the bytes after the header cut by the geometry the header
    gives (when it is small enough to be plausible; the last pieces may come out short or
    empty, and bytes beyond the geometry are one more segment); else one segment."""
    head, body = data[:HEADER_SIZE], data[HEADER_SIZE:]
    if len(head) == HEADER_SIZE:
        rps, nrseg, eps, niseg = struct.unpack_from("<IIII", head, 24)
        if nrseg + niseg <= 64 and rps * 128 <= 1 << 20 and eps * 8 <= 1 << 20:
            segs, off = [], 0
            for n in [rps * 128] * nrseg + [eps * 8] * niseg:
                segs.append(body[off:off + n])
                off += n
            if off < len(body):
                segs.append(body[off:])
            return head, segs
    return head, [body] if body else []


def fix_table(data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) >= HEADER_SIZE:
        struct.pack_into("<I", b, 252, zlib.crc32(b[:252]))
    return bytes(b)


_STATES = np.random.default_rng(7).uniform(-1, 1, (6, 8)).astype(np.float32)


def exercise_reader(t: ReflexTable) -> np.ndarray | None:
    """Every read of a table; returns its entries when they could be read."""
    entries = None
    with documented(CorruptionError):
        entries = t.entries()
    coords = entries["state"][:8] if entries is not None and len(entries) else np.zeros((1, 8, 3), np.int16)
    for read in (lambda: t.lookup_batch(_STATES), lambda: t.lookup_batch(coords),
                 lambda: t.lookup_batch(coords, nearest_fallback=2.5), lambda: t.lookup(list(_STATES[0])),
                 lambda: t.lookup(coords[0], nearest_fallback=0.5, min_confidence=0),
                 lambda: t.plan_insert(_STATES[:2], _reflex_rows(2)), t.check, t.stats, t.header):
        with documented(CorruptionError):
            read()
    assert len(t) >= 0 and t.room >= 0
    return entries


def _reflex_rows(n: int) -> np.ndarray:
    return stores.reflexes(n, seed=5)[1]


def exercise_writer(t: ReflexTable, entries: np.ndarray | None) -> None:
    """Every write of a writable table: inserts (growth), updates, deletes by state and key."""
    states, conns = stores.reflexes(3, seed=9)
    for write_ in (lambda: t.insert_batch(states, conns), lambda: t.insert(states[0], conns[0]),
                   lambda: t.reserve(len(t) + 4)):
        with documented(CorruptionError):
            write_()
    if entries is not None and len(entries):
        e = entries[0]
        for write_ in (lambda: t.insert(e["state"], e["connection"]),
                       lambda: t.delete(e["state"], e["connection"]), lambda: t.delete(e["state"]),
                       lambda: t.delete_key(int(e["grid_hash"]), int(e["fingerprint"]))):
            with documented(CorruptionError, NotFoundError):
                write_()
    with documented(CorruptionError):
        t.check()
        header, _dirty = t.segments()
        again = ReflexTable.attach(header, [bytearray(s) for s in t.all_segments()], writable=False)
        again.check()


def reflex_header(data: bytes) -> None:
    """``parse_header``: the fields of a 256-byte header (unvalidated, for tools), or an error."""
    with documented(CorruptionError, FormatVersionError):
        fields = parse_header(data)
        assert fields["segment_count"] == fields["record_segments"] + fields["index_segments"]


def reflex_table(data: bytes) -> None:
    """A reflex table over arbitrary header and segment bytes (in C): ``attach`` read-only
    and writable, ``from_bytes`` of the whole image, then every read and write."""
    head, segs = split_table(data)
    with documented(CorruptionError, FormatVersionError):
        exercise_reader(ReflexTable.attach(head, segs, writable=False))
    with documented(CorruptionError, FormatVersionError):
        t = ReflexTable.attach(head, [bytearray(s) for s in segs], writable=True)
        exercise_writer(t, exercise_reader(t))
    with documented(CorruptionError, FormatVersionError):
        exercise_reader(ReflexTable.from_bytes(data, writable=False))


def store_reflexes(data: bytes) -> None:
    """A reflex table stored in LMDB (``H`` and ``S`` values of the ``reflexes`` database),
    attached zero-copy by a read-only store (``refresh``) and looked up."""
    head, segs = split_table(data)
    fx = fixture()
    puts: dict[tuple[bytes, bytes], bytes | None] = {(layout.DB_REFLEXES, layout.REFLEX_HEADER_KEY): head}
    for i in range(64):
        puts[(layout.DB_REFLEXES, layout.reflex_segment_key(i))] = segs[i] if i < len(segs) else None
    with stored(puts):
        r = fx.reader
        with documented(CorruptionError, FormatVersionError):
            r.refresh()
            t = r.reflex_table()
            if t is not None:
                exercise_reader(t)
            r.reflex_stats()
            r.intuition().try_fast_path(list(_STATES[0]))
    with documented(CorruptionError, FormatVersionError):
        r.refresh()  # back to the fuzz store's own table


# ------------------------------------------------------------- black box, stats page (§8)
def blackbox_ring(data: bytes) -> None:
    """``blackbox.ring`` read by ``ngstore blackbox`` (``read_ring``, ValueError for a file
    that is not a ring it reads), the events written out as a dump; and taken over by a new
    writer (``BlackBox.attach``, which never fails on the file's content) that saves it."""
    d = scratch("ring")
    path = os.path.join(d, blackbox.RING_FILE)
    write(path, data)
    with documented(ValueError):
        info, events, text = blackbox.read_ring(d)
        doc = {"events": events, "stats": {}, "ring": info.as_json(), "fatal_error": text}
        assert json.loads(blackbox.encode_dump(doc))["events"] == json.loads(json.dumps(events))
    box = blackbox.BlackBox(capacity=stores.BLACKBOX_CAPACITY)
    salvaged = box.attach(d)
    try:
        box.record("after_takeover", n=1)
        assert box.get_events()[-1]["event_type"] == "after_takeover"
        if salvaged is not None:
            blackbox.encode_dump(salvaged)
    finally:
        box.detach()


def fix_ring(data: bytes) -> bytes:
    """Re-computes the ring header's CRC and the CRC of every record whose length fits."""
    b = bytearray(data)
    if len(b) >= blackbox.FILE_HEAD_BYTES:
        struct.pack_into("<I", b, 68, zlib.crc32(b[:68]))
    for off in range(blackbox.HEADER_BYTES, len(b) - blackbox.RECORD_BYTES + 1, blackbox.RECORD_BYTES):
        n = struct.unpack_from("<H", b, off + 4)[0]
        if n <= blackbox.PAYLOAD_MAX:
            struct.pack_into("<I", b, off, zlib.crc32(b[off + 4:off + 24 + n]))
    return bytes(b)


def blackbox_payload(data: bytes) -> None:
    """One ring record's payload (the marshal subset of format §8.1.1): ``decode_payload``
    or ValueError, and the event as a dump shows it."""
    with documented(ValueError):
        et, keys, values = blackbox.decode_payload(data)
        event = blackbox._Event(0, 0, et, keys, values, 0).as_json()
        blackbox.encode_dump({"events": [event], "stats": {}})


def blackbox_dump(data: bytes) -> None:
    """A black-box dump file, plain and zstd-framed (``load_dump``: a document with the
    dump's shape, or ValueError), listed and shown the way ``ngstore blackbox`` does."""
    d = scratch("dumps")
    for name in ("blackbox-1-1-1.json", "blackbox-1-1-2.json.zst"):
        path = os.path.join(d, name)
        write(path, data)
        with documented(ValueError):
            doc = blackbox.load_dump(path)
            assert isinstance(doc, dict) and isinstance(doc["stats"], dict), doc
            assert isinstance(doc["events"], list) and all(isinstance(e, dict) for e in doc["events"]), doc
            assert all(isinstance(t, str) for t in blackbox.iter_event_types(doc))
            int(doc.get("timestamp_us") or 0)
            json.dumps(doc, default=str)
    assert len(blackbox.list_dumps(d)) == 2


def stats_page(data: bytes) -> None:
    """``stats.page`` as ``ngstore info`` and the sidecar read it (``read_stats_page``:
    a copy, None, or ValueError), merged with a reader's stats and labelled."""
    d = scratch("stats")
    write(os.path.join(d, statspage.PAGE_FILE), data)
    with documented(ValueError):
        page = statspage.read_stats_page(d, attempts=1)
        merged = statspage.merge_published({"tokens_live": 1}, page)
        assert isinstance(merged, dict)
        statspage.published_labels(page)
        if page is not None:
            for name, (buckets, count, total) in page.histograms.items():
                assert isinstance(name, str) and isinstance(count, int) and isinstance(total, float)
                assert all(isinstance(c, int) for _le, c in buckets)


def fix_stats_page(data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) >= statspage.HEAD_BYTES:
        count = min(struct.unpack_from("<I", b, 16)[0], statspage.MAX_ENTRIES)
        end = min(len(b), statspage.HEAD_BYTES + count * statspage.ENTRY_BYTES)
        crc = zlib.crc32(b[statspage.HEAD_BYTES:end], zlib.crc32(b[32:60], zlib.crc32(b[:24])))
        struct.pack_into("<I", b, 60, crc)
    return bytes(b)


# -------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    #: Re-computes the input's checksums after a mutation (None: the format has none).
    fixup: Callable[[bytes], bytes] | None = None
    #: Needs :func:`fixture` (the LMDB store) prepared before inputs run.
    needs_store: bool = False

    def __call__(self, data: bytes) -> None:
        self.run(data)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("wal_segment_header", wal_segment_header, fix_wal),
    Target("wal_frames", wal_frames, fix_wal),
    Target("wal_recovery", wal_recovery, fix_wal),
    Target("batch_payload", batch_payload),
    Target("checkpoint_file", checkpoint_file, fix_checkpoint),
    Target("state_file", state_file),
    Target("marker_file", marker_file),
    Target("lmdb_meta_page", lmdb_meta_page),
    Target("data_file", data_file),
    Target("meta_values", meta_values),
    Target("store_meta", store_meta, needs_store=True),
    Target("token_chunk", token_chunk, needs_store=True),
    Target("connection_value", connection_value, needs_store=True),
    Target("event_value", event_value, needs_store=True),
    Target("reflex_header", reflex_header, fix_table),
    Target("reflex_table", reflex_table, fix_table),
    Target("store_reflexes", store_reflexes, fix_table, needs_store=True),
    Target("blackbox_ring", blackbox_ring, fix_ring),
    Target("blackbox_payload", blackbox_payload),
    Target("blackbox_dump", blackbox_dump),
    Target("stats_page", stats_page, fix_stats_page),
)}


def prepare(names: list[str]) -> None:
    """Makes what the named targets need before the first input (and before a runner limits
    the address space): the fuzz store, and every module the targets import lazily."""
    if any(TARGETS[n].needs_store for n in names):
        fixture()
    _dctx()
