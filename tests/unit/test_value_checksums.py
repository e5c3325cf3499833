"""Value checksums (docs/format.md §3.0): every LMDB value ends in an XXH3-64 trailer over
its record region and key, seeded per database.

These tests damage stored values with lmdb directly (byte surgery beside the store, not
through it), then ask ``check()`` and the readers: a flipped bit is a finding naming the
database, the key and the value's offset in data.mdb; a read under ``verify="read"``
raises CorruptionError naming the same; ``verify="off"`` reads the bytes as they are; a
value of the version-1 length reads unverified and is counted, never a finding.
"""
from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import lmdb
import numpy as np
import pytest
from conftest import make_tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ngstore
from ngstore import layout
from ngstore.analysis import fold_events
from ngstore.connections import Connection
from ngstore.errors import CorruptionError, InvalidArgumentError, NgStoreError
from ngstore.experience import new_events
from ngstore.layout import (
    CHECKSUM_BYTES,
    DB_CONNECTIONS,
    DB_EVENTS,
    DB_LEARN,
    DB_META,
    DB_REFLEXES,
    DB_SPATIAL,
    DB_TOKENS,
    SEALED_DBS,
    ChunkLayout,
)

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30,
            verify="read")
OFF = dict(OPEN, verify="off")
ALWAYS = dict(OPEN, verify="always")
SLOTS = 64
CHUNK = ChunkLayout(SLOTS)


def _events(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    ev = new_events(n, event_type=rng.integers(0, 3, n))
    ev["state"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
    ev["reward_goal"] = rng.uniform(0, 1, n).astype(np.float32)
    return ev


def _make_store(path: str) -> None:
    """A store with a value in every sealed database."""
    with ngstore.open(path, chunk_slots=SLOTS, spatial_index=True, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(SLOTS * 5)))
        c = Connection(1, 2)
        c.pull_strength = 1.0
        c.confidence_raw = 230
        c.evidence_count = 20
        s.put_connections([c, Connection(3, 9)])
        s.write_events(_events(50))
        with s.batch() as b:
            b.update_learning(fold_events(_events(50), 4, 0, 50))
            b.put_reflexes(np.random.default_rng(0).uniform(-1, 1, (12, 8)).astype(np.float32),
                           np.concatenate([c.record] * 12))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("pristine") / "s")
    _make_store(path)
    return path


@pytest.fixture
def path(pristine: str, tmp_path: Any) -> str:
    """A fresh copy of the pristine store (closed cleanly: its files are all there is)."""
    out = str(tmp_path / "s")
    os.mkdir(out, 0o700)
    for name in os.listdir(pristine):
        src = os.path.join(pristine, name)
        if os.path.isfile(src):
            with open(src, "rb") as f, open(os.path.join(out, name), "wb") as g:
                g.write(f.read())
    os.mkdir(os.path.join(out, "wal"), 0o700)
    for name in os.listdir(os.path.join(pristine, "wal")):
        with open(os.path.join(pristine, "wal", name), "rb") as f, open(os.path.join(out, "wal", name), "wb") as g:
            g.write(f.read())
    return out


def _surgery(path: str, db: bytes, change: Callable[[Any, Any], None]) -> None:
    gc.collect()
    env = lmdb.open(path, max_dbs=32, map_size=1 << 30)
    try:
        with env.begin(write=True, db=env.open_db(db)) as txn:
            change(txn, env.open_db(db, txn=txn))
    finally:
        env.close()


def _flip(path: str, db: bytes, key: bytes, bit: int) -> bytes:
    """Flips bit ``bit`` of the stored value of ``key``; returns the damaged value."""
    out: list[bytes] = []

    def change(txn: Any, handle: Any) -> None:
        v = bytearray(txn.get(key, db=handle))
        v[bit >> 3] ^= 1 << (bit & 7)
        txn.put(key, bytes(v), db=handle)
        out.append(bytes(v))

    _surgery(path, db, change)
    return out[0]


def _stored(path: str, db: bytes, key: bytes) -> bytes:
    """The stored value, read by lmdb in a child process (this one may still hold the
    environment: LMDB refuses to open it twice in a process)."""
    code = ("import lmdb, sys; env = lmdb.open(sys.argv[1], max_dbs=32, readonly=True, lock=False); "
            "txn = env.begin(db=env.open_db(bytes.fromhex(sys.argv[2]), create=False)); "
            "sys.stdout.write(bytes(txn.get(bytes.fromhex(sys.argv[3]))).hex())")
    out = subprocess.run([sys.executable, "-c", code, path, db.hex(), key.hex()], capture_output=True, text=True,
                         check=True, timeout=60)
    return bytes.fromhex(out.stdout)


def _offset_in_file(path: str, value: bytes) -> int:
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        data = f.read()
    at = data.find(value)
    assert at >= 0 and data.find(value, at + 1) < 0, "the damaged value must be in data.mdb once"
    return at


# Each case: database, key, the record region's length, a bit inside the region to flip.
CASES = {
    "token chunk": (DB_TOKENS, CHUNK.key(2), CHUNK.region_bytes, (5 * 64 + 54) * 8 + 3),  # slot 5's weight
    "token presence bit": (DB_TOKENS, CHUNK.key(1), CHUNK.region_bytes, CHUNK.records_bytes * 8 + 9),
    "connection": (DB_CONNECTIONS, layout.conn_key(1, 2, int(Connection(1, 2).connection_type)), 64,
                   16 * 8 + 30),  # pull_strength
    "event": (DB_EVENTS, layout.event_key(7), 128, 40 * 8 + 1),  # state[0]
    "meta counters": (DB_META, layout.M_COUNTERS, 64, 0),
    "meta applied position": (DB_META, layout.M_APPLIED, 8, 2),
    "learn cursor": (DB_LEARN, layout.learn_cursor_key(4), 32, 8 * 8 + 1),
    "reflex header": (DB_REFLEXES, layout.REFLEX_HEADER_KEY, 256, 200 * 8),
    "reflex segment": (DB_REFLEXES, layout.reflex_segment_key(0), None, 64 * 8 + 17),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bit_flip_in_any_stored_record_is_a_check_finding_naming_key_and_offset(path, case):
    db, key, region, bit = CASES[case]
    with ngstore.open(path, readonly=True, **OPEN) as s:
        before = s.check()
    assert before.ok, before
    assert before.facts["values_verified"] > 0 and before.facts["values_without_checksum"] == 0
    damaged = _flip(path, db, key, bit)
    if region is not None:
        assert len(damaged) == region + CHECKSUM_BYTES
    if case == "reflex header":  # its own CRC (format.md §7.2) refuses every open first
        with pytest.raises(CorruptionError, match="reflex table: header CRC mismatch"):
            ngstore.open(path, readonly=True, **OFF)
        return
    with ngstore.open(path, readonly=True, **OFF) as s:
        report = s.check()  # check() verifies whatever the handle's mode
    hits = [f for f in report.findings if f"{layout.describe_key(db, key)}: checksum mismatch" in f.reason]
    assert len(hits) == 1, report
    assert hits[0].file == "data.mdb"
    assert hits[0].offset == _offset_in_file(path, damaged)


def _read_all(s: ngstore.Store) -> None:
    with s.snapshot() as snap:
        snap.tokens.to_array()
        snap.tokens.column("weight")
        snap.tokens.get(np.arange(SLOTS * 5))
        snap.connections.to_array()
        snap.events.since(0)
    s.learning_statistics(4)


def _in_snapshot(read: Callable[[Any], Any]) -> Callable[[ngstore.Store], Any]:
    def run(s: ngstore.Store) -> Any:
        with s.snapshot() as snap:
            return read(snap)
    return run


READS: dict[str, Callable[[ngstore.Store], Any]] = {
    "get_token": lambda s: s.get_token(2 * SLOTS + 5),
    "get_tokens": lambda s: s.get_tokens([3, 2 * SLOTS + 9]),
    "contains": lambda s: (2 * SLOTS + 63) in s,
    "chunks": _in_snapshot(lambda snap: [a.copy() for _f, a in snap.tokens.chunks()]),
    "to_array": _in_snapshot(lambda snap: snap.tokens.to_array()),
    "column": _in_snapshot(lambda snap: snap.tokens.column("weight")),
    "mapped_runs": _in_snapshot(lambda snap: snap.tokens.mapped_runs()),
    "ids": _in_snapshot(lambda snap: snap.tokens.ids()),
    "presence": _in_snapshot(lambda snap: snap.tokens.presence([2 * SLOTS])),
}


@pytest.mark.parametrize("read", sorted(READS))
def test_every_token_read_of_a_flipped_chunk_raises_naming_key_and_offset_under_verify_read(path, read):
    db, key, _region, bit = CASES["token chunk"]
    damaged = _flip(path, db, key, bit)
    with ngstore.open(path, readonly=True, **OPEN) as s:
        assert s.options.verify == "read" and ngstore.Options().verify == "off"  # the default: see api.md
        with pytest.raises(CorruptionError) as exc:
            READS[read](s)
    err = exc.value
    assert f"token chunk 2 (tokens key {key.hex()}): checksum mismatch" in err.reason
    assert err.path is not None and err.path.endswith("data.mdb")
    assert err.offset == _offset_in_file(path, damaged)


def test_verify_off_reads_the_flipped_bytes_as_they_are(path):
    db, key, _region, bit = CASES["token chunk"]
    _flip(path, db, key, bit)
    with ngstore.open(path, readonly=True, **OPEN) as s:
        good = make_tokens(np.arange(SLOTS * 5))[2 * SLOTS + 5]
    with ngstore.open(path, readonly=True, **OFF) as s:
        got = s.get_tokens([2 * SLOTS + 5]).data[0]
        assert got.tobytes() != good.tobytes()  # the flipped weight, unverified
        _read_all(s)


@pytest.mark.parametrize("case", ["connection", "event", "learn cursor"])
def test_record_reads_of_a_flipped_value_raise_under_verify_read(path, case):
    db, key, _region, bit = CASES[case]
    damaged = _flip(path, db, key, bit)
    read: Callable[[ngstore.Store], Any] = {
        "connection": lambda s: s.get_connection(1, 2),
        "event": _in_snapshot(lambda snap: snap.events.since(0)),
        "learn cursor": lambda s: s.learning_statistics(4),
    }[case]
    with ngstore.open(path, readonly=True, **OPEN) as s:
        with pytest.raises(CorruptionError) as exc:
            read(s)
        assert exc.value.offset == _offset_in_file(path, damaged)
        assert f"{db.decode()} key {key.hex()}" in exc.value.reason
    with ngstore.open(path, readonly=True, **OFF) as s:
        read(s)


def test_connection_neighbours_verify_each_record_they_copy(path):
    _flip(path, *CASES["connection"][:2], CASES["connection"][3])
    with ngstore.open(path, readonly=True, **OPEN) as s, s.snapshot() as snap:
        with pytest.raises(CorruptionError, match="connections key"):
            snap.connections.neighbors(2, "in")  # through the reverse index
        with pytest.raises(CorruptionError, match="connections key"):
            snap.connections.to_array()
        assert len(snap.connections.neighbors(3)) == 1  # the intact one still reads


def test_a_flipped_meta_value_or_reflex_segment_refuses_the_open_under_verify_read(path):
    _flip(path, *CASES["reflex segment"][:2], CASES["reflex segment"][3])
    with pytest.raises(CorruptionError, match="reflexes key"):
        ngstore.open(path, readonly=True, **OPEN)
    ngstore.open(path, readonly=True, **OFF).close()


def test_verify_always_checks_the_chunk_a_write_rewrites(path):
    db, key, _region, bit = CASES["token chunk"]
    _flip(path, db, key, bit)
    s = ngstore.open(path, **ALWAYS)
    s.put_tokens(make_tokens([2 * SLOTS + 1], weight=5.0))  # logged; LMDB gets it when applied
    # waits for the apply, which read the chunk to rewrite it: the writer stops (and says why)
    with pytest.raises(NgStoreError, match=r"token chunk 2 \(tokens key 00000002\): checksum mismatch"):
        s.count()
    with contextlib.suppress(NgStoreError):
        s.close()
    assert len(_stored(path, DB_TOKENS, key)) == CHUNK.sealed_bytes
    with ngstore.open(path, readonly=True, **OFF) as r:
        assert r.get_token(2 * SLOTS + 1).weight != 5.0  # the damaged chunk was not rewritten


def test_verify_must_name_a_mode():
    with pytest.raises(InvalidArgumentError, match="verify"):
        ngstore.Options(verify="sometimes")


# -- values of format version 1 -------------------------------------------------------------

def _strip_trailers(path: str) -> int:
    """Rewrites every sealed value as version 1 wrote it (the record region alone) and marks
    the store version 1; returns how many values it stripped."""
    regions = {DB_TOKENS: lambda k, v: CHUNK.region_bytes, DB_CONNECTIONS: lambda k, v: 64,
               DB_EVENTS: lambda k, v: 128, DB_META: lambda k, v: layout.meta_region_bytes(k),
               DB_LEARN: lambda k, v: len(v) - CHECKSUM_BYTES, DB_REFLEXES: lambda k, v: len(v) - CHECKSUM_BYTES,
               DB_SPATIAL: lambda k, v: len(v) - CHECKSUM_BYTES}
    n = 0
    env = lmdb.open(path, max_dbs=32, map_size=1 << 30)
    try:
        for db in SEALED_DBS:
            with env.begin(write=True) as txn:
                handle = env.open_db(db, txn=txn)
                for k, v in list(txn.cursor(db=handle)):
                    if db == DB_META and k not in layout.META_KEYS:
                        continue
                    txn.put(k, v[:regions[db](k, v)], db=handle)
                    n += 1
        with env.begin(write=True, db=env.open_db(DB_META)) as txn:
            txn.put(layout.M_FORMAT, layout.encode_u64(1))
    finally:
        env.close()
    with open(os.path.join(path, layout.MARKER_FILE), "wb") as f:
        f.write(layout.encode_marker(1))
    return n


def test_a_version_1_store_reads_unverified_counts_its_values_and_seals_what_a_writer_rewrites(path):
    n = _strip_trailers(path)
    with ngstore.open(path, readonly=True, **OPEN) as r:  # a reader never upgrades
        assert r.stats()["format_version"] == 1
        report = r.check()
        assert report.ok, report
        assert report.facts["values_without_checksum"] == n and report.facts["values_verified"] == 0
        assert len(r.get_tokens(np.arange(SLOTS * 5))) == SLOTS * 5
        _read_all(r)
    assert len(_stored(path, DB_TOKENS, CHUNK.key(0))) == CHUNK.region_bytes
    with ngstore.open(path, **OPEN) as w:  # upgrades: marker, then meta
        w.put_tokens(make_tokens([1], weight=2.0))  # rewrites chunk 0
        w.write_events(_events(1))
        report = w.check()
        assert report.ok, report
        assert 0 < report.facts["values_without_checksum"] < n
    assert len(_stored(path, DB_TOKENS, CHUNK.key(0))) == CHUNK.sealed_bytes
    assert len(_stored(path, DB_TOKENS, CHUNK.key(1))) == CHUNK.region_bytes  # untouched: as it was
    assert len(_stored(path, DB_EVENTS, layout.event_key(50))) == 128 + CHECKSUM_BYTES
    assert len(_stored(path, DB_META, layout.M_COUNTERS)) == 64 + CHECKSUM_BYTES
    with ngstore.open(path, readonly=True, **OPEN) as r:
        assert r.get_token(1).weight == 2.0 and r.stats()["format_version"] == 2
        _read_all(r)


def test_a_value_of_neither_length_is_corruption_for_readers_and_a_finding_for_check(path):
    key = CHUNK.key(3)
    _surgery(path, DB_TOKENS, lambda txn, h: txn.put(key, bytes(txn.get(key, db=h))[:-1], db=h))
    with ngstore.open(path, readonly=True, **OFF) as s:
        with pytest.raises(CorruptionError, match=r"token chunk 3 \(tokens key 00000003\): a value of"):
            s.get_token(3 * SLOTS)
        report = s.check()
    assert any(f.where == "tokens chunk 3" and "a value of" in f.reason for f in report.findings), report


def test_a_value_moved_under_another_key_fails_its_checksum(path):
    a, b = CHUNK.key(1), CHUNK.key(2)

    def swap(txn: Any, h: Any) -> None:
        va, vb = bytes(txn.get(a, db=h)), bytes(txn.get(b, db=h))
        txn.put(a, vb, db=h)
        txn.put(b, va, db=h)

    _surgery(path, DB_TOKENS, swap)
    with ngstore.open(path, readonly=True, **OPEN) as s:
        report = s.check()
    assert {f.where for f in report.findings if "checksum mismatch" in f.reason} == \
        {"tokens chunk 1", "tokens chunk 2"}, report


# -- the codec, as a property ----------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(db=st.sampled_from(SEALED_DBS), key=st.binary(min_size=1, max_size=16),
       region=st.binary(min_size=0, max_size=5000), data=st.data())
def test_the_reader_never_returns_a_value_with_a_flipped_bit(db, key, region, data):
    sealed = layout.seal(db, key, region)
    assert bytes(layout.unseal(db, key, sealed, len(region), verify=True)) == region
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    damaged = bytearray(sealed)
    damaged[bit >> 3] ^= 1 << (bit & 7)
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        layout.unseal(db, key, bytes(damaged), len(region), verify=True)
    other = bytes([key[0] ^ 1]) + key[1:]
    with pytest.raises(CorruptionError, match="checksum mismatch"):  # the same value under another key
        layout.unseal(db, other, sealed, len(region), verify=True)


@settings(max_examples=200, deadline=None)
@given(db=st.sampled_from(SEALED_DBS), key=st.binary(min_size=1, max_size=16),
       region=st.one_of(st.binary(max_size=200), st.binary(min_size=4090, max_size=9000)),
       trailer=st.binary(min_size=8, max_size=8))
def test_sealing_in_place_writes_the_trailer_seal_computes(db, key, region, trailer):
    # seal_into hashes region || key in one call with the key standing in the trailer's
    # place (regions of 4 KiB and more, keys of at most 8 bytes), or streams them: both
    # must give seal's bytes whatever the buffer held.
    buf = bytearray(region + trailer)
    assert layout.seal_into(db, key, buf, len(region)) is buf
    assert bytes(buf) == layout.seal(db, key, region)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.integers(0, 4), bit=st.integers(0, CHUNK.sealed_bytes * 8 - 1))
def test_a_store_read_never_returns_the_bytes_of_a_flipped_chunk_silently(path, chunk, bit):
    key = CHUNK.key(chunk)
    intact = _stored(path, DB_TOKENS, key)
    ids = np.arange(chunk * SLOTS, (chunk + 1) * SLOTS)
    _flip(path, DB_TOKENS, key, bit)
    try:
        with ngstore.open(path, readonly=True, **OPEN) as s:
            with pytest.raises(CorruptionError, match="checksum mismatch"):
                s.get_tokens(ids, missing="skip")
            with pytest.raises(CorruptionError, match="checksum mismatch"):
                _in_snapshot(lambda snap: snap.tokens.to_array())(s)
            assert not s.check().ok
    finally:
        _surgery(path, DB_TOKENS, lambda txn, h: txn.put(key, intact, db=h))


def _first_key(path: str, db: bytes) -> bytes:
    out: list[bytes] = []

    def first(txn: Any, h: Any) -> None:
        cur = txn.cursor(db=h)
        assert cur.first()
        out.append(bytes(cur.key()))

    _surgery(path, db, first)
    return out[0]


def test_a_flipped_spatial_page_is_a_finding_and_a_box_query_over_it_raises(path):
    key = _first_key(path, DB_SPATIAL)
    damaged = _flip(path, DB_SPATIAL, key, 3)  # the first entry's id
    assert len(damaged) % 10 == CHECKSUM_BYTES
    with ngstore.open(path, readonly=True, **OPEN) as s:
        report = s.check()
        with s.snapshot() as snap, pytest.raises(CorruptionError, match=f"spatial key {key.hex()}: checksum"):
            snap.tokens.box([-32768] * 3, [32767] * 3, layer=key[0])
    hits = [f for f in report.findings if f"spatial key {key.hex()}: checksum mismatch" in f.reason]
    assert len(hits) == 1 and hits[0].offset == _offset_in_file(path, damaged), report


def test_knn_over_the_mapped_chunks_verifies_each_chunk(path):
    _flip(path, DB_TOKENS, CHUNK.key(4), 7)
    with ngstore.open(path, readonly=True, **OPEN) as s, s.snapshot() as snap, \
            pytest.raises(CorruptionError, match=r"tokens key 00000004\): checksum mismatch"):
        snap.tokens.knn(np.zeros(24, np.int16), 3)
    with ngstore.open(path, readonly=True, **OFF) as s, s.snapshot() as snap:
        assert len(snap.tokens.knn(np.zeros(24, np.int16), 3).ids) == 3
