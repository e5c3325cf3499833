"""``Store.check()``: verifies what the store's structures promise each other.

It reads the raw LMDB values rather than going through the read API (a symmetric bug
in writer and reader cannot hide). Every value of every database is checked against its
checksum trailer (format.md §3.0) whatever the store's ``verify`` mode: a mismatch is a
finding naming the database, the key and the value's offset in data.mdb; a value of the
version-1 length is counted (``values_without_checksum``), not a finding. Then, for every
token chunk: the value length, that every present record's ``id`` equals its slot's id, that absent slots
hold only zeros, and that the presence bits add up to the stored live count; the
connections, their reverse index and the events against each other and the counters;
the learning statistics (format.md §3.3); the spatial index against the present tokens
(format.md §3.5); the known outcomes (format.md §3.6: the digest map and its order index
agree one to one); the reflex table, by its full structural scan in C (format.md §7); the
meta database, the checkpoint file and (for a writer) that LMDB has not applied past the
end of the log.

Damage is a finding, never an exception: each section runs in its own read transaction,
and an error that describes damage (``CorruptionError``, an LMDB error that reports a
corrupted page) ends that section with a finding naming what could not be read, while
the other sections still run. A :class:`Finding` names the file, the database and key
where it applies, the byte offset (in the file; for an LMDB value, where the value lies in
``data.mdb`` when that can be told), and the reason.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import reflex_store, spatial
from .directory import Directory
from .errors import CorruptionError, FormatVersionError
from .kv import KV, ReadTxn
from .layout import (
    CHECKPOINT_FILE,
    DATA_FILE,
    DB_CONN_REVERSE,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_LEARN,
    DB_META,
    DB_OUTCOMES,
    DB_REFLEXES,
    DB_SPATIAL,
    DB_TOKENS,
    DIGEST_BYTES,
    LEARN_CURSOR_BYTES,
    LEARN_CURSOR_KEY_BYTES,
    LEARN_GROUP_KEY_BYTES,
    LEARN_MOMENTS_DTYPE,
    M_COUNTERS,
    M_SPATIAL,
    META_KEYS,
    ORDER_PREFIX,
    OUTCOME_KEY_BYTES,
    OUTCOMES_HEADER_KEY,
    REFLEX_HEADER_KEY,
    SPATIAL_ENTRY_DTYPE,
    ChunkLayout,
    Counters,
    KnownOutcome,
    LearnCursor,
    OutcomesHeader,
    checksum_mismatch,
    decode_learn_moments,
    decode_spatial_layers,
    describe_key,
    forward_of_reverse,
    is_sealed,
    learn_group_key_fields,
    meta_region_bytes,
    outcome_order_sequence,
    reflex_segment_key,
    spatial_region_bytes,
    unseal,
)
from .pages import MAIN
from .records import CONNECTION_DTYPE, EVENT_DTYPE
from .reflex import HEADER_SIZE, parse_header


@dataclass(frozen=True)
class Finding:
    """One problem ``check()`` found.

    ``file`` is relative to the store directory (``data.mdb``, ``checkpoint``, ...);
    ``where`` the LMDB database and key (``tokens chunk 5``) or another place in the
    file; ``offset`` a byte offset in ``file`` (None when it cannot be told)."""

    reason: str
    file: str = DATA_FILE
    where: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        at = f"{self.file}" + (f" [{self.where}]" if self.where else "") + \
            (f" at offset {self.offset}" if self.offset is not None else "")
        return f"{at}: {self.reason}"


@dataclass
class CheckReport:
    """What ``check()`` found: ``ok`` when there are no ``findings``; ``facts`` are what it
    counted on the way; ``problems`` the findings as text."""

    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def problems(self) -> list[str]:
        return [str(f) for f in self.findings]

    def __str__(self) -> str:
        lines = [f"check: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        lines += [f"  {k}: {v}" for k, v in self.facts.items()]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


class _Findings:
    """Collects findings; :meth:`value` places one in a value read from the map."""

    def __init__(self, kv: KV, report: CheckReport) -> None:
        self.kv = kv
        self.report = report
        report.facts["values_verified"] = 0
        report.facts["values_without_checksum"] = 0

    def region(self, db: bytes, key: bytes, value: Any, region_bytes: int, where: str) -> Any | None:
        """The record region of ``value`` once its length and checksum are checked (format.md
        §3.0): a wrong length is a finding and None; a mismatch is a finding, and the region
        is still returned so the structural checks run on what is there."""
        facts = self.report.facts
        try:
            sealed = is_sealed(value, region_bytes)
        except CorruptionError as exc:
            self.value(f"{describe_key(db, key)}: {exc.reason}", where, value)
            return None
        if not sealed:
            facts["values_without_checksum"] += 1
            return value
        facts["values_verified"] += 1
        why = checksum_mismatch(db, key, value, region_bytes)
        if why is not None:
            self.value(why, where, value)
        return memoryview(value)[:region_bytes]

    def add(self, reason: str, where: str | None = None, offset: int | None = None,
            file: str = DATA_FILE) -> None:
        self.report.findings.append(Finding(reason, file, where, offset))

    def value(self, reason: str, where: str, value: Any, at: int = 0) -> None:
        """A finding about byte ``at`` of LMDB value ``value`` (a buffer into the map)."""
        self.add(reason, where, self.value_offset(value, at))

    def value_offset(self, value: Any, at: int = 0) -> int | None:
        start = self.kv.value_offset(value)
        return None if start is None else start + at

    def corruption(self, exc: CorruptionError, where: str) -> None:
        """A CorruptionError raised while checking ``where``, as a finding."""
        file = DATA_FILE
        if exc.path:
            name = os.path.basename(exc.path)
            file = name if exc.path.startswith(self.kv.path) or not os.path.isabs(exc.path) else exc.path
        self.add(exc.reason, where, exc.offset, file)


def check_store(kv: KV, layout: ChunkLayout, directory: Directory, applied_position: int,
                log_last_position: int | None) -> CheckReport:
    """Checks the store of ``kv``; ``log_last_position`` is the writer's log end (None for
    a read-only handle, which has no log). Each section reads in its own transaction."""
    report = CheckReport()
    f = _Findings(kv, report)
    facts = report.facts
    counters: Counters | None = None
    damaged = _check_pages(kv, f, facts)

    def meta(txn: Any) -> None:
        nonlocal counters
        db = kv.dbs[DB_META]
        for raw_key, value in txn.cursor(db=db):
            key = bytes(raw_key)
            if key not in META_KEYS:
                continue  # not a key of this version: nothing to say about its bytes
            where = f"meta {key.decode()}"
            region = f.region(DB_META, key, value, meta_region_bytes(key), where)
            if key == M_COUNTERS:
                try:
                    counters = Counters.decode(region, kv.path)
                except CorruptionError as exc:
                    f.value(exc.reason, "meta counters", value)
        if counters is None and txn.get(M_COUNTERS, db=db) is None:
            f.add("the meta counters are missing", "meta counters")

    sections: list[tuple[str, tuple[bytes, ...], Callable[[Any], None]]] = [
        ("meta", (DB_META,), meta),
        ("tokens", (DB_TOKENS,), lambda txn: _check_tokens(txn, kv, layout, counters, f, facts)),
        ("connections", (DB_CONNECTIONS, DB_CONN_REVERSE),
         lambda txn: _check_connections(txn, kv, counters, f, facts)),
        ("events", (DB_EVENTS,), lambda txn: _check_events(txn, kv, counters, f, facts)),
        ("learn", (DB_LEARN,), lambda txn: _check_learning(txn, kv, counters, f, facts)),
        # reads the token chunks too (the index must hold exactly the present tokens)
        ("spatial", (DB_SPATIAL, DB_TOKENS, DB_META), lambda txn: _check_spatial(txn, kv, layout, f, facts)),
        ("outcomes", (DB_OUTCOMES,), lambda txn: _check_outcomes(txn, kv, f, facts)),
    ]
    skipped = []
    for name, dbs, run in sections:
        # LMDB must not walk damaged pages (it may abort the process): those databases'
        # findings are the page walk's.
        if damaged & ({MAIN} | {db.decode() for db in dbs}):
            skipped.append(name)
            continue
        _section(kv, f, name, run)
    if damaged & {MAIN, DB_REFLEXES.decode()}:
        skipped.append("reflexes")
    else:
        _section(kv, f, "reflexes", lambda txn: _check_reflex_values(txn, kv, f))
        _check_reflexes(kv, f, facts)
    if skipped:
        facts["not_read_for_damaged_pages"] = skipped
    _check_checkpoint(directory, applied_position, f, facts)
    facts["applied_position"] = applied_position
    if log_last_position is not None:
        facts["log_last_position"] = log_last_position
        if applied_position > log_last_position:
            f.add(f"LMDB applied position {applied_position} is past the log's end {log_last_position}",
                  "meta applied_position")
    return report


def _check_pages(kv: KV, f: _Findings, facts: dict[str, Any]) -> set[str]:
    """LMDB's pages, walked without LMDB (``pages``); returns the damaged trees' names."""
    try:
        v = kv.verify_pages()
    except CorruptionError as exc:
        f.corruption(exc, "pages")
        return {MAIN}
    facts["lmdb_pages"] = v.last_pgno + 1
    facts["lmdb_free_pages"] = v.free_pages
    for p in v.problems:
        where = p.tree + (f" page {p.pgno}" if p.pgno is not None else "")
        f.add(p.reason, where, p.offset)
    return v.damaged()


def _section(kv: KV, f: _Findings, name: str, run: Callable[[Any], None]) -> None:
    """Runs one section in a fresh read transaction; damage that stops it is a finding."""
    try:
        with ReadTxn(kv, f"checking the {name} database of") as txn:
            run(txn)
    except CorruptionError as exc:  # LMDB's corrupted-page errors arrive translated to this
        f.corruption(exc, f"{name} (the rest of this database was not checked)")


def _check_tokens(txn: Any, kv: KV, layout: ChunkLayout, counters: Counters | None, f: _Findings,
                  facts: dict[str, Any]) -> None:
    present = 0
    n_chunks = 0
    db = kv.dbs[DB_TOKENS]
    facts["token_chunks"] = 0
    facts["tokens_present"] = 0
    for key, value in (txn.cursor(db=db) if db is not None else ()):
        n_chunks += 1
        facts["token_chunks"] = n_chunks
        if len(key) != 4:
            f.value(f"token chunk key of {len(key)} bytes (expected 4)", f"tokens key {bytes(key).hex()}", value)
            continue
        chunk = ChunkLayout.chunk_of(key)
        where = f"tokens chunk {chunk}"
        stored = value
        value = f.region(DB_TOKENS, bytes(key), stored, layout.region_bytes, where)
        if value is None:
            continue
        bits = np.unpackbits(layout.bitmap(value), bitorder="little").astype(bool)
        n = int(bits.sum())
        if n == 0:
            f.value(f"token chunk {chunk} is stored with no present token", where, stored, layout.records_bytes)
        present += n
        facts["tokens_present"] = present
        rows = np.frombuffer(value, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)
        ids = rows[:, 48:52].copy().view("<u4").reshape(-1)
        expected = (np.uint64(chunk) << np.uint64(layout.shift)) + np.arange(layout.slots, dtype=np.uint64)
        wrong = bits & (ids.astype(np.uint64) != expected)
        if wrong.any():
            slot = int(np.flatnonzero(wrong)[0])
            f.value(f"slot {slot} holds id {int(ids[slot])}, expected {int(expected[slot])} "
                    f"({int(wrong.sum())} such slots)", where, stored, slot * 64 + 48)
        stale = ~bits & rows.any(axis=1)
        if stale.any():
            slot = int(np.flatnonzero(stale)[0])
            f.value(f"{int(stale.sum())} absent slot(s) hold bytes (the first: slot {slot})", where, stored,
                    slot * 64)
    if counters is None:
        return  # the counters could not be read (a finding already)
    live = counters.tokens_live
    facts["tokens_live_counter"] = live
    if present != live:
        f.add(f"tokens_live counter is {live} but {present} tokens are present", "meta counters")
def _check_connections(txn: Any, kv: KV, counters: Counters | None, f: _Findings,
                       facts: dict[str, Any]) -> None:
    db, rdb = kv.dbs[DB_CONNECTIONS], kv.dbs[DB_CONN_REVERSE]
    forward = set()
    n = 0
    for raw_key, value in (txn.cursor(db=db) if db is not None else ()):
        key = bytes(raw_key)
        n += 1
        where = f"connections key {key.hex()}"
        if len(key) != 9:
            f.value(f"a {len(key)}-byte key (expected 9)", where, value)
            continue
        region = f.region(DB_CONNECTIONS, key, value, CONNECTION_DTYPE.itemsize, where)
        if region is None:
            continue
        rec = bytes(region)
        a, b, t = int.from_bytes(key[0:4], "big"), int.from_bytes(key[4:8], "big"), key[8]
        ra, rb, rt = int.from_bytes(rec[0:4], "little"), int.from_bytes(rec[4:8], "little"), rec[8]
        if (a, b, t) != (ra, rb, rt):
            f.value(f"the key {(a, b, t)} holds a record of {(ra, rb, rt)}", where, value)
        if a > b:
            f.value(f"connection {(a, b, t)} is not in canonical order", where, value)
        forward.add(key)
    reverse = 0
    for raw_key, _value in (txn.cursor(db=rdb) if rdb is not None else ()):
        key = bytes(raw_key)
        reverse += 1
        if forward_of_reverse(key) not in forward:
            f.add("a reverse index entry with no connection", f"conn_by_b key {key.hex()}")
    if reverse != n:
        f.add(f"{n} connections but {reverse} reverse index entries", "conn_by_b")
    facts["connections"] = n
    if counters is None:
        return
    live = counters.connections_live
    if live != n:
        f.add(f"connections_live counter is {live} but {n} connections are stored", "meta counters")


def _check_events(txn: Any, kv: KV, counters: Counters | None, f: _Findings, facts: dict[str, Any]) -> None:
    db = kv.dbs[DB_EVENTS]
    n = 0
    first = last = None
    for key, value in (txn.cursor(db=db) if db is not None else ()):
        seq = int.from_bytes(bytes(key), "big")
        region = None
        if len(key) != 8:
            f.value(f"a {len(key)}-byte key (expected 8)", f"events key {bytes(key).hex()}", value)
        else:
            region = f.region(DB_EVENTS, bytes(key), value, EVENT_DTYPE.itemsize, f"events {seq}")
        if region is None:
            pass
        elif int.from_bytes(bytes(region[_EVENT_SEQUENCE_OFF:_EVENT_SEQUENCE_OFF + 4]), "little") != seq & 0xFFFFFFFF:
            f.value(f"event {seq} holds the record of another sequence number", f"events {seq}", value,
                    _EVENT_SEQUENCE_OFF)
        if last is not None and seq != last + 1:
            f.add(f"events jump from {last} to {seq}", f"events {seq}")
        first = seq if first is None else first
        last = seq
        n += 1
    facts["events"] = n
    if counters is None:
        return
    live = counters.events_live
    nxt = counters.events_next_seq
    if live != n:
        f.add(f"events_live counter is {live} but {n} events are stored", "meta counters")
    if last is not None and last != nxt - 1:
        f.add(f"the newest event is {last} but events_next_seq is {nxt}", "meta counters")


def _check_outcomes(txn: Any, kv: KV, f: _Findings, facts: dict[str, Any]) -> None:
    """The known outcomes (format.md §3.6): every ``K`` entry's sequence has the ``Q``
    entry naming its digest and every ``Q`` entry a ``K`` entry with that sequence; the
    header counts them; every sequence is below the header's next one."""
    db = kv.dbs.get(DB_OUTCOMES)
    facts["outcome_keys"] = 0
    if db is None:  # a read-only handle of a store from before the database existed
        return
    head = OutcomesHeader()
    by_digest: dict[bytes, int] = {}   # K: digest -> sequence
    by_sequence: dict[int, bytes] = {}  # Q: sequence -> digest
    for raw_key, value in txn.cursor(db=db):
        key = bytes(raw_key)
        where = f"outcomes key {key.hex()}"
        try:
            if key == OUTCOMES_HEADER_KEY:
                head = OutcomesHeader.decode(value, "outcomes header")
            elif key[:1] == b"K" and len(key) == OUTCOME_KEY_BYTES:
                by_digest[key[1:]] = KnownOutcome.decode(value, f"outcome {key[1:].hex()}").sequence
            elif key[:1] == ORDER_PREFIX:
                seq = outcome_order_sequence(key)
                if len(value) != DIGEST_BYTES:
                    f.value(f"order entry {seq} holds {len(value)} bytes, expected {DIGEST_BYTES}", where, value)
                    continue
                by_sequence[seq] = bytes(value)
            else:
                f.value("a key that is none of H, K ‖ digest, Q ‖ sequence", where, value)
        except CorruptionError as exc:
            f.value(exc.reason, where, value)
    for digest, seq in by_digest.items():
        if by_sequence.get(seq) != digest:
            f.add(f"outcome {digest.hex()} has sequence {seq}, whose order entry names "
                  f"{by_sequence[seq].hex() if seq in by_sequence else 'nothing'}", "outcomes")
    for seq, digest in by_sequence.items():
        if by_digest.get(digest) != seq:
            f.add(f"order entry {seq} names {digest.hex()}, which is not recorded with it", "outcomes")
        if seq >= head.next_seq:
            f.add(f"order entry {seq} is not below the next sequence {head.next_seq}", "outcomes")
    if head.held != len(by_digest) or head.held != len(by_sequence):
        f.add(f"the outcomes header holds {head.held} keys; {len(by_digest)} are recorded and "
              f"{len(by_sequence)} ordered", "outcomes header")
    facts["outcome_keys"] = len(by_digest)
    facts["outcome_keys_forgotten"] = head.forgotten


def _check_learning(txn: Any, kv: KV, counters: Counters | None, f: _Findings, facts: dict[str, Any]) -> None:
    """The ``learn`` database (format.md §3.3): key and value lengths, every group's count
    >= 1 with finite moments and m2 >= 0, per binning a cursor whose ``events_counted`` is
    the sum of its groups' counts and whose ``next_seq`` no event counter has passed."""
    db = kv.dbs.get(DB_LEARN)
    if db is None:  # a read-only handle of a store from before the database existed
        return
    cursors: dict[int, LearnCursor] = {}
    counted: dict[int, int] = {}
    groups = 0
    for raw_key, value in txn.cursor(db=db):
        key = bytes(raw_key)
        where = f"learn key {key.hex()}"
        try:
            if len(key) == LEARN_CURSOR_KEY_BYTES and key[:1] == b"C":
                region = f.region(DB_LEARN, key, value, LEARN_CURSOR_BYTES, where)
                if region is not None:
                    cursors[int.from_bytes(key[1:3], "big")] = LearnCursor.decode(region, f"learn cursor {key.hex()}")
                continue
            if len(key) != LEARN_GROUP_KEY_BYTES or key[:1] != b"S":
                f.value("neither a cursor nor a group key", where, value)
                continue
            bins_per_dim, _bin, _action = learn_group_key_fields(key)
            region = f.region(DB_LEARN, key, value, LEARN_MOMENTS_DTYPE.itemsize, where)
            if region is None:
                continue
            m = decode_learn_moments(region, f"learn group {key.hex()}")[0]
        except CorruptionError as exc:
            f.value(exc.reason, where, value)
            continue
        groups += 1
        floats = np.concatenate([[m["mean"], m["m2"]], m["action_mean"], m["state_mean"]])
        if int(m["count"]) < 1 or not np.isfinite(floats).all() or m["m2"] < 0:
            f.value(f"count {int(m['count'])}, mean {m['mean']}, m2 {m['m2']}: a group needs count >= 1, "
                    "finite moments and m2 >= 0", where, value)
        counted[bins_per_dim] = counted.get(bins_per_dim, 0) + int(m["count"])
    for b in sorted(set(cursors) | set(counted)):
        c = cursors.get(b)
        where = f"learn binning B={b}"
        if c is None:
            f.add("the binning has groups but no cursor", where)
            continue
        if counted.get(b, 0) != c.events_counted:
            f.add(f"its groups count {counted.get(b, 0)} events but its cursor says {c.events_counted}", where)
        if c.events_counted + c.events_missed > c.next_seq:
            f.add(f"cursor {c} counts more events than it has folded", where)
        if counters is not None and c.next_seq > counters.events_next_seq:
            f.add(f"cursor {c} is past the {counters.events_next_seq} events written", where)
    facts["learn_groups"] = groups
    facts["learn_binnings"] = len(cursors)


def _check_reflex_values(txn: Any, kv: KV, f: _Findings) -> None:
    """The checksums of the reflex table's header and of each of its segments (format.md
    §3.0); values past the header's segment count are left over from a larger table and
    never read, so they are not checked."""
    db = kv.dbs.get(DB_REFLEXES)
    raw = txn.get(REFLEX_HEADER_KEY, db=db) if db is not None else None
    if raw is None:
        return
    header = f.region(DB_REFLEXES, REFLEX_HEADER_KEY, raw, HEADER_SIZE, "reflexes header")
    if header is None:
        return
    fields = parse_header(header)
    if not fields["crc_ok"]:
        return  # the structural check reports the header; its segment sizes mean nothing
    for i in range(fields["segment_count"]):
        key = reflex_segment_key(i)
        value = txn.get(key, db=db)
        if value is not None:  # a missing segment: the structural check reports it
            f.region(DB_REFLEXES, key, value, reflex_store.segment_region_bytes(fields, i), f"reflexes segment {i}")
def _check_spatial(txn: Any, kv: KV, layout: ChunkLayout, f: _Findings, facts: dict[str, Any]) -> None:
    """The spatial index (format.md §3.5): its page rules, and per indexed layer exactly
    the present tokens' (id, coordinates); no page of a layer that is not indexed."""
    value = txn.get(M_SPATIAL, db=kv.dbs[DB_META])
    try:  # its checksum: the meta section's
        mask = decode_spatial_layers(None if value is None else unseal(DB_META, M_SPATIAL, value, 8, verify=False),
                                     kv.path)
    except CorruptionError as exc:
        f.value(exc.reason, "meta spatial_index", value)
        return
    facts["spatial_layers"] = mask

    def page_problem(reason: str, key: bytes, page: Any) -> None:
        f.value(reason, f"spatial key {key.hex()}", page)

    def page_region(key: bytes, page: Any) -> Any:
        return f.region(DB_SPATIAL, key, page, spatial_region_bytes(page), f"spatial key {key.hex()}")

    entries = spatial.read_layers(txn, kv.dbs.get(DB_SPATIAL), page_problem, page_region)
    facts["spatial_entries"] = sum(int(e.size) for e in entries.values())
    layers = spatial.layers_of(mask)
    for layer in sorted(set(entries) - set(layers)):
        f.add(f"the spatial index has pages for layer {layer}, which it does not cover", f"spatial layer {layer}")
    if not layers:
        return
    ids_parts, coord_parts = [], []
    db = kv.dbs[DB_TOKENS]
    for key, chunk in (txn.cursor(db=db) if db is not None else ()):
        if len(key) != 4 or len(chunk) not in (layout.region_bytes, layout.sealed_bytes):
            continue  # reported by the token section
        bits = np.unpackbits(layout.bitmap(chunk), bitorder="little").astype(bool)
        rows = np.frombuffer(chunk, dtype=np.uint8, count=layout.records_bytes).reshape(-1, 64)[bits]
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
            f.add(f"the spatial index of layer {layer} holds {got.size} entries that do not match "
                  f"the {ids.size} present tokens", f"spatial layer {layer}")


def _check_reflexes(kv: KV, f: _Findings, facts: dict[str, Any]) -> None:
    """The stored reflex table: attached as a reader would, then C's full structural scan
    (records, index, Robin Hood order, the box, the live count)."""
    try:
        table = reflex_store.attach(kv, verify=False)  # the checksums: _check_reflex_values
        if table is None:
            facts["reflexes"] = 0
            return
        try:
            table.check()
            facts["reflexes"] = len(table)
        finally:
            table.close()  # releases its read transaction
    except CorruptionError as exc:
        f.add(exc.reason, f"reflexes: {exc.path}" if exc.path else "reflexes", None)


def _check_checkpoint(directory: Directory, applied_position: int, f: _Findings, facts: dict[str, Any]) -> None:
    try:
        ckpt = directory.read_checkpoint()
    except CorruptionError as exc:
        f.add(exc.reason, None, exc.offset, CHECKPOINT_FILE)
        return
    except FormatVersionError as exc:  # a version this code does not read: described, not raised
        f.add(str(exc), None, 8, CHECKPOINT_FILE)
        return
    if ckpt is None:
        f.add("no checkpoint file", None, None, CHECKPOINT_FILE)
        return
    facts["checkpoint_txn"] = ckpt.txnid
    facts["checkpoint_applied_position"] = ckpt.applied_position
    if ckpt.applied_position > applied_position:
        f.add(f"the checkpoint claims position {ckpt.applied_position} beyond LMDB's {applied_position}",
              None, None, CHECKPOINT_FILE)


#: Where an ExperienceEvent holds its sequence number (format.md §2.3).
_EVENT_SEQUENCE_OFF: int = dict(EVENT_DTYPE.fields or {})["sequence"][1]
