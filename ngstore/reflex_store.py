"""The reflex table of a store: versions for lock-free lookups, and how ops apply.

Lookups never take a lock. They run on the table a ``reflex.Current`` names, an
immutable version:

* at open (and in read-only processes) the version is attached **zero-copy** to the
  LMDB values of one read transaction (a ``kv.ReadLease``), so opening a store with
  a million reflexes costs one ``get`` per segment, not a rebuild. The table itself
  holds the lease: whoever holds the table (an engine, a caller, a lookup running on
  it) keeps its memory valid, after the store's close too, and the lease is released
  when the last of them lets go;
* a commit that writes reflexes copies the current version into a writable table,
  applies its ops, stores the header and the changed segments in the same LMDB
  transaction as the rest of the batch, and -- only after LMDB committed -- names the
  new version in the ``Current``. A lookup already running keeps the old version
  alive through its Python reference.

The copy is O(table) per reflex-writing commit. Reflexes are written by consolidation
(a few per analysis cycle), so this is cheap where it matters; a bulk load should put
all its reflexes in one batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import NotFoundError
from .kv import KV, ReadLease
from .layout import CHECKSUM_BYTES, DB_REFLEXES, REFLEX_HEADER_KEY, reflex_segment_key, seal
from .ops import (
    OP_REFLEX_DELETE,
    OP_REFLEX_DELETE_KEY,
    OP_REFLEX_PUT,
    OP_REFLEX_RESIZE,
    REFLEX_DELETE_KEY_DTYPE,
    REFLEX_KINDS,
    Op,
)
from .records import CONNECTION_DTYPE, ConnectionFlags, Mutability
from .reflex import HEADER_SIZE, INITIAL_ROOM, ReflexTable, grown_room, parse_header, plan_room

#: ``insert_batch`` outcomes from this one on pushed a reflex out: 3 evicted (the table at
#: capacity), 4 replaced (the weakest of a full cell).
DISPLACING_OUTCOME = 3

UPDATED = 2  # the outcome code of an upsert (``reflex.OUTCOMES``)

COUNTER_NAMES = ("lookups", "hits", "misses", "answers", "collisions", "candidates",
                 "inserts", "updates", "deletes", "evictions", "fallback_answers", "fallback_cells",
                 "fallback_scans", "time_ns", "timed_lookups")


def attach(kv: KV, *, verify: bool | None = None) -> ReflexTable | None:
    """The stored table, zero-copy over a fresh read transaction (None if no table); the
    table holds the transaction's lease until it is gone or closed.

    The header and every segment are checked against their checksum trailers
    (format.md §3.0) when ``verify`` says so (None: as the store's ``verify`` mode says
    for a read); the table then reads their record regions."""
    lease = ReadLease(kv)
    try:
        db = kv.dbs[DB_REFLEXES]
        txn = lease.txn
        assert txn is not None
        raw_hdr = txn.get(REFLEX_HEADER_KEY, db=db) if db is not None else None
        if raw_hdr is None:
            lease.release()
            return None
        hdr = kv.record(DB_REFLEXES, REFLEX_HEADER_KEY, raw_hdr, HEADER_SIZE, verify=verify)
        fields = parse_header(hdr)
        # The header is not validated yet (attach does that, with the segments), so its
        # count may be anything up to 2^33: read the segments that are stored, up to the
        # first missing one, and let attach report a count that does not match.
        segs: list[Any] = []
        for i in range(fields["segment_count"]):
            key = reflex_segment_key(i)
            v = txn.get(key, db=db)
            if v is None:
                break
            if not fields["crc_ok"]:
                segs.append(v)  # sizes from a damaged header mean nothing: attach reports it
            else:
                segs.append(kv.record(DB_REFLEXES, key, v, segment_region_bytes(fields, i), verify=verify))
        return ReflexTable.attach(hdr, segs, writable=False, release=lease.release)
    except BaseException:
        lease.release()
        raise


def segment_region_bytes(header: dict[str, Any], index: int) -> int:
    """The record region of segment ``index`` of a table with header fields ``header``
    (``reflex.parse_header``): a record segment or an index segment (format.md §7.3)."""
    if index < header["record_segments"]:
        return int(header["records_per_segment"]) * int(header["record_size"])
    return int(header["entries_per_segment"]) * int(header["entry_size"])


def writable_copy(current: ReflexTable | None, capacity: int) -> ReflexTable:
    """A writable copy of ``current`` (a new table of ``capacity`` when there is none)."""
    if current is None:
        return ReflexTable.create(capacity)
    return ReflexTable.attach(current.header(), [bytearray(s) for s in current.all_segments()], writable=True)


def apply_put(table: ReflexTable, data: np.ndarray) -> tuple[int, int, int]:
    """Upserts the reflexes of a REFLEX_PUT; returns how many were created (not updates of
    an existing (cell, identity)), how many reflexes they pushed out (an eviction at
    capacity, or the weakest of a full cell replaced) and the index of the first put that
    did (0 when none did)."""
    outcomes = table.insert_batch(np.ascontiguousarray(data["state"]), np.ascontiguousarray(data["connection"]))
    pushed = np.flatnonzero(outcomes >= DISPLACING_OUTCOME)
    return int(np.count_nonzero(outcomes != UPDATED)), int(pushed.size), int(pushed[0]) if pushed.size else 0


def apply_resize(table: ReflexTable, data: np.ndarray) -> int:
    """Applies a REFLEX_RESIZE (format §5): the capacity becomes the last item, or the live
    count if that is larger (a resize never drops a reflex). Returns the new capacity."""
    capacity = max(int(data[-1]), len(table), 1)
    table.resize(capacity)
    return capacity


def _identity_record(row: np.void) -> np.ndarray | None:
    """The connection whose identity (token_a, token_b, type) a delete row names, or None
    when the row deletes every reflex of its state."""
    if row["all"]:
        return None
    conn = np.zeros(1, CONNECTION_DTYPE)
    conn["token_a"], conn["token_b"] = row["token_a"], row["token_b"]
    conn["connection_type"] = row["connection_type"]
    return conn


def apply_delete(table: ReflexTable, data: np.ndarray) -> int:
    removed = 0
    for row in data:
        state = np.ascontiguousarray(row["state"], dtype=np.int16).reshape(8, 3)  # one state, not a batch of one
        try:
            removed += table.delete(state, _identity_record(row))
        except NotFoundError:
            pass  # deleting an absent reflex is not an error (idempotent, like tokens)
    return removed


def apply_delete_key(table: ReflexTable, data: np.ndarray) -> int:
    removed = 0
    for row in data:
        try:
            removed += table.delete_key(int(row["grid_hash"]), int(row["fingerprint"]),
                                        _identity_record(row))
        except NotFoundError:
            pass
    return removed


#: A Hypothesis reflex is evicted by the Guardian's cleanup when it has decayed: marked
#: DECAYING, below the confidence at which the original clears ACTIVE (25 ~ 10 %), or not
#: updated for longer than the original's decay period (3600 s).
DECAYED_CONFIDENCE = 25
DECAY_PERIOD_S = 3600


def decayed_hypotheses(table: ReflexTable | None, now: int) -> np.ndarray:
    """Keys of the decayed Hypothesis reflexes (REFLEX_DELETE_KEY rows) of a table."""
    out = np.zeros(0, REFLEX_DELETE_KEY_DTYPE)
    if table is None or len(table) == 0:
        return out
    e = table.entries()
    c = e["connection"]
    decayed = (c["mutability"] == Mutability.HYPOTHESIS) & (
        ((c["flags"] & ConnectionFlags.DECAYING) != 0) | (c["confidence"] < DECAYED_CONFIDENCE)
        | (now - c["last_update"].astype(np.int64) > DECAY_PERIOD_S))
    e, c = e[decayed], c[decayed]
    out = np.zeros(e.shape[0], REFLEX_DELETE_KEY_DTYPE)
    out["grid_hash"], out["fingerprint"] = e["grid_hash"], e["fingerprint"]
    out["token_a"], out["token_b"], out["connection_type"] = c["token_a"], c["token_b"], c["connection_type"]
    return out


def persist(txn: Any, db: Any, table: ReflexTable) -> int:
    """Stores the header and every segment changed since the table's last persist;
    returns the bytes written."""
    header, dirty = table.segments()
    txn.put(REFLEX_HEADER_KEY, seal(DB_REFLEXES, REFLEX_HEADER_KEY, header), db=db)
    written = len(header) + CHECKSUM_BYTES
    for index, seg in dirty:
        key = reflex_segment_key(index)
        txn.put(key, seal(DB_REFLEXES, key, seg), db=db)
        written += len(seg) + CHECKSUM_BYTES
    return written


def counters(table: ReflexTable | None) -> dict[str, int]:
    """The lookup and write counters of ``table`` (zeros when there is none)."""
    if table is None:
        return dict.fromkeys(COUNTER_NAMES, 0)
    s = table.stats()
    return {k: int(s[k]) for k in COUNTER_NAMES}


def stats(table: ReflexTable | None, c: dict[str, int], created: int, capacity: int) -> dict[str, Any]:
    """The reflex part of ``store.stats()``: the table's size (``capacity`` when there is no
    table yet), its counters ``c`` (:func:`counters`) and the reflexes ``created``."""
    return {"reflexes_live": len(table) if table is not None else 0,
            "reflex_capacity": table.capacity if table is not None else capacity,
            "reflex_table_bytes": table.memory_bytes if table is not None else 0,
            "reflex_lookups_total": c["lookups"], "reflex_hits_total": c["hits"],
            "reflex_misses_total": c["misses"], "reflex_collisions_total": c["collisions"],
            "reflex_answers_total": c["answers"], "reflex_evictions_total": c["evictions"],
            "reflexes_created_total": created}


# -- before a write: what a batch's reflex ops will do -------------------------------------

def table_bytes_after(table: ReflexTable | None, capacity: int, ops: list[Op], pending_puts: int = 0) -> int:
    """An upper bound of the table's ``memory_bytes`` once ``ops`` are applied, after
    ``pending_puts`` reflex puts whose op sizes are unknown (the overlay's): every put
    counted as a new reflex and the table growing op by op by its own rule
    (``reflex.grown_room``, ``reflex.plan_room``); the pending puts by the most that rule
    allows for their total (twice the reflexes). 0 when there is no table, nor will be."""
    exists = table is not None
    live = len(table) if table is not None else 0
    room = table.room if table is not None else 0
    if pending_puts:
        if not exists:
            room, exists = plan_room(capacity, INITIAL_ROOM).room, True
        if live + pending_puts > room:
            room = plan_room(capacity, min(capacity, max(room, 2 * (live + pending_puts)))).room
        live = min(capacity, live + pending_puts)
    for op in ops:
        if op.kind == OP_REFLEX_PUT:
            if not exists:
                room, exists = plan_room(capacity, INITIAL_ROOM).room, True
            if live + op.count > room:
                want = grown_room(capacity, room, live + op.count)
                if want is not None:
                    room = plan_room(capacity, want).room
            live = min(capacity, live + op.count)
        elif op.kind == OP_REFLEX_RESIZE:
            capacity = max(int(op.data[-1]), live, 1)
            room = min(capacity, max(room, live, 1)) if exists else room
    return plan_room(capacity, room).memory_bytes if exists else 0


def first_displacing_put(table: ReflexTable | None, capacity: int, earlier: list[Op],
                         ops: list[Op]) -> tuple[int, int] | None:
    """Where the REFLEX_PUTs of ``ops``, applied after the reflex ops ``earlier`` (batches
    ahead of it in the log, not yet applied), would first push a reflex out of the table
    (an eviction at capacity, or the weakest of a full cell replaced): ``(op index, item
    index)``, or None. Exact (``ReflexTable.plan_insert``); nothing is written. Puts alone
    are planned on the table itself; with deletes or resizes among them, on a copy."""
    reflex_ops = [op for op in earlier + ops if op.kind in REFLEX_KINDS]
    if all(op.kind == OP_REFLEX_PUT for op in reflex_ops):
        base = table if table is not None else ReflexTable.create(capacity)
        puts = [op.data for op in reflex_ops]
        if not puts:
            return None
        data = np.concatenate(puts) if len(puts) > 1 else puts[0]
        first = base.plan_insert(np.ascontiguousarray(data["state"]), np.ascontiguousarray(data["connection"]))
        if first.first_eviction is None:
            return None
        i = first.first_eviction - sum(op.count for op in earlier if op.kind == OP_REFLEX_PUT)
        for k, op in enumerate(ops):
            if op.kind == OP_REFLEX_PUT:
                if i < op.count:
                    return (k, max(i, 0))
                i -= op.count
        return None  # pragma: no cover - the first eviction is in ops, by construction
    copy = writable_copy(table, capacity)
    for k, op in enumerate(earlier + ops):
        mine = k >= len(earlier)
        if op.kind == OP_REFLEX_PUT and mine:
            plan = copy.plan_insert(np.ascontiguousarray(op.data["state"]),
                                    np.ascontiguousarray(op.data["connection"]))
            if plan.first_eviction is not None:
                return (k - len(earlier), plan.first_eviction)
        if op.kind == OP_REFLEX_PUT:
            apply_put(copy, op.data)
        elif op.kind == OP_REFLEX_DELETE:
            apply_delete(copy, op.data)
        elif op.kind == OP_REFLEX_DELETE_KEY:
            apply_delete_key(copy, op.data)
        elif op.kind == OP_REFLEX_RESIZE:
            apply_resize(copy, op.data)
    return None
