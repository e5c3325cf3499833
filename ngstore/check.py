"""``Store.check()``: verifies what the store's structures promise each other.

It reads the raw LMDB values rather than going through the read API (a symmetric bug
in writer and reader cannot hide), and checks, for every token chunk: the value
length, that every present record's ``id`` equals its slot's id, that absent slots
hold only zeros, and that the presence bits add up to the stored live count; plus the
known outcomes (the digest map and its order index agree one to one), the
meta database, the checkpoint file and (for a writer) that LMDB has not applied past
the end of the log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .directory import Directory
from .errors import CorruptionError
from .kv import KV, ReadTxn
from .layout import (
    DB_CONN_REVERSE,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_META,
    DB_OUTCOMES,
    DB_TOKENS,
    DIGEST_BYTES,
    M_COUNTERS,
    ORDER_PREFIX,
    OUTCOME_KEY_BYTES,
    OUTCOMES_HEADER_KEY,
    ChunkLayout,
    Counters,
    KnownOutcome,
    OutcomesHeader,
    forward_of_reverse,
    outcome_order_sequence,
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
        _check_outcomes(txn, kv, problems, facts)
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


def _check_outcomes(txn: Any, kv: KV, problems: list[str], facts: dict[str, object]) -> None:
    """The known outcomes (format.md §3.3): every ``K`` entry's sequence has the ``Q``
    entry naming its digest and every ``Q`` entry a ``K`` entry with that sequence; the
    header counts them; every sequence is below the header's next one."""
    db = kv.dbs.get(DB_OUTCOMES)
    if db is None:
        facts["outcome_keys"] = 0
        return
    head = OutcomesHeader()
    by_digest: dict[bytes, int] = {}   # K: digest -> sequence
    by_sequence: dict[int, bytes] = {}  # Q: sequence -> digest
    for raw_key, value in txn.cursor(db=db):
        key = bytes(raw_key)
        try:
            if key == OUTCOMES_HEADER_KEY:
                head = OutcomesHeader.decode(value, "outcomes header")
            elif key[:1] == b"K" and len(key) == OUTCOME_KEY_BYTES:
                by_digest[key[1:]] = KnownOutcome.decode(value, f"outcome {key[1:].hex()}").sequence
            elif key[:1] == ORDER_PREFIX:
                seq = outcome_order_sequence(key)
                if len(value) != DIGEST_BYTES:
                    problems.append(f"outcomes order entry {seq} holds {len(value)} bytes, expected {DIGEST_BYTES}")
                    continue
                by_sequence[seq] = bytes(value)
            else:
                problems.append(f"outcomes key {key.hex()} is none of H, K ‖ digest, Q ‖ sequence")
        except CorruptionError as exc:
            problems.append(str(exc))
    for digest, seq in by_digest.items():
        if by_sequence.get(seq) != digest:
            problems.append(f"outcome {digest.hex()} has sequence {seq}, whose order entry names "
                            f"{by_sequence[seq].hex() if seq in by_sequence else 'nothing'}")
    for seq, digest in by_sequence.items():
        if by_digest.get(digest) != seq:
            problems.append(f"outcomes order entry {seq} names {digest.hex()}, which is not recorded with it")
        if seq >= head.next_seq:
            problems.append(f"outcomes order entry {seq} is not below the next sequence {head.next_seq}")
    if head.held != len(by_digest) or head.held != len(by_sequence):
        problems.append(f"the outcomes header holds {head.held} keys; {len(by_digest)} are recorded and "
                        f"{len(by_sequence)} ordered")
    facts["outcome_keys"] = len(by_digest)
    facts["outcome_keys_forgotten"] = head.forgotten
