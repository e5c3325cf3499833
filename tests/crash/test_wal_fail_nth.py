"""Fail the Nth I/O call (SQLite style) for N = 1, 2, … until the operation completes.

After every injected EIO: the error reaches the caller as the OSError it is; a log whose
write, fdatasync, truncate or segment creation failed refuses further appends and syncs
(fsyncgate: a failed fsync may have dropped dirty pages, so only a reopen knows what is on
disk); reopening with a healthy FileIO recovers a prefix of what was appended that contains
every acknowledged record.
"""
from __future__ import annotations

import errno
import os
import shutil

import pytest
from walfaults import FaultyIO, NoSyncIO

from ngstore import wal
from ngstore.errors import NgStoreError

B = wal.BATCH
PAYLOADS = [bytes([i]) * (30 + 7 * i) for i in range(24)]


def _no_sync(io: FaultyIO) -> FaultyIO:
    io.inner = NoSyncIO()
    return io


def workload(d: str, io: FaultyIO, acked: list[int], appended: list[bytes], *, drop: bool) -> None:
    log, _ = wal.Log.open(d, io=io, segment_bytes=300, preallocate_bytes=64)
    try:
        for i, p in enumerate(PAYLOADS):
            try:
                log.append([(B, p)])
            except OSError:
                assert log.failed is not None
                appended.append(p)  # may or may not be on disk
                raise
            appended.append(p)
            acked.append(log.sync())
            if drop and i % 5 == 4:
                log.drop_through(log.last_position - 2)
    except OSError:
        if log.failed is not None:  # the rule after a failed write/fsync: no more writes
            with pytest.raises(NgStoreError, match="reopen"):
                log.append([(B, b"more")])
            with pytest.raises(NgStoreError, match="reopen"):
                log.sync()
        raise
    finally:
        log.close()


def check_recovery(d: str, acked: list[int], appended: list[bytes], applied: int) -> None:
    log, _rep = wal.Log.open(d, io=NoSyncIO(), start_after=applied)
    got = [(r.position, r.payload) for r in log.iter_records(applied)]
    expected = list(enumerate(appended, start=1))
    assert got == expected[applied:applied + len(got)]
    assert applied + len(got) >= max(acked, default=0)
    # the reopened log is healthy: it appends after what it recovered
    assert log.append([(B, b"after")]) == [log.last_position]
    log.sync()
    log.close()


@pytest.mark.parametrize("kind,partial", [
    ("write", False), ("write", True), ("fdatasync", False), ("truncate", False),
    ("open", False), ("fsync_dir", False), ("unlink", False)],
    ids=["write", "short-write-then-eio", "fdatasync", "truncate", "open", "fsync_dir", "unlink"])
def test_failing_the_nth_call_never_loses_an_acknowledged_record(kind, partial, tmp_path, capsys):
    drop = kind in ("unlink", "fsync_dir")
    n = 0
    failures = 0
    while True:
        n += 1
        d = str(tmp_path / f"n{n}")
        io = _no_sync(FaultyIO({kind: n}, partial_write=partial))
        acked: list[int] = []
        appended: list[bytes] = []
        try:
            workload(d, io, acked, appended, drop=drop)
        except OSError as e:
            assert e.errno == errno.EIO and "injected" in str(e)
            assert io.fired and io.fired[0][0] == kind
            failures += 1
        else:
            assert not io.fired
            break
        if os.path.isdir(d):
            check_recovery(d, acked, appended, _applied_floor(d))
        shutil.rmtree(d, ignore_errors=True)
        assert n < 500
    with capsys.disabled():
        print(f"\n[wal fail-nth] {kind}{' (partial)' if partial else ''}: {failures} injected failures, "
              f"completed at N={n}")
    assert failures >= 1


def _applied_floor(d: str) -> int:
    """The store calls drop_through only with positions LMDB durably holds; here that is
    whatever precedes the oldest remaining segment."""
    names = sorted(n for n in os.listdir(d) if n.endswith(".wal"))
    return int(names[0][:16], 16) - 1 if names else 0


def test_a_failed_unlink_in_drop_through_does_not_poison_the_log(tmp_path):
    d = str(tmp_path / "wal")
    io = FaultyIO({"unlink": 1})
    log, _ = wal.Log.open(d, io=io, segment_bytes=300)
    for p in PAYLOADS[:12]:
        log.append([(B, p)])
    log.sync()
    before = log.segment_count
    with pytest.raises(OSError):
        log.drop_through(8)
    assert log.failed is None and log.segment_count == before
    log.append([(B, b"still fine")])
    log.sync()
    assert log.drop_through(8) >= 1
    log.close()


def test_a_failed_fdatasync_is_not_retried_into_a_false_success(tmp_path):
    d = str(tmp_path / "wal")
    io = FaultyIO({"fdatasync": 2})  # 1 = segment creation in open
    log, _ = wal.Log.open(d, io=io)
    log.append([(B, b"a")])
    with pytest.raises(OSError):
        log.sync()
    assert log.durable_position == 0
    with pytest.raises(NgStoreError):
        log.sync()  # a retry would "succeed" on Linux although the pages may be gone
    log.close()


def test_a_failure_while_repairing_a_torn_tail_leaves_a_log_the_next_open_repairs(tmp_path):
    d = str(tmp_path / "wal")
    log, _ = wal.Log.open(d, io=NoSyncIO())
    log.append([(B, b"a" * 50), (B, b"b" * 50)])
    log.close()
    path = os.path.join(d, wal.segment_name(1))
    with open(path, "r+b") as f:
        f.truncate(wal.SEGMENT_HEADER_SIZE + 2 * wal.FRAME_HEADER_SIZE + 80)
    for kind in ("open", "truncate", "fdatasync"):
        io = FaultyIO({kind: 1}, path_glob="*.wal")
        with pytest.raises(OSError):
            wal.Log.open(d, io=io)
    log, _rep = wal.Log.open(d, io=NoSyncIO())  # (the truncate may already have happened)
    assert [r.payload for r in log.iter_records()] == [b"a" * 50]
    assert log.append([(B, b"c")]) == [2]
    log.close()
