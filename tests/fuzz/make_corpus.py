"""Makes the checked-in seed corpus: ``corpus/<target>/<name>``, cut out of real stores.

    python tests/fuzz/make_corpus.py        # rewrites the seeds it makes in tests/fuzz/corpus/

Run it again when a format changes (and commit the result). Every seed is bytes a real
writer wrote (``stores.py`` makes the stores through the public API), so the fuzzers start
from inputs that pass every check and mutate inward. No seed may contain the path it was
made in (asserted), so the corpus is the same whichever machine made it, up to salts,
ids and times.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import stores  # noqa: E402
import targets  # noqa: E402

import ngstore  # noqa: E402
from ngstore import layout, wal, waltools  # noqa: E402
from ngstore.kv import KV, ReadTxn  # noqa: E402
from ngstore.obs import blackbox  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def used_segment(path: str, summaries: list[wal.RecordSummary]) -> bytes:
    """A log segment without its preallocated zeros: up to its last record, plus one
    frame header's worth of zeros (the end of the log as a writer leaves it)."""
    data = read(path)
    end = max([s.offset + s.size for s in summaries if s.file == path], default=wal.SEGMENT_HEADER_SIZE)
    return data[:end + wal.FRAME_HEADER_SIZE]


def make_stores(base: str) -> tuple[str, str]:
    """A closed store, and the copy of another taken while its writer had it open (its log
    still holds every record, in three segments, one of them with a compressed frame)."""
    closed = os.path.join(base, "closed")
    stores.make(closed)
    live = os.path.join(base, "live")
    with ngstore.open(live, **{**stores.OPTIONS, "segment_bytes": 4096}) as s:
        stores.fill(s)
        s.put_tokens(stores.tokens(range(40, 120)))  # 5 KB payload: stored compressed
        copy = os.path.join(base, "live-copy")
        shutil.copytree(live, copy, ignore=shutil.ignore_patterns("*.lock"))
    return closed, copy


def seeds_of(closed: str, live: str, base: str) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {name: {} for name in targets.TARGETS}
    logdir = os.path.join(live, "wal")
    summaries = list(waltools.dump(logdir))
    segments = sorted(os.path.join(logdir, n) for n in os.listdir(logdir))
    pieces = [used_segment(p, summaries) for p in segments]
    for i, piece in enumerate(pieces):
        out["wal_segment_header"][f"segment-{i}"] = piece[:wal.SEGMENT_HEADER_SIZE]
        out["wal_frames"][f"segment-{i}"] = piece
    out["wal_recovery"]["three-segments"] = b"".join(pieces)
    out["wal_recovery"]["one-segment"] = pieces[0]
    out["wal_recovery"]["closed-store"] = used_segment(
        *[os.path.join(closed, "wal", n) for n in os.listdir(os.path.join(closed, "wal"))], summaries=[])

    scratch = os.path.join(base, "log-copy")
    shutil.copytree(logdir, scratch)
    log, _ = wal.Log.open(scratch, recovery="strict", preallocate_bytes=0)
    try:
        for rec in log.iter_records(0):
            out["batch_payload"][f"record-{rec.position}"] = rec.payload
    finally:
        log.close()

    for name, store in (("closed", closed), ("live", live)):
        out["checkpoint_file"][name] = read(os.path.join(store, layout.CHECKPOINT_FILE))
        out["state_file"][name] = read(os.path.join(store, layout.STATE_FILE))
        data = read(os.path.join(store, layout.DATA_FILE))
        out["lmdb_meta_page"][f"{name}-page-0"] = data[:4096]
        out["lmdb_meta_page"][f"{name}-page-1"] = data[4096:8192]
        out["data_file"][name] = data
    out["marker_file"]["marker"] = read(os.path.join(closed, layout.MARKER_FILE))

    kv = KV(closed, readonly=True, map_size=stores.MAP_SIZE)
    try:
        with ReadTxn(kv) as txn:
            def items(db: bytes) -> list[tuple[bytes, bytes]]:
                return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=kv.dbs[db])]
            meta = dict(items(layout.DB_META))
            learn = items(layout.DB_LEARN)
            values = {**meta, b"learn cursor": next(v for k, v in learn if k[:1] == b"C"),
                      b"learn group": next(v for k, v in learn if k[:1] == b"S")}
            out["meta_values"]["store"] = out["store_meta"]["store"] = targets.meta_tlv(values)
            for k, v in items(layout.DB_TOKENS):
                out["token_chunk"][f"chunk-{int.from_bytes(k, 'big')}"] = v
            for k, v in items(layout.DB_CONNECTIONS):
                out["connection_value"][f"connection-{k.hex()}"] = v
            for k, v in items(layout.DB_EVENTS)[:3]:
                out["event_value"][f"event-{int.from_bytes(k, 'big')}"] = v
            reflexes = dict(items(layout.DB_REFLEXES))
    finally:
        kv.close()
    head = reflexes.pop(layout.REFLEX_HEADER_KEY)
    table = head + b"".join(v for _k, v in sorted(reflexes.items()))
    out["reflex_header"]["header"] = head
    out["reflex_table"]["table"] = out["store_reflexes"]["table"] = table

    ring = read(os.path.join(closed, blackbox.RING_FILE))
    out["blackbox_ring"]["closed"] = ring
    out["blackbox_ring"]["live"] = read(os.path.join(live, blackbox.RING_FILE))
    for slot in range(stores.BLACKBOX_CAPACITY):
        off = blackbox.HEADER_BYTES + slot * blackbox.RECORD_BYTES
        n = int.from_bytes(ring[off + 4:off + 6], "little")
        if 0 < n <= blackbox.PAYLOAD_MAX:
            out["blackbox_payload"][f"slot-{slot}"] = ring[off + 24:off + 24 + n]
    _info, events, _text = blackbox.read_ring(closed)
    doc = {"timestamp_us": 1_700_000_000_000_000, "stats": {"current_size": len(events)}, "events": events,
           "format": blackbox.DUMP_FORMAT, "reason": "corpus", "pid": 1, "store_path": None,
           "store_stats": None, "exception": None}
    out["blackbox_dump"]["plain"] = blackbox.encode_dump(doc)
    out["blackbox_dump"]["zstd"] = blackbox.encode_dump(doc, compressed=True)
    out["stats_page"]["closed"] = read(os.path.join(closed, "stats.page"))
    return out


def main() -> None:
    base = tempfile.mkdtemp(prefix="ngstore-corpus-")
    try:
        closed, live = make_stores(base)
        seeds = seeds_of(closed, live, base)
    finally:
        shutil.rmtree(base)
    for name, files in seeds.items():
        assert files, f"no seed for {name}"
        # Seeds made here are rewritten; other files (inputs that once broke a target) stay.
        os.makedirs(os.path.join(CORPUS, name), exist_ok=True)
        for fname, data in files.items():
            assert base.encode() not in data and HERE.encode() not in data, (name, fname)
            with open(os.path.join(CORPUS, name, fname), "wb") as f:
                f.write(data)
        print(f"{name}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    main()
