"""The reflex table of a store: versions for lock-free lookups, and how ops apply.

Lookups never take a lock. They run on a :class:`ReflexVersion`, an immutable table:

* at open (and in read-only processes) the version is attached **zero-copy** to the
  LMDB values of one read transaction (a ``kv.ReadLease``), so opening a store with
  a million reflexes costs one ``get`` per segment, not a rebuild;
* a commit that writes reflexes copies the current version into a writable table,
  applies its ops, stores the header and the changed segments in the same LMDB
  transaction as the rest of the batch, and -- only after LMDB committed -- swaps the
  new version in. A lookup already running keeps the old version alive through its
  Python reference; the old version's memory (and lease) go when the last lookup
  holding it returns.

The copy is O(table) per reflex-writing commit. Reflexes are written by consolidation
(a few per analysis cycle), so this is cheap where it matters; a bulk load should put
all its reflexes in one batch.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .errors import NotFoundError
from .kv import KV, ReadLease
from .layout import DB_REFLEXES, REFLEX_HEADER_KEY, reflex_segment_key
from .ops import REFLEX_DELETE_KEY_DTYPE
from .records import CONNECTION_DTYPE, ConnectionFlags, Mutability
from .reflex import ReflexTable, parse_header

UPDATED = 2  # the outcome code of an upsert (``reflex.OUTCOMES``)

COUNTER_NAMES = ("lookups", "hits", "misses", "answers", "collisions", "candidates",
                 "inserts", "updates", "deletes", "evictions", "fallback_answers", "fallback_cells",
                 "fallback_scans", "time_ns", "timed_lookups")


class ReflexVersion:
    """One immutable table for lookups, and whatever keeps its memory valid."""

    __slots__ = ("__weakref__", "table")

    def __init__(self, table: ReflexTable, lease: ReadLease | None = None) -> None:
        self.table = table
        if lease is not None:
            weakref.finalize(self, lease.release)


def attach(kv: KV) -> ReflexVersion | None:
    """The stored table, zero-copy over a fresh read transaction (None if no table)."""
    lease = ReadLease(kv)
    try:
        db = kv.dbs[DB_REFLEXES]
        txn = lease.txn
        assert txn is not None
        hdr = txn.get(REFLEX_HEADER_KEY, db=db) if db is not None else None
        if hdr is None:
            lease.release()
            return None
        # The header is not validated yet (attach does that, with the segments), so its
        # count may be anything up to 2^33: read the segments that are stored, up to the
        # first missing one, and let attach report a count that does not match.
        nseg = parse_header(hdr)["segment_count"]
        segs = []
        for i in range(nseg):
            v = txn.get(reflex_segment_key(i), db=db)
            if v is None:
                break
            segs.append(v)
        table = ReflexTable.attach(hdr, segs, writable=False)
    except BaseException:
        lease.release()
        raise
    return ReflexVersion(table, lease)


def writable_copy(current: ReflexTable | None, capacity: int) -> ReflexTable:
    """A writable copy of ``current`` (a new table of ``capacity`` when there is none)."""
    if current is None:
        return ReflexTable.create(capacity)
    return ReflexTable.attach(current.header(), [bytearray(s) for s in current.all_segments()], writable=True)


def apply_put(table: ReflexTable, data: np.ndarray) -> int:
    """Upserts the reflexes of a REFLEX_PUT; returns how many were created (not updates of
    an existing (cell, identity))."""
    outcomes = table.insert_batch(np.ascontiguousarray(data["state"]), np.ascontiguousarray(data["connection"]))
    return int(np.count_nonzero(outcomes != UPDATED))


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
        state = np.ascontiguousarray(row["state"])  # (8, 3): one state, as ``delete`` takes it
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
    txn.put(REFLEX_HEADER_KEY, header, db=db)
    written = len(header)
    for index, seg in dirty:
        txn.put(reflex_segment_key(index), bytes(seg), db=db)
        written += len(seg)
    return written


def counters(table: ReflexTable | None) -> dict[str, int]:
    """The lookup and write counters of ``table`` (zeros when there is none)."""
    if table is None:
        return dict.fromkeys(COUNTER_NAMES, 0)
    s = table.stats()
    return {k: int(s[k]) for k in COUNTER_NAMES}
