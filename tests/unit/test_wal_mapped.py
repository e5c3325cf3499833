"""The log's mapped small-record path (``Log.append_one`` storing through a shared mapping of
the active segment): the same bytes as a write, durable by the same fdatasync, safe across
rotation, reopening and close, and never used where a test's file seam must see writes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import zlib

import pytest
from walfaults import NoSyncIO, RecordingIO, mapped_paths

from ngstore import wal
from ngstore._native import ffi, lib
from ngstore.errors import StoreClosedError
from ngstore.fileio import DEFAULT_IO, FileIO

B = wal.BATCH


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 100, 4095, 70_000])
def test_the_c_crc32_is_zlibs_and_chains(n):
    data = os.urandom(n)
    assert lib.ng_crc32(data, n, 0) == zlib.crc32(data)
    half = n // 3
    assert lib.ng_crc32(data[half:], n - half, lib.ng_crc32(data, half, 0)) == zlib.crc32(data)


def test_put_frame_refuses_a_frame_past_its_limit_and_stores_nothing():
    buf = ffi.new("uint8_t[]", 200)
    payload = b"x" * 100
    assert lib.ng_wal_put_frame(buf, 139, 0, payload, 100, 1, 1, 0, B) == -6  # NG_ERANGE
    assert lib.ng_wal_put_frame(buf, 200, 61, payload, 100, 1, 1, 0, B) == -6
    assert bytes(ffi.buffer(buf, 200)) == bytes(200)
    assert lib.ng_wal_put_frame(buf, 200, 60, payload, 100, 1, 1, 0, B) == 0
    stored = bytes(ffi.buffer(buf, 200))
    assert stored[:60] == bytes(60) and stored[100:] == payload
    assert stored[60:64] == zlib.crc32(stored[64:]).to_bytes(4, "little")


@pytest.mark.parametrize("n", [0, 1, 64, 100, 4000])
def test_put_frame_through_the_cpython_api_stores_the_bytes_of_the_cffi_call(n):
    from ngstore.walmap import put_frame

    payload = os.urandom(n)
    a, b = ffi.new("uint8_t[]", 8192), ffi.new("uint8_t[]", 8192)
    assert lib.ng_wal_put_frame(a, 8192, 24, payload, n, 0xFEDC_BA98_7654_3210, 1 << 40, 7, B) == 0
    assert put_frame(int(ffi.cast("uintptr_t", b)), 8192, 24, payload, 0xFEDC_BA98_7654_3210, 1 << 40, 7, B) == 0
    assert bytes(ffi.buffer(a, 8192)) == bytes(ffi.buffer(b, 8192))
    # past its limit: NG_ERANGE, nothing stored
    c = ffi.new("uint8_t[]", 8192)
    assert put_frame(int(ffi.cast("uintptr_t", c)), 24 + 40 + n - 1, 24, payload, 1, 1, 0, B) == -6
    assert bytes(ffi.buffer(c, 8192)) == bytes(8192)


def test_put_frame_through_the_cpython_api_refuses_bad_arguments():
    from ngstore.walmap import put_frame

    buf = ffi.new("uint8_t[]", 256)
    base = int(ffi.cast("uintptr_t", buf))
    with pytest.raises(TypeError, match="8 arguments"):
        put_frame(base, 256, 0, b"x", 1, 1, 0)
    with pytest.raises(TypeError, match="bytes"):
        put_frame(base, 256, 0, bytearray(b"x"), 1, 1, 0, B)
    with pytest.raises(TypeError, match="integer"):
        put_frame(base, 256.0, 0, b"x", 1, 1, 0, B)
    with pytest.raises(OverflowError):
        put_frame(base, 256, -1, b"x", 1, 1, 0, B)
    with pytest.raises(ValueError, match="null address"):
        put_frame(0, 256, 0, b"x", 1, 1, 0, B)
    with pytest.raises(ValueError, match="type past 255"):
        put_frame(base, 256, 0, b"x", 1, 1, 0, 256)
    assert bytes(ffi.buffer(buf, 256)) == bytes(256)  # none of them stored anything


def test_append_one_stores_through_the_mapping_and_a_reopen_reads_every_record(tmp_path):
    log, _ = wal.Log.open(str(tmp_path / "wal"), segment_bytes=64 << 10, preallocate_bytes=8192)
    data = [os.urandom(i % 700) for i in range(1500)]  # ~0.5 MB: rotations and runway extensions
    assert [log.append_one(B, d) for d in data] == list(range(1, 1501))
    assert log.segment_count > 3
    assert [r.payload for r in log.iter_records()] == data  # read back through the file
    log.sync()
    log.close()
    log, rep = wal.Log.open(str(tmp_path / "wal"), recovery="strict")
    assert rep.clean and rep.last_position == 1500
    assert [r.payload for r in log.iter_records()] == data
    more = [os.urandom(50) for _ in range(300)]  # into a segment this object did not create
    for d in more:
        log.append_one(B, d)
    assert [r.payload for r in log.iter_records(1500)] == more
    log.close()


def test_the_mapping_is_dropped_at_rotation_and_close(tmp_path):
    log, _ = wal.Log.open(str(tmp_path / "wal"), segment_bytes=16 << 10, preallocate_bytes=4096)
    log.append_one(B, b"a" * 100)
    (first,) = mapped_paths(tmp_path / "wal")
    assert os.path.dirname(first) == os.path.realpath(tmp_path / "wal")
    while log.segment_count == 1:
        log.append_one(B, b"b" * 1000)
    log.append_one(B, b"c" * 10)
    now = mapped_paths(tmp_path / "wal")
    assert first not in now and len(now) == 1  # only the active segment
    log.close()
    assert mapped_paths(tmp_path / "wal") == set()


def test_a_file_seam_that_sees_writes_sees_every_append_one(tmp_path):
    rec = RecordingIO(str(tmp_path))
    assert not rec.maps_writes() and NoSyncIO().maps_writes() and DEFAULT_IO.maps_writes()
    log, _ = wal.Log.open(str(tmp_path / "wal"), io=rec)
    before = sum(op.kind == "write" for op in rec.ops)
    for i in range(20):
        log.append_one(B, bytes([i]) * 30)
    log.close()
    assert sum(op.kind == "write" for op in rec.ops) - before == 20
    assert mapped_paths(tmp_path / "wal") == set()


def test_a_subclass_that_overrides_a_write_keeps_the_writes():
    class Counting(FileIO):
        def pwritev(self, fd, buffers, offset):
            super().pwritev(fd, buffers, offset)

    assert not Counting().maps_writes()


def test_a_close_racing_appends_stops_them_with_an_error_not_a_crash(tmp_path):
    # Run in a child: a store into an unmapped segment would kill the process (SIGSEGV).
    child = textwrap.dedent("""
        import sys, threading, time
        from ngstore import wal
        from ngstore.errors import NgStoreError
        for round in range(30):
            log, _ = wal.Log.open(sys.argv[1] + f"/wal{round}", segment_bytes=32 << 10,
                                  preallocate_bytes=4096)
            stopped = []
            def spin():
                try:
                    while True:
                        log.append_one(wal.BATCH, b"z" * 200)
                except NgStoreError as e:
                    stopped.append(type(e).__name__)
            t = threading.Thread(target=spin)
            t.start()
            while log.last_position < 50:
                time.sleep(0.0005)
            log.close()
            t.join()
            assert stopped, "the appends did not stop"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "ok"


def test_records_stored_through_the_mapping_survive_kill_9_without_a_sync(tmp_path):
    child = textwrap.dedent("""
        import os, signal, sys
        from ngstore import wal
        log, _ = wal.Log.open(sys.argv[1], segment_bytes=64 << 10, preallocate_bytes=8192)
        for i in range(2000):
            log.append_one(wal.BATCH, i.to_bytes(4, "little") * 20)
        print(log.last_position, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path / "wal")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -signal.SIGKILL and out.stdout.strip() == "2000"
    log, rep = wal.Log.open(str(tmp_path / "wal"), recovery="strict")
    assert rep.last_position == 2000
    assert [r.payload for r in log.iter_records()] == [i.to_bytes(4, "little") * 20 for i in range(2000)]
    log.close()


def test_append_one_after_close_is_refused(tmp_path):
    log, _ = wal.Log.open(str(tmp_path / "wal"))
    log.append_one(B, b"x")
    log.close()
    with pytest.raises(StoreClosedError):
        log.append_one(B, b"y")
    threading.Thread(target=log.close).start()  # idempotent from any thread


def test_a_record_synced_at_once_is_written_not_stored_through_the_mapping(tmp_path):
    """An fdatasync after stores through a mapping write-protects the stored pages, and
    costs more than after a write: a record about to be synced is written."""
    log, _ = wal.Log.open(str(tmp_path / "wal"))
    data = [os.urandom(60 + i) for i in range(40)]
    for d in data[:20]:
        log.append_one(B, d, mapped=False)
    assert mapped_paths(tmp_path / "wal") == set()
    for d in data[20:]:  # then mapped stores after the written records, in the same pages
        log.append_one(B, d)
    assert len(mapped_paths(tmp_path / "wal")) == 1
    log.sync()
    log.close()
    log, rep = wal.Log.open(str(tmp_path / "wal"), recovery="strict")
    assert rep.clean and [r.payload for r in log.iter_records()] == data
    log.close()


@pytest.mark.parametrize("durability", ["sync", "async", "none"])
def test_a_store_maps_its_log_only_for_commits_it_does_not_sync_at_once(tmp_path, durability):
    import ngstore

    s = ngstore.open(str(tmp_path / "s"), durability=durability, observability=False, crash_handlers=False)
    try:
        for i in range(5):
            s.put_tokens(ngstore.Token.create_batch(1, start=i + 1).data)
        assert bool(mapped_paths(tmp_path / "s" / "wal")) == (durability != "sync")
        assert s.get_token(5) is not None
    finally:
        s.close()
