"""The log as a specification: what append, sync, rotation, reopen and drop_through do."""
from __future__ import annotations

import os
import pathlib
import struct
import threading
import zlib

import numpy as np
import pytest
from walfaults import NoSyncIO, RecordingIO

from ngstore import wal, waltools
from ngstore.errors import CorruptionError, FormatVersionError, InvalidArgumentError, NgStoreError, StoreClosedError

B = wal.BATCH


def payloads(log: wal.Log, after: int = 0) -> list[bytes]:
    return [r.payload for r in log.iter_records(after)]


def open_log(path, **kw):
    kw.setdefault("io", NoSyncIO())
    return wal.Log.open(str(path), **kw)


def test_many_records_round_trip_with_consecutive_positions(tmp_path):
    log, rep = open_log(tmp_path / "wal")
    assert rep.clean and rep.records == 0 and rep.last_position == 0
    data = [os.urandom(i % 300) for i in range(2000)]
    got = []
    for i in range(0, 2000, 7):
        got += log.append([(B, d) for d in data[i:i + 7]])
        log.sync()
    assert got == list(range(1, 2001))
    recs = list(log.iter_records())
    assert [r.position for r in recs] == list(range(1, 2001))
    assert [r.payload for r in recs] == data
    assert all(r.type == B and r.size == wal.FRAME_HEADER_SIZE + len(r.payload) for r in recs)
    log.close()


def test_append_one_writes_the_bytes_append_writes(tmp_path, monkeypatch):
    # The one-record path must frame, extend the runway and rotate exactly as append does:
    # the same records through each give byte-identical segment files.
    sizes = [0, 1, 88, 4095, 4096, 5000, 100, 3000, 2999, 64] * 6  # compressible and not
    data = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    logs = {}
    for how in ("append", "append_one"):
        rng = iter(range(1, 1000))
        monkeypatch.setattr(wal, "new_salt", lambda rng=rng: next(rng))
        log, _ = open_log(tmp_path / how, segment_bytes=16384, preallocate_bytes=4096, compress=True)
        for d in data:
            pos = log.append([(B, d)])[0] if how == "append" else log.append_one(B, d)
            assert pos == log.last_position
        assert payloads(log) == data
        log.close()
        logs[how] = {n: (tmp_path / how / n).read_bytes() for n in sorted(os.listdir(tmp_path / how))}
    assert len(logs["append"]) > 1  # it rotated
    assert logs["append_one"] == logs["append"]


def test_append_one_refuses_what_append_refuses(tmp_path):
    log, _ = open_log(tmp_path / "wal")
    with pytest.raises(InvalidArgumentError):
        log.append_one(99, b"x")
    assert log.last_position == 0
    log.close()
    with pytest.raises(StoreClosedError):
        log.append_one(B, b"x")


def test_iter_records_starts_after_the_given_position(tmp_path):
    log, _ = open_log(tmp_path / "wal", segment_bytes=4096)
    log.append([(B, bytes([i]) * 100) for i in range(100)])
    assert [r.position for r in log.iter_records(57)] == list(range(58, 101))
    assert list(log.iter_records(100)) == []
    log.close()


def test_an_empty_append_writes_nothing_and_returns_no_positions(tmp_path):
    log, _ = open_log(tmp_path / "wal")
    assert log.append([]) == []
    assert log.last_position == 0
    log.close()


def test_rotation_starts_a_new_segment_named_by_its_first_position(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d, segment_bytes=4096)
    for i in range(40):
        log.append([(B, b"x" * 200)])
    assert log.segment_count > 1
    names = sorted(os.listdir(d))
    firsts = [int(n[:16], 16) for n in names]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    for n in names[:-1]:  # sealed segments hold no zero runway and fit the segment size
        assert os.path.getsize(d / n) <= 4096
    assert payloads(log) == [b"x" * 200] * 40
    log.close()


def test_a_record_larger_than_a_segment_goes_into_a_segment_of_its_own(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d, segment_bytes=4096)
    log.append([(B, b"a" * 100)])
    log.append([(B, b"b" * 10000)])
    log.append([(B, b"c" * 100)])
    assert log.segment_count == 3
    recs = list(log.iter_records())
    assert [os.path.basename(r.path) for r in recs] == [wal.segment_name(1), wal.segment_name(2),
                                                       wal.segment_name(3)]
    log.close()


def test_reopen_continues_positions_in_the_same_segment(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"one"), (B, b"two")])
    log.sync()
    log.close()
    log, rep = open_log(d)
    assert rep.clean and rep.records == 2 and rep.last_position == 2
    assert log.append([(B, b"three")]) == [3]
    assert log.segment_count == 1
    log.close()
    log, _ = open_log(d)
    assert payloads(log) == [b"one", b"two", b"three"]
    log.close()


def test_drop_through_deletes_only_segments_wholly_at_or_below_the_position(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d, segment_bytes=4096)
    for i in range(60):
        log.append([(B, bytes([i]) * 300)])
    segs_before = log.segment_count
    firsts = sorted(int(n[:16], 16) for n in os.listdir(d))
    cut = firsts[3] - 1  # the last position of the third segment
    assert log.drop_through(cut - 1) == 2
    assert log.drop_through(cut) == 1
    assert log.segment_count == segs_before - 3
    assert log.first_position == cut + 1
    assert next(r.position for r in log.iter_records(cut)) == cut + 1
    log.drop_through(10**9)
    assert log.segment_count == 1  # never the active one
    assert log.append([(B, b"after")]) == [61]
    log.close()


def test_drop_through_fsyncs_the_directory_after_each_unlink(tmp_path):
    d = tmp_path / "wal"
    rec = RecordingIO(str(tmp_path), inner=NoSyncIO())
    log, _ = wal.Log.open(str(d), io=rec, segment_bytes=4096)
    for i in range(30):
        log.append([(B, b"z" * 300)])
    start = len(rec.ops)
    n = log.drop_through(log.last_position)
    kinds = [o.kind for o in rec.ops[start:]]
    assert n >= 2 and kinds == ["unlink", "fsync_dir"] * n
    log.close()


def test_a_new_segment_is_synced_and_its_directory_fsynced_before_any_record_goes_in(tmp_path):
    d = tmp_path / "wal"
    rec = RecordingIO(str(tmp_path), inner=NoSyncIO())
    log, _ = wal.Log.open(str(d), io=rec, segment_bytes=4096)
    for i in range(30):
        log.append([(B, b"z" * 300)])
    log.close()
    created = [i for i, o in enumerate(rec.ops) if o.kind == "create"]
    assert len(created) >= 3
    for i in created:
        path = rec.ops[i].path
        later = rec.ops[i + 1:]
        first_record_write = next(j for j, o in enumerate(later) if o.kind == "write" and o.path == path
                                  and o.offset >= wal.SEGMENT_HEADER_SIZE)
        before = [(o.kind, o.path) for o in later[:first_record_write]]
        assert ("fdatasync", path) in before and ("fsync_dir", str(d)) in before


def test_rotation_seals_the_old_segment_before_creating_the_next(tmp_path):
    d = tmp_path / "wal"
    rec = RecordingIO(str(tmp_path), inner=NoSyncIO())
    log, _ = wal.Log.open(str(d), io=rec, segment_bytes=4096)
    for i in range(30):
        log.append([(B, b"z" * 300)])
    log.close()
    ops = rec.ops
    for i, o in enumerate(ops):
        if o.kind == "create" and i > 0 and any(p.kind == "write" for p in ops[:i]):
            prev = [p for p in ops[:i] if p.kind in ("write", "truncate", "fdatasync")]
            assert prev[-2].kind == "truncate" and prev[-1].kind == "fdatasync"


def test_sync_returns_the_durable_position_and_is_a_noop_when_nothing_is_new(tmp_path):
    rec = RecordingIO(str(tmp_path), inner=NoSyncIO())
    log, _ = wal.Log.open(str(tmp_path / "wal"), io=rec)
    log.append([(B, b"a")])
    assert log.durable_position == 0
    assert log.sync() == 1 and log.durable_position == 1
    n = len(rec.ops)
    assert log.sync() == 1
    assert len(rec.ops) == n
    log.close()


def test_records_carry_the_synced_watermark_known_when_they_were_framed(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a"), (B, b"b")])
    log.sync()
    log.append([(B, b"c")])
    log.close()
    recs = list(wal.Log.open(str(d), io=NoSyncIO())[0].iter_records())
    raw = pathlib.Path(recs[2].path).read_bytes()
    synced = [struct.unpack_from("<Q", raw, r.offset + 24)[0] for r in recs]
    assert synced == [0, 0, 2]


def test_compressed_payloads_round_trip_and_are_stored_smaller(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d, compress=True)
    big = b"token-bytes " * 10000
    rnd = os.urandom(20000)
    log.append([(B, big), (B, rnd), (B, b"small")])
    log.close()
    log, _ = open_log(d)
    recs = list(log.iter_records())
    assert [r.payload for r in recs] == [big, rnd, b"small"]
    assert recs[0].size < len(big) // 10
    assert recs[1].size == wal.FRAME_HEADER_SIZE + len(rnd)  # incompressible: stored raw
    summ = list(waltools.dump(str(d)))
    assert [s.compressed for s in summ] == [True, False, False]
    assert summ[0].raw_size == len(big)
    assert waltools.verify(str(d)).sound
    log.close()


def test_compression_is_off_by_default(tmp_path):
    log, _ = open_log(tmp_path / "wal")
    big = b"\0" * 100000
    log.append([(B, big)])
    assert next(log.iter_records()).size == wal.FRAME_HEADER_SIZE + len(big)
    log.close()


def test_unknown_type_or_oversized_record_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    log, _ = open_log(tmp_path / "wal")
    with pytest.raises(InvalidArgumentError):
        log.append([(B, b"ok"), (99, b"x")])
    monkeypatch.setattr(wal, "MAX_RECORD_BYTES", 1000)
    with pytest.raises(InvalidArgumentError):
        log.append([(B, b"ok"), (B, b"x" * 1001)])
    assert log.last_position == 0 and list(log.iter_records()) == []
    log.close()


def test_a_huge_length_field_is_rejected_without_reading_or_allocating(tmp_path, monkeypatch):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a" * 50)])
    log.append([(B, b"b" * 50)])
    log.close()
    path = d / wal.segment_name(1)
    raw = bytearray(path.read_bytes())
    off = wal.SEGMENT_HEADER_SIZE + wal.FRAME_HEADER_SIZE + 50  # second frame
    raw[off + 4:off + 8] = b"\xff\xff\xff\xff"
    path.write_bytes(raw)
    sizes: list[int] = []
    real_pread = NoSyncIO.pread

    def spy(self, fd, n, offset):
        sizes.append(n)
        return real_pread(self, fd, n, offset)

    monkeypatch.setattr(NoSyncIO, "pread", spy)
    log, rep = open_log(d)
    assert rep.torn_tail is not None and rep.torn_tail.offset == off
    assert "exceeds the limit" in rep.torn_tail.reason
    assert max(sizes) <= len(raw)  # never more than the file
    assert payloads(log) == [b"a" * 50]
    log.close()


def test_a_segment_of_a_newer_format_version_is_refused_clearly(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a")])
    log.close()
    path = d / wal.segment_name(1)
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 2)
    raw[36:40] = struct.pack("<I", zlib.crc32(bytes(raw[:36])))
    path.write_bytes(raw)
    with pytest.raises(FormatVersionError, match="version 2"):
        open_log(d)
    with pytest.raises(FormatVersionError):
        waltools.verify(str(d))


def test_foreign_files_in_the_log_directory_are_reported_and_left_alone(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a")])
    log.close()
    (d / "notes.txt").write_bytes(b"hello")
    (d / "12.wal").write_bytes(b"garbage")
    (d / "subdir").mkdir()
    log, rep = open_log(d)
    assert sorted(os.path.basename(p) for p in rep.foreign_files) == ["12.wal", "notes.txt", "subdir"]
    assert payloads(log) == [b"a"]
    log.close()
    assert (d / "notes.txt").read_bytes() == b"hello"
    v = waltools.verify(str(d))
    assert v.sound and {p.kind for p in v.problems} == {"foreign-file"}


def test_a_garbage_file_with_a_segment_name_is_a_torn_tail_when_nothing_follows(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a")])
    log.close()
    (d / wal.segment_name(2)).write_bytes(os.urandom(100))
    assert not waltools.verify(str(d)).clean
    log, rep = open_log(d)
    assert rep.torn_tail is not None and rep.torn_tail.removed_files == (str(d / wal.segment_name(2)),)
    assert payloads(log) == [b"a"] and log.append([(B, b"b")]) == [2]
    log.close()


def test_strict_recovery_refuses_a_torn_tail_and_changes_nothing(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a" * 100), (B, b"b" * 100)])
    log.close()
    path = d / wal.segment_name(1)
    raw = path.read_bytes()
    end = wal.SEGMENT_HEADER_SIZE + 2 * (wal.FRAME_HEADER_SIZE + 100)
    path.write_bytes(raw[:end - 10])
    with pytest.raises(CorruptionError) as ei:
        open_log(d, recovery="strict")
    assert ei.value.path == str(path) and ei.value.offset == end - 140 and "torn tail" in str(ei.value)
    assert path.read_bytes() == raw[:end - 10]
    log, rep = open_log(d)
    assert rep.torn_tail.bytes_dropped == 130 and payloads(log) == [b"a" * 100]
    log.close()
    assert path.stat().st_size == end - 140


def test_strict_recovery_accepts_a_clean_log_with_its_zero_runway(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a")])
    log.close()
    assert (d / wal.segment_name(1)).stat().st_size > 1000  # the runway is there
    log, rep = open_log(d, recovery="strict")
    assert rep.clean and payloads(log) == [b"a"]
    log.close()


def test_a_log_behind_start_after_restarts_after_it(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.append([(B, b"a"), (B, b"b")])
    log.close()
    log, rep = open_log(d, start_after=10)
    assert rep.restarted_at == 11 and log.last_position == 10
    assert log.append([(B, b"c")]) == [11]
    assert os.listdir(d) == [wal.segment_name(11)]
    log.close()


def test_a_log_that_starts_after_start_after_plus_one_is_missing_records(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d, start_after=10)
    log.append([(B, b"k")])
    log.close()
    with pytest.raises(CorruptionError, match=r"missing|applied"):
        open_log(d, start_after=5)
    log, rep = open_log(d, start_after=5, recovery="salvage")
    assert [p.kind for p in rep.skipped] == ["missing-records"] and rep.skipped[0].lost == (6, 10)
    log.close()


def test_an_empty_directory_starts_at_start_after_plus_one(tmp_path):
    log, rep = open_log(tmp_path / "wal", start_after=41)
    assert rep.first_position == 42 and log.append([(B, b"x")]) == [42]
    log.close()


def test_open_without_create_refuses_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_log(tmp_path / "nope", create=False)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InvalidArgumentError):
        open_log(tmp_path / "wal", recovery="lenient")
    with pytest.raises(InvalidArgumentError):
        open_log(tmp_path / "wal", segment_bytes=10)


def test_a_closed_log_refuses_appends_and_close_is_idempotent(tmp_path):
    log, _ = open_log(tmp_path / "wal")
    log.close()
    log.close()
    with pytest.raises(StoreClosedError):
        log.append([(B, b"x")])
    with pytest.raises(StoreClosedError):
        log.sync()


def test_sync_from_another_thread_while_appending_is_safe(tmp_path):
    d = tmp_path / "wal"
    log, _ = wal.Log.open(str(d), segment_bytes=8192, preallocate_bytes=1024)
    stop = threading.Event()
    errors: list[BaseException] = []

    def flusher():
        try:
            while not stop.is_set():
                log.sync()
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=flusher)
    t.start()
    try:
        for i in range(300):
            log.append([(B, bytes([i % 256]) * 200)])
    finally:
        stop.set()
        t.join()
    assert not errors
    log.sync()
    log.close()
    log, rep = wal.Log.open(str(d), recovery="strict")
    assert rep.records == 300 and log.segment_count > 3
    log.close()


def test_verify_and_dump_describe_a_healthy_log(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d, segment_bytes=4096)
    for i in range(20):
        log.append([(B, bytes(300))])
    log.close()
    v = waltools.verify(str(d))
    assert v.sound and v.clean and v.records == 20 and v.last_position == 20 and v.segments > 1
    s = list(waltools.dump(str(d)))
    assert [x.position for x in s] == list(range(1, 21))
    assert all(x.type == B and x.size == 340 and not x.compressed for x in s)


def test_after_a_failed_fsync_the_log_refuses_appends_until_reopened(tmp_path):
    from walfaults import FaultyIO
    d = tmp_path / "wal"
    io = FaultyIO({"fdatasync": 3})  # 1: segment creation, 2: recovery... count from here
    log, _ = wal.Log.open(str(d), io=io)
    log.append([(B, b"a")])
    n = 0
    with pytest.raises(OSError):
        for n in range(5):
            log.append([(B, b"b")])
            log.sync()
    assert log.failed is not None
    with pytest.raises(NgStoreError, match="reopen"):
        log.append([(B, b"c")])
    with pytest.raises(NgStoreError, match="reopen"):
        log.sync()
    log.close()
    log, _ = wal.Log.open(str(d))
    assert payloads(log)[0] == b"a"
    log.close()


def test_reopening_a_log_with_an_empty_segment_appends_into_it(tmp_path):
    d = tmp_path / "wal"
    log, _ = open_log(d)
    log.close()
    log, rep = open_log(d, recovery="strict")
    assert rep.records == 0 and log.append([(B, b"x")]) == [1]
    log.close()
    log, _ = open_log(d)
    assert payloads(log) == [b"x"] and log.segment_count == 1
    log.close()


def test_zero_tail_finds_where_the_trailing_zeros_begin_as_rstrip_does():
    from ngstore.wal import _zero_tail

    rng = np.random.default_rng(11)
    for body in (0, 1, 5, 4095, 4096, 4097, 10_000, 100_000):
        for zeros in (0, 1, 3, 4096, 9_000, 70_000, 5_000_000):
            data = bytearray(rng.integers(1, 256, body, dtype=np.uint8).tobytes())
            if body > 2:
                data[body // 2] = 0  # a zero inside the data is not the tail
            data = bytes(data) + bytes(zeros)
            assert _zero_tail(data) == len(data.rstrip(b"\0")) == body


class CountingReads(NoSyncIO):
    """Counts the bytes read with ``pread`` (the scan's whole-file reads too: reset it after
    the open to count the replay's)."""

    def __init__(self) -> None:
        super().__init__()
        self.pread_bytes = 0

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        data = super().pread(fd, n, offset)
        self.pread_bytes += len(data)
        return data


def _written(path, n: int, segment_bytes: int = 1 << 16) -> list[bytes]:
    log, _ = open_log(path, segment_bytes=segment_bytes)
    data = [os.urandom(50 + i % 700) for i in range(n)]
    for i in range(0, n, 10):
        log.append([(B, d) for d in data[i:i + 10]])
    log.sync()
    log.close()
    return data


def test_the_replay_after_an_open_reads_the_scanned_bytes_not_the_file_again(tmp_path):
    data = _written(tmp_path / "wal", 600)
    io = CountingReads()
    log, _ = wal.Log.open(str(tmp_path / "wal"), io=io, segment_bytes=1 << 16, start_after=100)
    io.pread_bytes = 0
    assert [r.payload for r in log.iter_records(100, copy=False)] == data[100:]
    assert io.pread_bytes == 0  # every record came from the scan's bytes
    assert [r.payload for r in log.iter_records(100)] == data[100:]  # kept once: read again now
    assert io.pread_bytes > 0
    log.close()


def test_records_appended_after_the_scan_are_read_from_the_file(tmp_path):
    data = _written(tmp_path / "wal", 50)
    log, _ = open_log(tmp_path / "wal", segment_bytes=1 << 16, start_after=0)
    more = [os.urandom(300) for _ in range(20)]
    log.append([(B, d) for d in more])  # into the runway the scan saw as zeros
    got = [bytes(r.payload) for r in log.iter_records(0, copy=False)]
    assert got == data + more
    log.close()


def test_the_scan_keeps_no_more_than_its_budget(tmp_path, monkeypatch):
    data = _written(tmp_path / "wal", 600, segment_bytes=1 << 15)
    monkeypatch.setattr(wal, "REPLAY_KEEP_BYTES", 1 << 16)
    io = CountingReads()
    log, _ = wal.Log.open(str(tmp_path / "wal"), io=io, segment_bytes=1 << 15, start_after=0)
    io.pread_bytes = 0
    assert sum(len(s.scanned or b"") for s in log._segs) <= 1 << 16
    assert [r.payload for r in log.iter_records(0, copy=False)] == data
    assert io.pread_bytes > 0  # the segments past the budget were read again
    assert all(s.scanned is None for s in log._segs)
    log.close()


def test_a_clean_open_keeps_nothing(tmp_path):
    _written(tmp_path / "wal", 200)
    log, _ = open_log(tmp_path / "wal", segment_bytes=1 << 16, start_after=200)
    assert all(s.scanned is None for s in log._segs)
    log.close()
