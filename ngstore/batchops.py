"""Batch operations: their log encoding and how they apply to LMDB.

A batch is a list of operations. The same bytes are written to the log and later
decoded and applied -- live commits and crash replay run the one :func:`apply_ops`,
so replay cannot drift from what a commit did. The encoding is specified in
``docs/format.md`` §5 ("batch payload"); the token-chunk value in §3.2.

Applying is idempotent given the state before it (puts overwrite, deletes of absent
ids do nothing), and the store never applies a record twice anyway: the last applied
log position is stored in the same LMDB transaction (``meta/applied_position``).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .errors import CorruptionError
from .records import TOKEN_DTYPE

# -- payload encoding ---------------------------------------------------------------

PAYLOAD_MAGIC = 0x4E47_4231  # "NGB1"
OP_TOKEN_PUT = 1
OP_TOKEN_DELETE = 2
OP_CONNECTION_PUT = 3
OP_CONNECTION_DELETE = 4
OP_EVENT_APPEND = 5
OP_REFLEX_PUT = 6
OP_REFLEX_DELETE = 7
OP_EVENT_TRIM = 8
OP_REFLEX_DELETE_KEY = 9

_PAYLOAD_HEAD = struct.Struct("<II")  # magic, op count
_OP_HEAD = struct.Struct("<HHIQ")     # op type, reserved, item count, body bytes

#: bytes per item of each op's body; the decoder checks body = count * size exactly.
OP_ITEM_SIZE = {
    OP_TOKEN_PUT: 64,
    OP_TOKEN_DELETE: 4,
    OP_CONNECTION_PUT: 64,
    OP_CONNECTION_DELETE: 12,
    OP_EVENT_APPEND: 128,
    OP_REFLEX_PUT: 48 + 64,
    OP_REFLEX_DELETE: 60,
    OP_EVENT_TRIM: 8,
    OP_REFLEX_DELETE_KEY: 32,
}


@dataclass
class Op:
    kind: int
    data: np.ndarray  # a contiguous array whose rows are the op's items

    @property
    def count(self) -> int:
        return int(self.data.shape[0])


def encode_ops(ops: list[Op]) -> bytes:
    parts = [_PAYLOAD_HEAD.pack(PAYLOAD_MAGIC, len(ops))]
    for op in ops:
        body = np.ascontiguousarray(op.data).tobytes()
        if len(body) != op.count * OP_ITEM_SIZE[op.kind]:
            raise AssertionError(f"op {op.kind}: body of {len(body)} bytes for {op.count} items")
        parts.append(_OP_HEAD.pack(op.kind, 0, op.count, len(body)))
        parts.append(body)
    return b"".join(parts)


_OP_DTYPES: dict[int, np.dtype] = {}


def register_op_dtype(kind: int, dtype: np.dtype) -> None:
    """Lets the modules that own a record kind say how its op body decodes."""
    if dtype.itemsize != OP_ITEM_SIZE[kind]:
        raise AssertionError(f"dtype of op {kind} is {dtype.itemsize} bytes")
    _OP_DTYPES[kind] = dtype


register_op_dtype(OP_TOKEN_PUT, TOKEN_DTYPE)
register_op_dtype(OP_TOKEN_DELETE, np.dtype("<u4"))


def decode_ops(payload: bytes | memoryview, where: str = "batch payload") -> list[Op]:
    """Inverse of :func:`encode_ops`; any inconsistency is a CorruptionError.

    The log's CRC has already vouched for the bytes, so an error here means a bug or
    a payload from an incompatible version -- never a reason to guess.
    """
    mv = memoryview(payload)
    if len(mv) < _PAYLOAD_HEAD.size:
        raise CorruptionError(f"{where}: shorter than its header")
    magic, n_ops = _PAYLOAD_HEAD.unpack_from(mv, 0)
    if magic != PAYLOAD_MAGIC:
        raise CorruptionError(f"{where}: bad magic {magic:#x}")
    pos = _PAYLOAD_HEAD.size
    ops = []
    for _ in range(n_ops):
        if pos + _OP_HEAD.size > len(mv):
            raise CorruptionError(f"{where}: op header past the end", offset=pos)
        kind, _res, count, nbytes = _OP_HEAD.unpack_from(mv, pos)
        pos += _OP_HEAD.size
        if kind not in OP_ITEM_SIZE or kind not in _OP_DTYPES:
            raise CorruptionError(f"{where}: unknown op type {kind}", offset=pos)
        if nbytes != count * OP_ITEM_SIZE[kind] or pos + nbytes > len(mv):
            raise CorruptionError(f"{where}: op {kind} body length {nbytes} for {count} items", offset=pos)
        ops.append(Op(kind, np.frombuffer(mv, dtype=_OP_DTYPES[kind], count=count, offset=pos)))
        pos += nbytes
    if pos != len(mv):
        raise CorruptionError(f"{where}: {len(mv) - pos} trailing bytes", offset=pos)
    return ops


# -- token chunks (docs/format.md §3.2) ------------------------------------------------

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(bitmap: np.ndarray) -> int:
    return int(_POPCOUNT[bitmap].sum(dtype=np.int64))


class ChunkLayout:
    """Tokens live in chunks of ``slots`` consecutive ids: ``slots * 64`` bytes of
    records at offset 0, then a presence bitmap of ``slots / 8`` bytes (LSB first)."""

    def __init__(self, slots: int) -> None:
        if slots < 8 or slots & (slots - 1) or slots > 1 << 16:
            raise ValueError(f"chunk slots must be a power of two in 8..65536, got {slots}")
        self.slots = slots
        self.shift = slots.bit_length() - 1
        self.mask = slots - 1
        self.records_bytes = slots * 64
        self.bitmap_bytes = slots // 8
        self.value_bytes = self.records_bytes + self.bitmap_bytes
        self.full_bitmap = b"\xff" * self.bitmap_bytes

    @staticmethod
    def key(chunk: int) -> bytes:
        return struct.pack(">I", chunk)  # big-endian: LMDB's byte order = id order

    @staticmethod
    def chunk_of(key: bytes | memoryview) -> int:
        return struct.unpack(">I", bytes(key))[0]

    def check(self, value: memoryview | bytes, key: int) -> None:
        if len(value) != self.value_bytes:
            raise CorruptionError(
                f"token chunk {key} is {len(value)} bytes, expected {self.value_bytes}")

    def bitmap(self, value: memoryview | bytes) -> np.ndarray:
        return np.frombuffer(value, dtype=np.uint8, count=self.bitmap_bytes, offset=self.records_bytes)


@dataclass
class ApplyStats:
    """What applying some ops changed; the store adds it to its counters."""

    tokens_added: int = 0       # ids that became present
    tokens_removed: int = 0     # ids that became absent
    tokens_written: int = 0     # records written (new or overwritten)
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, other: "ApplyStats") -> None:
        self.tokens_added += other.tokens_added
        self.tokens_removed += other.tokens_removed
        self.tokens_written += other.tokens_written
        for k, v in other.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v


def sort_unique_last(records: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records sorted by id with duplicates removed, the last occurrence winning."""
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return records, ids
    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    keep = np.ones(ids_sorted.size, dtype=bool)
    keep[:-1] = ids_sorted[1:] != ids_sorted[:-1]  # the last of each run of equal ids
    order = order[keep]
    return records[order], ids_sorted[keep]


def _groups(chunks: np.ndarray) -> Iterable[tuple[int, int, int]]:
    """(chunk, start, end) runs of a sorted chunk-index array."""
    if chunks.size == 0:
        return
    cuts = np.flatnonzero(chunks[1:] != chunks[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [chunks.size]))
    for s, e in zip(starts.tolist(), ends.tolist()):
        yield int(chunks[s]), s, e


_SMALL_PUT = 16  # below this many records, plain Python beats numpy's per-call overhead


def _apply_small_token_put(txn, db, layout: ChunkLayout, records: np.ndarray) -> ApplyStats:
    """The same as the general path, for a handful of records (the common small commit)."""
    raw = np.ascontiguousarray(records).tobytes()
    latest: dict[int, int] = {}
    for i, tid in enumerate(records["id"].tolist()):
        latest[tid] = i  # the last record of an id wins
    by_chunk: dict[int, list[int]] = {}
    for tid in sorted(latest):
        by_chunk.setdefault(tid >> layout.shift, []).append(tid)
    stats = ApplyStats(tokens_written=len(latest))
    rb = layout.records_bytes
    for chunk, tids in by_chunk.items():
        key = layout.key(chunk)
        old = txn.get(key, db=db)
        if old is not None:
            layout.check(old, chunk)
            buf = bytearray(old)
        else:
            buf = bytearray(layout.value_bytes)
        for tid in tids:
            slot = tid & layout.mask
            i = latest[tid]
            buf[slot * 64:slot * 64 + 64] = raw[i * 64:i * 64 + 64]
            byte = rb + (slot >> 3)
            bit = 1 << (slot & 7)
            if not buf[byte] & bit:
                buf[byte] |= bit
                stats.tokens_added += 1
        txn.put(key, buf, db=db)
    return stats


def apply_token_put(txn, db, layout: ChunkLayout, records: np.ndarray) -> ApplyStats:
    if records.shape[0] <= _SMALL_PUT:
        return _apply_small_token_put(txn, db, layout, records)
    ids = records["id"].astype(np.uint32, copy=False)
    records, ids = sort_unique_last(records, ids)
    stats = ApplyStats(tokens_written=int(ids.size))
    raw = records.view(np.uint8).reshape(-1, 64) if records.flags.c_contiguous else \
        np.ascontiguousarray(records).view(np.uint8).reshape(-1, 64)
    chunks = ids >> layout.shift
    scratch: bytearray | None = None  # one value buffer reused for every whole chunk
    for chunk, s, e in _groups(chunks):
        key = layout.key(chunk)
        old = txn.get(key, db=db)
        if old is not None:
            layout.check(old, chunk)
        if e - s == layout.slots:  # the whole chunk is replaced: no read-modify-write
            before = popcount(layout.bitmap(old)) if old is not None else 0
            if scratch is None:
                scratch = bytearray(layout.value_bytes)
                scratch[layout.records_bytes:] = layout.full_bitmap
            scratch[:layout.records_bytes] = raw[s:e].data  # one copy; LMDB copies it again
            txn.put(key, scratch, db=db)
            stats.tokens_added += layout.slots - before
            continue
        buf = bytearray(old) if old is not None else bytearray(layout.value_bytes)
        rows = np.frombuffer(buf, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)
        bitmap = np.frombuffer(buf, dtype=np.uint8, count=layout.bitmap_bytes, offset=layout.records_bytes)
        slots = (ids[s:e] & layout.mask).astype(np.intp)
        before = popcount(bitmap)
        rows[slots] = raw[s:e]
        np.bitwise_or.at(bitmap, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
        stats.tokens_added += popcount(bitmap) - before
        txn.put(key, buf, db=db)
    return stats


def apply_token_delete(txn, db, layout: ChunkLayout, ids: np.ndarray) -> ApplyStats:
    ids = np.unique(ids.astype(np.uint32, copy=False))
    stats = ApplyStats()
    chunks = ids >> layout.shift
    for chunk, s, e in _groups(chunks):
        key = layout.key(chunk)
        old = txn.get(key, db=db)
        if old is None:
            continue
        layout.check(old, chunk)
        buf = bytearray(old)
        rows = np.frombuffer(buf, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)
        bitmap = np.frombuffer(buf, dtype=np.uint8, count=layout.bitmap_bytes, offset=layout.records_bytes)
        slots = (ids[s:e] & layout.mask).astype(np.intp)
        before = popcount(bitmap)
        np.bitwise_and.at(bitmap, slots >> 3, (~(1 << (slots & 7))).astype(np.uint8))
        rows[slots] = 0  # a deleted record leaves no stale bytes behind
        after = popcount(bitmap)
        stats.tokens_removed += before - after
        if after == 0:
            txn.delete(key, db=db)
        else:
            txn.put(key, bytes(buf), db=db)
    return stats


# -- connections (docs/format.md §3: `connections` and its reverse index `conn_by_b`) ---

from .records import CONNECTION_DTYPE, EVENT_DTYPE  # noqa: E402

CONN_DELETE_DTYPE = np.dtype({"names": ["token_a", "token_b", "connection_type"],
                              "formats": ["<u4", "<u4", "u1"], "offsets": [0, 4, 8], "itemsize": 12})
register_op_dtype(OP_CONNECTION_PUT, CONNECTION_DTYPE)
register_op_dtype(OP_CONNECTION_DELETE, CONN_DELETE_DTYPE)
register_op_dtype(OP_EVENT_APPEND, EVENT_DTYPE)
register_op_dtype(OP_EVENT_TRIM, np.dtype('<u8'))

_CONN_KEY = struct.Struct(">IIB")


def conn_key(a: int, b: int, t: int) -> bytes:
    return _CONN_KEY.pack(a, b, t)


def apply_connection_put(txn, db, rdb, records: np.ndarray) -> ApplyStats:
    stats = ApplyStats()
    a = records["token_a"].tolist()
    b = records["token_b"].tolist()
    t = records["connection_type"].tolist()
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(-1, 64)
    added = 0
    for i in range(len(a)):
        key = _CONN_KEY.pack(a[i], b[i], t[i])
        if txn.put(key, raw[i].tobytes(), db=db, overwrite=True) and txn.put(
                _CONN_KEY.pack(b[i], a[i], t[i]), b"", db=rdb, overwrite=False):
            added += 1
    stats.extra["connections_added"] = added
    return stats


def apply_connection_delete(txn, db, rdb, keys: np.ndarray) -> ApplyStats:
    stats = ApplyStats()
    removed = 0
    for a, b, t in zip(keys["token_a"].tolist(), keys["token_b"].tolist(),
                       keys["connection_type"].tolist()):
        if txn.delete(_CONN_KEY.pack(a, b, t), db=db):
            txn.delete(_CONN_KEY.pack(b, a, t), db=rdb)
            removed += 1
    stats.extra["connections_removed"] = removed
    return stats


# -- experience events (`events`: sequence u64 BE -> 128-byte event) --------------------

_SEQ = struct.Struct(">Q")


def apply_event_append(txn, db, events: np.ndarray, next_seq: int, capacity: int,
                       live: int) -> tuple[ApplyStats, int, int]:
    """Appends events with sequence numbers ``next_seq, next_seq+1, ...`` and trims the
    oldest beyond ``capacity``. Returns (stats, new next_seq, new live count)."""
    stats = ApplyStats()
    n = int(events.shape[0])
    rows = np.array(events, dtype=EVENT_DTYPE, copy=True)
    rows["sequence"] = (np.arange(next_seq, next_seq + n, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
    raw = rows.view(np.uint8).reshape(-1, 128)
    first_kept = max(next_seq, next_seq + n - capacity)  # a batch larger than capacity keeps its tail
    for i in range(first_kept - next_seq, n):
        txn.put(_SEQ.pack(next_seq + i), raw[i].tobytes(), db=db, append=True)
    live += n - (first_kept - next_seq)
    next_seq += n
    trimmed = first_kept - (next_seq - n)  # events of this batch dropped at once
    oldest_allowed = next_seq - capacity
    if live > capacity:
        cur = txn.cursor(db=db)
        if cur.first():
            while live > capacity:
                seq = _SEQ.unpack(bytes(cur.key()))[0]
                if seq >= oldest_allowed:
                    break
                cur.delete()
                live -= 1
                trimmed += 1
    stats.extra["events_appended"] = n
    stats.extra["events_trimmed"] = trimmed
    return stats, next_seq, live


# -- reflexes (`reflexes`: b"H" -> table header, b"S" + u32 BE -> segment) ----------------

REFLEX_PUT_DTYPE = np.dtype({"names": ["state", "connection"],
                             "formats": [("<i2", (8, 3)), CONNECTION_DTYPE], "offsets": [0, 48],
                             "itemsize": 112})
REFLEX_DELETE_DTYPE = np.dtype({"names": ["state", "token_a", "token_b", "connection_type", "all"],
                                "formats": [("<i2", (8, 3)), "<u4", "<u4", "u1", "u1"],
                                "offsets": [0, 48, 52, 56, 57], "itemsize": 60})
register_op_dtype(OP_REFLEX_PUT, REFLEX_PUT_DTYPE)
register_op_dtype(OP_REFLEX_DELETE, REFLEX_DELETE_DTYPE)
REFLEX_DELETE_KEY_DTYPE = np.dtype({"names": ["grid_hash", "fingerprint", "token_a", "token_b",
                                              "connection_type", "all"],
                                    "formats": ["<u8", "<u8", "<u4", "<u4", "u1", "u1"],
                                    "offsets": [0, 8, 16, 20, 24, 25], "itemsize": 32})
register_op_dtype(OP_REFLEX_DELETE_KEY, REFLEX_DELETE_KEY_DTYPE)
REFLEX_HEADER_KEY = b"H"


def reflex_segment_key(index: int) -> bytes:
    return b"S" + struct.pack(">I", index)


def apply_event_trim(txn, db, count: int, live: int) -> tuple[int, int]:
    """Removes the ``count`` oldest events; returns (removed, new live count)."""
    removed = 0
    cur = txn.cursor(db=db)
    if cur.first():
        while removed < count and cur.delete():
            removed += 1
    return removed, live - removed
