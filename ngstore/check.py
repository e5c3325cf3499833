"""``Store.check()``: verifies what the store's structures promise each other.

It reads the raw LMDB values rather than going through the read API (a symmetric bug
in writer and reader cannot hide), and checks, for every token chunk: the value
length, that every present record's ``id`` equals its slot's id, that absent slots
hold only zeros, and that the presence bits add up to the stored live count; plus the
meta database, the checkpoint file and (for a writer) that LMDB has not applied past
the end of the log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spatial
from .directory import Directory
from .errors import CorruptionError
from .kv import KV, ReadTxn
from .layout import (
    DB_CONN_REVERSE,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_META,
    DB_SPATIAL,
    DB_TOKENS,
    M_COUNTERS,
    M_SPATIAL,
    SPATIAL_ENTRY_DTYPE,
    ChunkLayout,
    Counters,
    decode_spatial_layers,
    forward_of_reverse,
)


@dataclass
class CheckReport:
    """What ``check()`` found: ``ok`` when ``problems`` is empty; ``facts`` are what it
    counted on the way."""

    ok: bool
    problems: list[str]
    facts: dict[str, Any]

    def __str__(self) -> str:
        lines = [f"check: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        lines += [f"  {k}: {v}" for k, v in self.facts.items()]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def check_store(kv: KV, layout: ChunkLayout, directory: Directory, applied_position: int,
                log_last_position: int | None) -> CheckReport:
    """Checks the store of ``kv`` as of one read transaction; ``log_last_position`` is the
    writer's log end (None for a read-only handle, which has no log)."""
    problems: list[str] = []
    facts: dict[str, object] = {}
    with ReadTxn(kv) as txn:
        try:
            counters = Counters.decode(txn.get(M_COUNTERS, db=kv.dbs[DB_META]), kv.path)
        except CorruptionError as exc:
            problems.append(str(exc))
            counters = Counters()
        live = counters.tokens_live
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
        _check_connections(txn, kv, counters, problems, facts)
        _check_events(txn, kv, counters, problems, facts)
        _check_spatial(txn, kv, layout, problems, facts)
    try:
        ckpt = directory.read_checkpoint()
        if ckpt is None:
            problems.append("no checkpoint file")
        else:
            facts["checkpoint_txn"] = ckpt.txnid
            facts["checkpoint_applied_position"] = ckpt.applied_position
            if ckpt.applied_position > applied_position:
                problems.append(f"checkpoint claims position {ckpt.applied_position} beyond LMDB's "
                                f"{applied_position}")
    except CorruptionError as exc:
        problems.append(str(exc))
    facts["applied_position"] = applied_position
    if log_last_position is not None:
        facts["log_last_position"] = log_last_position
        if applied_position > log_last_position:
            problems.append(f"LMDB applied position {applied_position} is past the log's end "
                            f"{log_last_position}")
    return CheckReport(ok=not problems, problems=problems, facts=facts)


def _check_connections(txn: Any, kv: KV, counters: Counters, problems: list[str],
                       facts: dict[str, object]) -> None:
    db, rdb = kv.dbs[DB_CONNECTIONS], kv.dbs[DB_CONN_REVERSE]
    forward = set()
    n = 0
    for raw_key, value in (txn.cursor(db=db) if db is not None else ()):
        key = bytes(raw_key)
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
    for raw_key, _value in (txn.cursor(db=rdb) if rdb is not None else ()):
        key = bytes(raw_key)
        reverse += 1
        if forward_of_reverse(key) not in forward:
            problems.append(f"reverse index entry {key.hex()} has no connection")
    if reverse != n:
        problems.append(f"{n} connections but {reverse} reverse index entries")
    live = counters.connections_live
    if live != n:
        problems.append(f"connections_live counter is {live} but {n} connections are stored")
    facts["connections"] = n


def _check_events(txn: Any, kv: KV, counters: Counters, problems: list[str], facts: dict[str, object]) -> None:
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
    live = counters.events_live
    nxt = counters.events_next_seq
    if live != n:
        problems.append(f"events_live counter is {live} but {n} events are stored")
    if last is not None and last != nxt - 1:
        problems.append(f"the newest event is {last} but events_next_seq is {nxt}")
    facts["events"] = n


def _check_spatial(txn: Any, kv: KV, layout: ChunkLayout, problems: list[str], facts: dict[str, object]) -> None:
    """The spatial index (format.md §3.3): its page rules, and per indexed layer exactly
    the present tokens' (id, coordinates); no page of a layer that is not indexed."""
    try:
        mask = decode_spatial_layers(txn.get(M_SPATIAL, db=kv.dbs[DB_META]), kv.path)
    except CorruptionError as exc:
        problems.append(str(exc))
        return
    facts["spatial_layers"] = mask
    entries = spatial.read_layers(txn, kv.dbs[DB_SPATIAL], problems)
    facts["spatial_entries"] = sum(int(e.size) for e in entries.values())
    for layer in sorted(set(entries) - set(spatial.layers_of(mask))):
        problems.append(f"the spatial index has pages for layer {layer}, which it does not cover")
    layers = spatial.layers_of(mask)
    if not layers:
        return
    ids_parts, coord_parts = [], []
    db = kv.dbs[DB_TOKENS]
    for key, value in (txn.cursor(db=db) if db is not None else ()):
        if len(key) != 4 or len(value) != layout.value_bytes:
            continue  # reported by the token check
        bits = np.unpackbits(layout.bitmap(value), bitorder="little").astype(bool)
        rows = np.frombuffer(value, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)[bits]
        ids_parts.append(rows[:, 48:52].copy().view("<u4").reshape(-1))
        coord_parts.append(rows[:, :48].copy().view("<i2").reshape(-1, 24))
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.uint32)
    coords = np.concatenate(coord_parts) if coord_parts else np.zeros((0, 24), np.int16)
    order = np.argsort(ids, kind="stable")
    ids, coords = ids[order], coords[order]
    for layer in layers:
        got = entries.get(layer, np.zeros(0, dtype=SPATIAL_ENTRY_DTYPE))
        got = got[np.argsort(got["id"], kind="stable")]
        want = coords[:, 3 * layer:3 * layer + 3]
        same = got.size == ids.size and bool(np.array_equal(got["id"], ids)) and bool(
            np.array_equal(np.stack([got["x"], got["y"], got["z"]], axis=1), want))
        if not same:
            problems.append(f"the spatial index of layer {layer} holds {got.size} entries that do not match "
                            f"the {ids.size} present tokens")
