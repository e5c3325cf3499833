"""Applying logged operations to LMDB: one function for live commits and for replay.

:func:`apply_ops` takes the LMDB write transaction, the writer's :class:`ApplyState` (what
the data needs beyond the transaction: the chunk layout, the retention and reflex
capacities, the counters and the reflex table as they are before the ops) and a list of
``(log position, ops)`` entries in log order. It writes the ops' effects, the new
counters and the last position into the transaction and returns an :class:`ApplyResult`;
it never mutates its inputs, so it can run again from scratch when LMDB asks for a
larger map (``kv.KV.write``). The caller adopts the result only after the transaction
commits.

Applying is deterministic given the state before it (puts overwrite, deletes of absent
ids do nothing, event sequence numbers continue ``events_next_seq``, reflex eviction
follows the table's own tick), and the store never applies a record twice anyway: the
last applied log position is stored in the same transaction (``meta/applied_position``).
A keyed batch (OUTCOME_KEY, format.md §5.2) records its key in ``outcomes`` in that same
transaction, and one whose key is recorded already is skipped whole -- so even a log that
holds a key twice applies it once. The value layouts are ``docs/format.md`` §3 (``layout``); the op bodies §5 (``ops``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import learning, reflex_store
from ._native import chunk_patch
from .errors import CorruptionError
from .layout import (
    CHECKSUM_BYTES,
    DB_CONN_REVERSE,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_LEARN,
    DB_META,
    DB_OUTCOMES,
    DB_REFLEXES,
    DB_SPATIAL,
    DB_TOKENS,
    LEARN_CURSOR_BYTES,
    LEARN_MOMENTS_DTYPE,
    M_APPLIED,
    M_COUNTERS,
    M_REFLEX_CAPACITY,
    M_SPATIAL,
    ORDER_PREFIX,
    OUTCOMES_HEADER_KEY,
    ChunkLayout,
    Counters,
    KnownOutcome,
    LearnCursor,
    OutcomesHeader,
    conn_key,
    conn_reverse_key,
    decode_learn_moments,
    decode_spatial_layers,
    encode_u64,
    event_key,
    event_sequence,
    learn_cursor_key,
    learn_group_key,
    outcome_key,
    outcome_order_key,
    popcount,
    seal,
    seal_meta,
    unseal,
)
from .ops import (
    OP_CONNECTION_DELETE,
    OP_CONNECTION_PUT,
    OP_EVENT_APPEND,
    OP_EVENT_TRIM,
    OP_LEARN_UPDATE,
    OP_OUTCOME_KEY,
    OP_REFLEX_DELETE,
    OP_REFLEX_DELETE_KEY,
    OP_REFLEX_PUT,
    OP_REFLEX_RESIZE,
    OP_TOKEN_DELETE,
    OP_TOKEN_PUT,
    Op,
    batch_key,
)
from .records import EVENT_DTYPE, RAW64, TOKEN_DTYPE
from .reflex import ReflexTable
from .spatial import IndexUpdate

Entry = tuple[int, list[Op]]


@dataclass(frozen=True)
class ApplyState:
    """What applying needs besides the transaction; the writer's state before the ops."""

    layout: ChunkLayout
    event_capacity: int
    reflex_capacity: int
    counters: Counters
    reflexes: ReflexTable | None
    #: ``(db, key, value, region bytes) -> record region`` for values read to be rewritten
    #: (``kv.KV.record`` with ``writing=True``: verifies the checksum when the store's
    #: ``verify`` mode is ``"always"``; a wrong length is always corruption)
    region: Callable[[bytes, bytes, Any, int], Any] = lambda db, key, value, n: unseal(
        db, key, value, n, verify=False)


@dataclass
class ApplyResult:
    """What a group of entries changed, to adopt once the transaction has committed."""

    counters: Counters
    applied_position: int
    #: (first sequence number, events) of each EVENT_APPEND, in order
    appended: list[tuple[int, np.ndarray]] = field(default_factory=list)
    #: log position -> sequence number of the first event its batch appended
    first_event: dict[int, int] = field(default_factory=dict)
    events_trimmed: int = 0
    #: the new reflex table when a reflex op ran (already persisted in the transaction)
    reflexes: ReflexTable | None = None
    reflexes_written: int = 0
    #: reflexes that were new (inserted, or in place of an evicted or replaced one), not upserts
    reflexes_created: int = 0
    reflexes_evicted: int = 0
    #: LEARN_UPDATE folds applied, and those that changed nothing (stale: already folded)
    learn_folds: int = 0
    learn_folds_stale: int = 0
    #: log position -> (reflexes its REFLEX_PUTs pushed out -- the table at capacity, or a
    #: cell's candidates full -- and the index of the first put that did), per batch
    reflex_displaced: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: the reflex capacity after the entries, when a REFLEX_RESIZE set it
    reflex_capacity: int | None = None
    tokens_written: int = 0
    #: bytes of values put into LMDB (what the next checkpoint must make durable)
    bytes_written: int = 0
    #: keyed batches recorded in ``outcomes``, and those skipped as duplicates (positions)
    keys_recorded: int = 0
    duplicates: list[int] = field(default_factory=list)


def apply_ops(txn: Any, dbs: dict[bytes, Any], state: ApplyState, entries: list[Entry]) -> ApplyResult:
    """Applies ``entries`` (non-empty, in log order) in ``txn``; see the module docstring."""
    counters = state.counters.copy()
    result = ApplyResult(counters, entries[-1][0])
    entries = _record_keys(txn, dbs.get(DB_OUTCOMES), entries, counters.events_next_seq, result)
    tokens_db, conn_db, rconn_db = dbs[DB_TOKENS], dbs[DB_CONNECTIONS], dbs[DB_CONN_REVERSE]
    events_db = dbs[DB_EVENTS]
    layout = state.layout
    reflexes: ReflexTable | None = None  # a writable copy, made at the first reflex op
    reflex_capacity = state.reflex_capacity
    index: IndexUpdate | None = None  # the spatial index's changes, made at the first token op
    for position, op in _coalesced(entries):
        kind = op.kind
        if kind == OP_TOKEN_PUT:
            index = _index_before(txn, dbs, layout, index, op.data["id"])
            added, written, chunks = _token_put(txn, tokens_db, layout, op.data, state.region)
            counters.tokens_live += added
            counters.tokens_created_total += added
            result.tokens_written += written
            result.bytes_written += chunks * layout.sealed_bytes
        elif kind == OP_TOKEN_DELETE:
            index = _index_before(txn, dbs, layout, index, op.data)
            removed, chunks = _token_delete(txn, tokens_db, layout, op.data, state.region)
            counters.tokens_live -= removed
            counters.tokens_deleted_total += removed
            result.bytes_written += chunks * layout.sealed_bytes
        elif kind == OP_CONNECTION_PUT:
            added = _connection_put(txn, conn_db, rconn_db, op.data)
            counters.connections_live += added
            counters.connections_created_total += added
            result.bytes_written += op.count * (82 + CHECKSUM_BYTES)
        elif kind == OP_CONNECTION_DELETE:
            counters.connections_live -= _connection_delete(txn, conn_db, rconn_db, op.data)
        elif kind == OP_EVENT_APPEND:
            first = counters.events_next_seq
            result.first_event.setdefault(position, first)
            trimmed = _event_append(txn, events_db, op.data, counters, state.event_capacity)
            result.appended.append((first, op.data))
            result.events_trimmed += trimmed
            result.bytes_written += op.count * (136 + CHECKSUM_BYTES)
        elif kind == OP_EVENT_TRIM:
            removed = _event_trim(txn, events_db, int(op.data.sum()))
            counters.events_live -= removed
            counters.events_trimmed_total += removed
            result.events_trimmed += removed
        elif kind == OP_REFLEX_RESIZE and reflexes is None and state.reflexes is None:
            reflex_capacity = int(op.data[-1])  # no table yet: the first one is made with it
            result.reflex_capacity = reflex_capacity
        elif kind in (OP_REFLEX_PUT, OP_REFLEX_DELETE, OP_REFLEX_DELETE_KEY, OP_REFLEX_RESIZE):
            if reflexes is None:
                reflexes = reflex_store.writable_copy(state.reflexes, reflex_capacity)
            if kind == OP_REFLEX_PUT:
                created, displaced, first = reflex_store.apply_put(reflexes, op.data)
                result.reflexes_created += created
                result.reflexes_written += op.count
                if displaced:
                    before = result.reflex_displaced.get(position, (0, first))
                    result.reflex_displaced[position] = (before[0] + displaced, before[1])
            elif kind == OP_REFLEX_RESIZE:
                reflex_capacity = reflex_store.apply_resize(reflexes, op.data)
                result.reflex_capacity = reflex_capacity
            elif kind == OP_REFLEX_DELETE:
                reflex_store.apply_delete(reflexes, op.data)
            else:
                result.reflexes_evicted += reflex_store.apply_delete_key(reflexes, op.data)
        elif kind == OP_LEARN_UPDATE:
            written = _learn_update(txn, dbs[DB_LEARN], op.data, position, state.region)
            if written:
                result.learn_folds += 1
                result.bytes_written += written
            else:
                result.learn_folds_stale += 1
        else:
            raise CorruptionError(f"log record {position}: unknown op kind {kind}")
    if index is not None:
        index.finish(txn, tokens_db, dbs[DB_SPATIAL])
    meta = dbs[DB_META]
    txn.put(M_COUNTERS, seal_meta(M_COUNTERS, counters.encode()), db=meta)
    if result.reflex_capacity is not None:
        txn.put(M_REFLEX_CAPACITY, seal_meta(M_REFLEX_CAPACITY, encode_u64(result.reflex_capacity)), db=meta)
    if reflexes is not None:
        result.bytes_written += reflex_store.persist(txn, dbs[DB_REFLEXES], reflexes)
        result.reflexes = reflexes
    txn.put(M_APPLIED, seal_meta(M_APPLIED, encode_u64(result.applied_position)), db=meta)
    return result


def _record_keys(txn: Any, db: Any, entries: list[Entry], next_event: int, result: ApplyResult) -> list[Entry]:
    """Records the keys of the keyed entries in ``outcomes`` and returns the entries to
    apply: all but the duplicates, whose key is recorded already (format.md §5.2).

    Entry by entry, in log order, as if each were applied alone: a key forgotten by an
    earlier entry's eviction is new again for a later one, so the result does not depend on
    how entries are grouped into transactions. Keys touch nothing the ops read, so they are
    recorded before the ops are applied; ``first_event`` is computed from the counters
    (each applied EVENT_APPEND numbers its events from ``events_next_seq``)."""
    kept: list[Entry] = []
    head: OutcomesHeader | None = None
    for position, ops in entries:
        # one op that is not a key: unkeyed, and nothing for batch_key to find wrong
        key = batch_key(ops, position) if len(ops) != 1 or ops[0].kind == OP_OUTCOME_KEY else None
        if key is not None:
            digest, remember = key
            if db is None:
                raise CorruptionError(f"log record {position}: a keyed batch, and no outcomes database to record it")
            if head is None:
                head = OutcomesHeader.decode(txn.get(OUTCOMES_HEADER_KEY, db=db), "outcomes header")
            k = outcome_key(digest)
            if txn.get(k, db=db) is not None:
                result.duplicates.append(position)
                continue
            appends = any(op.kind == OP_EVENT_APPEND for op in ops)
            txn.put(k, KnownOutcome(position, head.next_seq, next_event if appends else None).encode(), db=db)
            txn.put(outcome_order_key(head.next_seq), digest, db=db, append=True)
            head = OutcomesHeader(head.next_seq + 1, head.held + 1)
            held = head.held
            if held > remember:
                cur = txn.cursor(db=db)
                while held > remember:  # the oldest first
                    if not cur.set_range(ORDER_PREFIX):
                        raise CorruptionError(f"outcomes: the header holds {held} keys, the order index fewer")
                    oldest = bytes(cur.value())
                    cur.delete()
                    txn.delete(outcome_key(oldest), db=db)
                    held -= 1
                head = OutcomesHeader(head.next_seq, held)
            result.keys_recorded += 1
            result.bytes_written += 80
        kept.append((position, ops))
        for op in ops:  # (a loop: a generator per entry cost more than the rest of it)
            if op.kind == OP_EVENT_APPEND:
                next_event += op.count
    if head is not None:
        txn.put(OUTCOMES_HEADER_KEY, head.encode(), db=db)
    return kept
def _index_before(txn: Any, dbs: dict[bytes, Any], layout: ChunkLayout, index: IndexUpdate | None,
                  ids: np.ndarray) -> IndexUpdate:
    """The group's spatial index update (docs/format.md §3.5; made at the first token op,
    for the layers meta ``spatial_index`` names), told the ids the next op changes."""
    if index is None:
        raw = txn.get(M_SPATIAL, db=dbs[DB_META])
        mask = unseal(DB_META, M_SPATIAL, raw, 8, verify=False) if raw is not None else None
        index = IndexUpdate(decode_spatial_layers(mask, "meta"), layout)
    index.before(txn, dbs[DB_TOKENS], ids)
    return index


def _coalesced(entries: list[Entry]) -> Iterator[tuple[int, Op]]:
    """``(position, op)`` for the ops of ``entries`` in order, with runs of adjacent
    TOKEN_PUT ops (across batches) merged into one, so a group of small commits rewrites
    each chunk once. Same result: within a put the last record of an id wins, and only
    adjacent puts merge, so no delete or other op is reordered. OUTCOME_KEY ops are left
    out (``_record_keys`` records them before, and they touch nothing an op reads): a
    keyed batch between two small puts no longer splits their run, which made each keyed
    one-token commit rewrite its chunk in an apply of its own."""
    run: list[Op] = []
    run_pos = 0
    for position, ops in entries:
        for op in ops:
            if op.kind == OP_TOKEN_PUT:
                run.append(op)
                run_pos = position
                continue
            if op.kind == OP_OUTCOME_KEY:
                continue
            if run:
                yield run_pos, Op(OP_TOKEN_PUT, _concat_records(run))
                run = []
            yield position, op
    if run:
        yield run_pos, Op(OP_TOKEN_PUT, _concat_records(run))


def _concat_records(run: list[Op]) -> np.ndarray:
    """The records of TOKEN_PUT ops concatenated as opaque 64-byte rows (numpy's
    concatenate of a structured dtype is several times slower); one join of their bytes
    when every op has them (a group of small commits: a view per op cost most of its
    apply). Read-only: the apply only reads it."""
    if len(run) == 1:
        return run[0].data
    raws = [op.raw for op in run]
    if None not in raws:
        return np.frombuffer(b"".join(raws), dtype=TOKEN_DTYPE)  # type: ignore[arg-type]
    return np.concatenate([np.ascontiguousarray(op.data).view(RAW64) for op in run]).view(TOKEN_DTYPE)


# -- token chunks ------------------------------------------------------------------------

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
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(chunks[s]), s, e


_SMALL_PUT = 16  # below this many records, plain Python beats numpy's per-call overhead


def _small_token_put(txn: Any, db: Any, layout: ChunkLayout, records: np.ndarray,
                     region: Callable[[bytes, bytes, Any, int], Any]) -> tuple[int, int, int]:
    """The same as the general path, for a handful of records (the common small commit)."""
    raw = np.ascontiguousarray(records).tobytes()
    latest: dict[int, int] = {}
    for i, tid in enumerate(records["id"].tolist()):
        latest[tid] = i  # the last record of an id wins
    by_chunk: dict[int, list[int]] = {}
    for tid in sorted(latest):
        by_chunk.setdefault(tid >> layout.shift, []).append(tid)
    added = 0
    rb = layout.records_bytes
    for chunk, tids in by_chunk.items():
        key = layout.key(chunk)
        old = txn.get(key, db=db)
        if old is not None:
            buf = layout.sealable(region(DB_TOKENS, key, old, layout.region_bytes))
        else:
            buf = layout.new_value()
        for tid in tids:
            slot = tid & layout.mask
            i = latest[tid]
            buf[slot * 64:slot * 64 + 64] = raw[i * 64:i * 64 + 64]
            byte = rb + (slot >> 3)
            bit = 1 << (slot & 7)
            if not buf[byte] & bit:
                buf[byte] |= bit
                added += 1
        txn.put(key, layout.seal(key, buf), db=db)
    return added, len(latest), len(by_chunk)


def _token_put(txn: Any, db: Any, layout: ChunkLayout, records: np.ndarray,
               region: Callable[[bytes, bytes, Any, int], Any]) -> tuple[int, int, int]:
    """Writes token records; returns (ids that became present, records written, chunks
    written). Every chunk is written sealed (format.md §3.0), whatever length it had."""
    if records.shape[0] <= _SMALL_PUT:
        return _small_token_put(txn, db, layout, records, region)
    # the ids copied out once (one pass over the records' lines): the order check and
    # everything after read 4 bytes a token, not a 64-byte line (1M tokens: 15 -> 8 ms)
    ids = np.array(records["id"], dtype=np.uint32)
    records, ids = sort_unique_last(records, ids)
    added = 0
    raw = records.view(np.uint8).reshape(-1, 64) if records.flags.c_contiguous else \
        np.ascontiguousarray(records).view(np.uint8).reshape(-1, 64)
    chunks = ids >> layout.shift
    scratch: bytearray | None = None  # one value buffer reused for every whole chunk
    patched: bytearray | None = None  # and one for every chunk written in part
    n_chunks = 0
    for chunk, s, e in _groups(chunks):
        n_chunks += 1
        key = layout.key(chunk)
        old = txn.get(key, db=db)
        if e - s == layout.slots:  # the whole chunk is replaced: no read-modify-write
            if old is not None:  # only its bitmap is used: a length check, not a verify
                layout.check(old, chunk)
            before = popcount(layout.bitmap(old)) if old is not None else 0
            if scratch is None:
                scratch = layout.new_value()
                scratch[layout.records_bytes:layout.region_bytes] = layout.full_bitmap
            scratch[:layout.records_bytes] = raw[s:e].data  # one copy; LMDB copies it again
            txn.put(key, layout.seal(key, scratch), db=db)
            added += layout.slots - before
            continue
        if patched is None:
            patched = layout.new_value()
        src = region(DB_TOKENS, key, old, layout.region_bytes) if old is not None else None
        added += chunk_patch(patched, layout.shift, raw[s:e], ids[s:e], src)  # the old region, then the rows
        txn.put(key, layout.seal(key, patched), db=db)  # LMDB copies it: the buffer serves the next chunk
    return added, int(ids.size), n_chunks


def _token_delete(txn: Any, db: Any, layout: ChunkLayout, ids: np.ndarray,
                  region: Callable[[bytes, bytes, Any, int], Any]) -> tuple[int, int]:
    """Deletes ids; returns (how many were present, chunks rewritten)."""
    ids = np.unique(ids.astype(np.uint32, copy=False))
    removed = 0
    rewritten = 0
    chunks = ids >> layout.shift
    for chunk, s, e in _groups(chunks):
        key = layout.key(chunk)
        old = txn.get(key, db=db)
        if old is None:
            continue
        rewritten += 1
        buf = layout.sealable(region(DB_TOKENS, key, old, layout.region_bytes))
        rows = np.frombuffer(buf, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)
        bitmap = np.frombuffer(buf, dtype=np.uint8, count=layout.bitmap_bytes, offset=layout.records_bytes)
        slots = (ids[s:e] & layout.mask).astype(np.intp)
        before = popcount(bitmap)
        np.bitwise_and.at(bitmap, slots >> 3, (~(1 << (slots & 7))).astype(np.uint8))
        rows[slots] = 0  # a deleted record leaves no stale bytes behind
        after = popcount(bitmap)
        removed += before - after
        if after == 0:
            txn.delete(key, db=db)
        else:
            txn.put(key, layout.seal(key, buf), db=db)
    return removed, rewritten


# -- connections (`connections` and its reverse index `conn_by_b`) ---------------------------

def _connection_put(txn: Any, db: Any, rdb: Any, records: np.ndarray) -> int:
    """Writes connection records; returns how many keys are new."""
    a = records["token_a"].tolist()
    b = records["token_b"].tolist()
    t = records["connection_type"].tolist()
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(-1, 64)
    added = 0
    for i in range(len(a)):
        key = conn_key(a[i], b[i], t[i])
        if txn.put(key, seal(DB_CONNECTIONS, key, raw[i].tobytes()), db=db, overwrite=True) and txn.put(
                conn_reverse_key(a[i], b[i], t[i]), b"", db=rdb, overwrite=False):
            added += 1
    return added


def _connection_delete(txn: Any, db: Any, rdb: Any, keys: np.ndarray) -> int:
    """Deletes connections by key; returns how many existed."""
    removed = 0
    for a, b, t in zip(keys["token_a"].tolist(), keys["token_b"].tolist(),
                       keys["connection_type"].tolist(), strict=True):
        if txn.delete(conn_key(a, b, t), db=db):
            txn.delete(conn_reverse_key(a, b, t), db=rdb)
            removed += 1
    return removed


# -- experience events (`events`: sequence u64 BE -> 128-byte event) -------------------------

def _event_append(txn: Any, db: Any, events: np.ndarray, counters: Counters, capacity: int) -> int:
    """Appends events numbered from ``counters.events_next_seq`` and trims the oldest
    beyond ``capacity``; updates ``counters``; returns how many events were trimmed."""
    next_seq, live = counters.events_next_seq, counters.events_live
    n = int(events.shape[0])
    rows = np.array(events, dtype=EVENT_DTYPE, copy=True)
    rows["sequence"] = (np.arange(next_seq, next_seq + n, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
    raw = rows.view(np.uint8).reshape(-1, 128)
    first_kept = max(next_seq, next_seq + n - capacity)  # a batch larger than capacity keeps its tail
    for i in range(first_kept - next_seq, n):
        key = event_key(next_seq + i)
        txn.put(key, seal(DB_EVENTS, key, raw[i].tobytes()), db=db, append=True)
    live += n - (first_kept - next_seq)
    trimmed = first_kept - next_seq  # events of this batch dropped at once
    next_seq += n
    oldest_allowed = next_seq - capacity
    if live > capacity:
        cur = txn.cursor(db=db)
        if cur.first():
            while live > capacity:
                if event_sequence(cur.key()) >= oldest_allowed:
                    break
                cur.delete()
                live -= 1
                trimmed += 1
    counters.events_next_seq, counters.events_live = next_seq, live
    counters.events_trimmed_total += trimmed
    return trimmed


def _event_trim(txn: Any, db: Any, count: int) -> int:
    """Removes the ``count`` oldest events; returns how many were removed."""
    removed = 0
    cur = txn.cursor(db=db)
    if cur.first():
        while removed < count and cur.delete():
            removed += 1
    return removed


# -- learning statistics (`learn`: format.md §3.3, §5.1) --------------------------------------

def _learn_update(txn: Any, db: Any, fold: np.ndarray, position: int,
                  region: Callable[[bytes, bytes, Any, int], Any]) -> int:
    """Merges one fold into the stored moments of its binning and moves the cursor;
    returns the bytes written, 0 when the fold is stale (its events are folded already)."""
    where = f"log record {position}"
    bins_per_dim, _first, _end = learning.check_fold(fold)
    ckey = learn_cursor_key(bins_per_dim)
    raw = txn.get(ckey, db=db)
    cursor = LearnCursor.decode(region(DB_LEARN, ckey, raw, LEARN_CURSOR_BYTES), where) if raw is not None \
        else LearnCursor()
    after = learning.next_cursor(cursor, fold)
    if after is None:
        return 0
    live = fold[fold["count"] > 0]
    keys = [learn_group_key(bins_per_dim, b, a) for b, a in zip(live["bin"].tolist(), live["action"].tolist(),
                                                                strict=True)]
    old = np.zeros(len(live), LEARN_MOMENTS_DTYPE)
    for i, key in enumerate(keys):
        value = txn.get(key, db=db)
        if value is not None:
            old[i] = decode_learn_moments(region(DB_LEARN, key, value, LEARN_MOMENTS_DTYPE.itemsize),
                                          f"{where}: learn group {key.hex()}")[0]
    merged = learning.merge_moments(old, learning.fold_moments(live))
    for i, key in enumerate(keys):
        txn.put(key, seal(DB_LEARN, key, merged[i:i + 1].tobytes()), db=db)
    txn.put(ckey, seal(DB_LEARN, ckey, after.encode()), db=db)
    return len(keys) * (LEARN_MOMENTS_DTYPE.itemsize + CHECKSUM_BYTES) + LEARN_CURSOR_BYTES + CHECKSUM_BYTES
