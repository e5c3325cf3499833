"""A replay writes back data.mdb while it goes on (``recovery._Writeback``): each group's
pages are fdatasync'ed in a thread of their own while the next group is applied, so the
checkpoint after the replay finds little left to write. It is only an early write-back:
the recovered store is the same, and a failure of it fails the open with the named
StorageError, after which an open on a healthy disk recovers everything.

The store to recover is made by a child process that commits and leaves with
``os._exit`` (the batches only in the log), then a power loss is simulated (another boot
id): LMDB is rolled back to its checkpoint and the whole log is replayed.
"""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from walfaults import AnotherBoot

import ngstore
import ngstore.recovery as recovery
from ngstore.errors import StorageError

BATCHES = 12
PER_BATCH = 500


def crashed_store(path: str) -> None:
    child = textwrap.dedent(f"""
        import os, ngstore
        s = ngstore.open({path!r}, durability="async", checkpoint_bytes=1 << 40, direct_threshold=1 << 40,
                         checkpoint_interval=1e9, crash_handlers=False)
        for i in range({BATCHES}):
            s.put_tokens(ngstore.Token.create_batch({PER_BATCH}, start=i * {PER_BATCH}))
        s.flush()
        os._exit(0)  # no close, no checkpoint: everything is only in the log
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)


class DataSyncs(AnotherBoot):
    """After a power loss; notes each fdatasync of data.mdb and the thread that made it,
    and fails those of the replay's write-back thread when ``fail`` is set."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.paths: dict[int, str] = {}
        self.syncs: list[str] = []

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def fdatasync(self, fd: int) -> None:
        if self.paths.get(fd, "").endswith("data.mdb"):
            thread = threading.current_thread().name
            self.syncs.append(thread)
            if self.fail and thread == "ngstore-replay-writeback":
                raise OSError(errno.EIO, "injected EIO on the replay's write-back", self.paths[fd])
        super().fdatasync(fd)


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(recovery, "REPLAY_GROUP_RECORDS", 3)  # 12 records: four groups


def expect_everything(s: ngstore.Store) -> None:
    n = BATCHES * PER_BATCH
    assert s.count() == n
    assert np.array_equal(s.get_tokens(np.arange(n, dtype=np.uint32)).ids, np.arange(n))
    assert s.check().ok


def test_a_replay_writes_back_its_groups_while_it_goes_on(tmp_path, small_groups):
    path = str(tmp_path / "s")
    crashed_store(path)
    io = DataSyncs()
    with ngstore.open(path, io=io, crash_handlers=False) as s:
        assert s.recovery.power_loss_rollback and s.recovery.replayed_records == BATCHES
        assert io.syncs.count("ngstore-replay-writeback") >= 1
        expect_everything(s)


def test_a_failed_write_back_fails_the_open_and_a_healthy_open_recovers_everything(tmp_path, small_groups):
    path = str(tmp_path / "s")
    crashed_store(path)
    io = DataSyncs(fail=True)
    with pytest.raises(StorageError) as err:
        ngstore.open(path, io=io, crash_handlers=False)
    assert err.value.errno == errno.EIO and "data.mdb" in str(err.value)
    assert "ngstore-replay-writeback" in io.syncs
    with ngstore.open(path, io=AnotherBoot(), crash_handlers=False) as s:
        assert s.recovery.replayed_records == BATCHES
        expect_everything(s)


# -- the replayed log is deleted by the applier thread, not inside the open ------------------

SEGMENT_BYTES = 64 << 10  # each 500-token batch (~32 KiB) fills half a segment: several segments


def crashed_store_of_segments(path: str) -> None:
    child = textwrap.dedent(f"""
        import os, ngstore
        s = ngstore.open({path!r}, durability="async", checkpoint_bytes=1 << 40, direct_threshold=1 << 40,
                         checkpoint_interval=1e9, crash_handlers=False, segment_bytes={SEGMENT_BYTES})
        for i in range({BATCHES}):
            s.put_tokens(ngstore.Token.create_batch({PER_BATCH}, start=i * {PER_BATCH}))
        s.flush()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)


class Unlinks(AnotherBoot):
    """After a power loss; notes the thread of each unlink of a log segment, and fails the
    first ``fail`` of them with EIO."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.fail = fail
        self.threads: list[str] = []

    def unlink(self, path: str) -> None:
        if os.sep + "wal" + os.sep in path:
            self.threads.append(threading.current_thread().name)
            if self.fail:
                self.fail -= 1
                raise OSError(errno.EIO, "injected EIO on unlink", path)
        super().unlink(path)


def wal_segments(path: str) -> list[str]:
    return sorted(f for f in os.listdir(os.path.join(path, "wal")) if f.endswith(".wal"))


def wait_for(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_replayed_segments_are_deleted_by_the_applier_not_inside_the_open(tmp_path):
    path = str(tmp_path / "s")
    crashed_store_of_segments(path)
    before = wal_segments(path)
    assert len(before) >= 4
    io = Unlinks()
    with ngstore.open(path, io=io, crash_handlers=False, segment_bytes=SEGMENT_BYTES) as s:
        assert s.recovery.replayed_records == BATCHES
        assert wait_for(lambda: len(wal_segments(path)) == 1), wal_segments(path)
        assert io.threads and set(io.threads) == {"ngstore-applier"}
        expect_everything(s)
    with ngstore.open(path, crash_handlers=False, segment_bytes=SEGMENT_BYTES) as s:
        assert s.recovery.replayed_records == 0
        expect_everything(s)


def test_a_failed_deletion_of_the_replayed_log_is_reported_and_a_later_checkpoint_deletes_it(tmp_path, caplog):
    path = str(tmp_path / "s")
    crashed_store_of_segments(path)
    io = Unlinks(fail=1)
    with caplog.at_level(logging.WARNING, logger="ngstore"):
        s = ngstore.open(path, io=io, crash_handlers=False, segment_bytes=SEGMENT_BYTES)
    try:
        assert wait_for(lambda: "deleting the log segments" in caplog.text), caplog.text
        assert len(wal_segments(path)) > 1  # the first unlink failed: the drop stopped there
        s.put_tokens(ngstore.Token.create_batch(1, start=BATCHES * PER_BATCH))  # the writer is not stopped
        s.checkpoint()
        assert len(wal_segments(path)) == 1
        assert s.count() == BATCHES * PER_BATCH + 1
    finally:
        s.close()
    with ngstore.open(path, crash_handlers=False, segment_bytes=SEGMENT_BYTES) as s:
        assert s.recovery.replayed_records == 0
        assert s.count() == BATCHES * PER_BATCH + 1
