"""``Store.check()``: verifies what the store's structures promise each other.

It reads the raw LMDB values rather than going through the read API (a symmetric bug
in writer and reader cannot hide), and checks, for every token chunk: the value
length, that every present record's ``id`` equals its slot's id, that absent slots
hold only zeros, and that the presence bits add up to the stored live count; plus the
meta database, the checkpoint file and (for a writer) that LMDB has not applied past
the end of the log.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .batchops import ChunkLayout
from .errors import CorruptionError
from .kv import CHECKPOINT_FILE, DB_TOKENS, decode_checkpoint

if TYPE_CHECKING:
    from .store import CheckReport, Store


def check_store(store: "Store") -> "CheckReport":
    from .store import CheckReport, _ReadTxn, read_counter

    problems: list[str] = []
    facts: dict[str, object] = {}
    layout: ChunkLayout = store._layout
    kv = store._kv
    with _ReadTxn(kv) as txn:
        live = read_counter(txn, kv, b"tokens_live")
        present = 0
        n_chunks = 0
        db = kv.dbs[DB_TOKENS]
        for key, value in (txn.cursor(db=db) if db is not None else ()):
            n_chunks += 1
            if len(key) != 4:
                problems.append(f"token chunk key of {len(key)} bytes (expected 4)")
                continue
            chunk = ChunkLayout.chunk_of(key)
            try:
                layout.check(value, chunk)
            except CorruptionError as exc:
                problems.append(str(exc))
                continue
            bits = np.unpackbits(layout.bitmap(value), bitorder="little").astype(bool)
            n = int(bits.sum())
            if n == 0:
                problems.append(f"token chunk {chunk} is stored with no present token")
            present += n
            rows = np.frombuffer(value, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)
            ids = rows[:, 48:52].copy().view("<u4").reshape(-1)
            expected = (np.uint64(chunk) << np.uint64(layout.shift)) + np.arange(layout.slots, dtype=np.uint64)
            wrong = bits & (ids.astype(np.uint64) != expected)
            if wrong.any():
                s = int(np.flatnonzero(wrong)[0])
                problems.append(f"token chunk {chunk}: slot {s} holds id {int(ids[s])}, expected "
                                f"{int(expected[s])} ({int(wrong.sum())} such slots)")
            stale = ~bits & rows.any(axis=1)
            if stale.any():
                problems.append(f"token chunk {chunk}: {int(stale.sum())} absent slot(s) hold bytes")
        facts["token_chunks"] = n_chunks
        facts["tokens_present"] = present
        facts["tokens_live_counter"] = live
        if present != live:
            problems.append(f"tokens_live counter is {live} but {present} tokens are present")
        _check_connections(txn, kv, problems, facts)
        _check_events(txn, kv, problems, facts)
    ckpt = os.path.join(store.path, CHECKPOINT_FILE)
    try:
        with open(ckpt, "rb") as f:
            _ps, txnid, applied, _meta = decode_checkpoint(f.read(), ckpt)
        facts["checkpoint_txn"] = txnid
        facts["checkpoint_applied_position"] = applied
        if applied > store._applied:
            problems.append(f"checkpoint claims position {applied} beyond LMDB's {store._applied}")
    except FileNotFoundError:
        problems.append("no checkpoint file")
    except CorruptionError as exc:
        problems.append(str(exc))
    facts["applied_position"] = store._applied
    if store._log is not None:
        facts["log_last_position"] = store._log.last_position
        if store._applied > store._log.last_position:
            problems.append(f"LMDB applied position {store._applied} is past the log's end "
                            f"{store._log.last_position}")
    return CheckReport(ok=not problems, problems=problems, facts=facts)


def _check_connections(txn, kv, problems: list[str], facts: dict[str, object]) -> None:
    from .kv import DB_CONN_REVERSE, DB_CONNECTIONS
    from .store import read_counter

    db, rdb = kv.dbs[DB_CONNECTIONS], kv.dbs[DB_CONN_REVERSE]
    forward = set()
    n = 0
    for key, value in (txn.cursor(db=db) if db is not None else ()):
        key = bytes(key)
        n += 1
        if len(key) != 9 or len(value) != 64:
            problems.append(f"connection entry with a {len(key)}-byte key / {len(value)}-byte value")
            continue
        rec = bytes(value)
        a, b, t = int.from_bytes(key[0:4], "big"), int.from_bytes(key[4:8], "big"), key[8]
        ra, rb, rt = int.from_bytes(rec[0:4], "little"), int.from_bytes(rec[4:8], "little"), rec[8]
        if (a, b, t) != (ra, rb, rt):
            problems.append(f"connection key {(a, b, t)} holds a record of {(ra, rb, rt)}")
        if a > b:
            problems.append(f"connection {(a, b, t)} is not in canonical order")
        forward.add(key)
    reverse = 0
    for key, _value in (txn.cursor(db=rdb) if rdb is not None else ()):
        key = bytes(key)
        reverse += 1
        if key[4:8] + key[0:4] + key[8:9] not in forward:
            problems.append(f"reverse index entry {key.hex()} has no connection")
    if reverse != n:
        problems.append(f"{n} connections but {reverse} reverse index entries")
    live = read_counter(txn, kv, b"connections_live")
    if live != n:
        problems.append(f"connections_live counter is {live} but {n} connections are stored")
    facts["connections"] = n


def _check_events(txn, kv, problems: list[str], facts: dict[str, object]) -> None:
    from .kv import DB_EVENTS
    from .store import read_counter

    db = kv.dbs[DB_EVENTS]
    n = 0
    first = last = None
    for key, value in (txn.cursor(db=db) if db is not None else ()):
        seq = int.from_bytes(bytes(key), "big")
        if len(value) != 128:
            problems.append(f"event {seq} is {len(value)} bytes")
        if last is not None and seq != last + 1:
            problems.append(f"events jump from {last} to {seq}")
        first = seq if first is None else first
        last = seq
        n += 1
    live = read_counter(txn, kv, b"events_live")
    nxt = read_counter(txn, kv, b"events_next_seq")
    if live != n:
        problems.append(f"events_live counter is {live} but {n} events are stored")
    if last is not None and last != nxt - 1:
        problems.append(f"the newest event is {last} but events_next_seq is {nxt}")
    facts["events"] = n
