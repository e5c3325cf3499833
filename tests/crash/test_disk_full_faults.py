"""A full disk, a read-only file system and a permission error, injected through the file
seam (``FaultyIO(error=...)``): each reaches the caller as its named error -- never a raw
``OSError`` or ``lmdb.Error`` -- with the file's path, the store's state afterwards and
what to do; and once "space is freed" (the injection turned off) the store opens again and
holds every acknowledged batch.

For open and close the Nth call of a kind fails for N = 1, 2, ... until the operation
completes (SQLite's fail-the-Nth-I/O loop), so every failure point of the operation is
visited.
"""
from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest
from conftest import make_tokens
from storefaults import FAST
from walfaults import FaultyIO, NoSyncIO

import ngstore
from ngstore.errors import (
    DiskFullError,
    NgStoreError,
    OutcomeUnknownError,
    ReadOnlyFileSystemError,
    StorageError,
    StoragePermissionError,
    StoreState,
)

OPEN = dict(FAST, segment_bytes=4096, apply_interval=3600.0)
#: every kind of call an open or a close makes on the store's files
KINDS = ("open", "write", "truncate", "allocate", "fdatasync", "fsync", "fsync_dir", "rename", "unlink", "mkdir",
         "lmdb_commit", "lmdb_sync")


def _batch(i: int) -> np.ndarray:
    return make_tokens(np.arange(10) + 100 * i, weight=np.float32(i + 1))


def _assert_holds(path: str, acked: list[int], maybe: list[int] = ()) -> None:
    """Reopened on the real file system: sound, every acknowledged batch whole, each
    ``maybe`` batch whole or absent, and the store takes writes again."""
    with ngstore.open(path, **OPEN) as r:
        report = r.check()
        assert report.ok, str(report)
        for i in acked:
            got = r.get_tokens(_batch(i)["id"])
            assert np.array_equal(got.data, _batch(i)), f"acknowledged batch {i} lost or changed"
        for i in maybe:
            present = [int(t) in r for t in _batch(i)["id"]]
            assert all(present) or not any(present), f"batch {i} partly applied: {present}"
        r.put_tokens(make_tokens([99_999]), durability="sync")


def _assert_named(exc: BaseException, cls: type, code: int, state: StoreState) -> None:
    assert isinstance(exc, cls) and isinstance(exc, NgStoreError) and isinstance(exc, OSError), repr(exc)
    assert exc.errno == code, repr(exc)
    assert exc.filename and os.path.isabs(exc.filename), repr(exc)
    assert exc.state is state, f"{exc.state} != {state}: {exc}"
    assert "What to do:" in str(exc) or "what to do:" in str(exc), str(exc)


def _writer(path: str, io: FaultyIO, n: int = 3) -> tuple[ngstore.Store, list[int]]:
    s = ngstore.open(path, io=io, **OPEN)
    for i in range(n):
        s.put_tokens(_batch(i), durability="sync")
    return s, list(range(n))


# -------------------------------------------------------------------- commits --

def test_a_full_disk_while_appending_to_the_log_stops_the_store_and_loses_nothing_acknowledged(tmp_path):
    path = str(tmp_path / "s")
    io = FaultyIO(error=errno.ENOSPC, path_glob="*.wal", inner=NoSyncIO())
    s, acked = _writer(path, io)
    io.fail_on = {"write": io.counts["write"] + 1}
    with pytest.raises(DiskFullError) as failed:
        s.put_tokens(_batch(3), durability="sync")
    _assert_named(failed.value, DiskFullError, errno.ENOSPC, StoreState.STOPPED)
    assert failed.value.filename.endswith(".wal") and failed.value.outcome_known is False
    assert "free space on the file system" in str(failed.value)
    io.fail_on = {}  # space is freed: the store stays stopped until reopened
    with pytest.raises(DiskFullError) as refused:
        s.put_tokens(_batch(4), durability="sync")
    _assert_named(refused.value, DiskFullError, errno.ENOSPC, StoreState.STOPPED)
    assert refused.value.outcome_known is True and "stopped accepting writes" in str(refused.value)
    assert "close the store and open it again" in str(refused.value)
    s.close()
    _assert_holds(path, acked, maybe=[3])


def test_a_full_disk_while_syncing_the_log_is_an_outcome_unknown_disk_full_error(tmp_path):
    path = str(tmp_path / "s")
    io = FaultyIO(error=errno.ENOSPC, path_glob="*.wal", inner=NoSyncIO())
    s, acked = _writer(path, io)
    io.fail_on = {"fdatasync": io.counts["fdatasync"] + 1}
    with pytest.raises(OutcomeUnknownError) as failed:
        s.put_tokens(_batch(3), durability="sync")
    assert isinstance(failed.value, DiskFullError)
    _assert_named(failed.value, DiskFullError, errno.ENOSPC, StoreState.STOPPED)
    assert failed.value.position > 0
    io.fail_on = {}
    s.close()
    _assert_holds(path, acked, maybe=[3])


@pytest.mark.parametrize(("code", "free", "cls"), [
    (errno.ENOSPC, None, DiskFullError),
    (errno.EIO, 0, DiskFullError),          # LMDB's short write on a full file system
    (errno.EROFS, None, ReadOnlyFileSystemError),
])
def test_a_failed_lmdb_commit_in_the_applier_stops_writes_with_a_named_error(tmp_path, code, free, cls):
    path = str(tmp_path / "s")

    class FullIO(FaultyIO):
        def free_bytes(self, p: str) -> int | None:
            return free if free is not None else super().free_bytes(p)

    io = FullIO(error=code, inner=NoSyncIO())
    s, acked = _writer(path, io)
    io.fail_on = {"lmdb_commit": io.counts["lmdb_commit"] + 1}
    s.put_tokens(_batch(3), durability="sync")   # acknowledged: it is in the log
    acked.append(3)
    with pytest.raises(cls) as refused:          # a read that waits for the applier
        s.count()
    _assert_named(refused.value, cls, errno.ENOSPC if cls is DiskFullError else code, StoreState.STOPPED)
    assert refused.value.filename.endswith("data.mdb")
    with pytest.raises(cls) as again:            # and every later commit
        s.put_tokens(_batch(4), durability="sync")
    assert again.value.state is StoreState.STOPPED and again.value.outcome_known is True
    io.fail_on = {}
    s.close()
    _assert_holds(path, acked)


def test_a_permission_error_is_a_storage_permission_error_and_a_permission_error(tmp_path):
    path = str(tmp_path / "s")
    io = FaultyIO(error=errno.EACCES, path_glob="*.wal", inner=NoSyncIO())
    s, acked = _writer(path, io)
    io.fail_on = {"write": io.counts["write"] + 1}
    with pytest.raises(PermissionError) as failed:
        s.put_tokens(_batch(3), durability="sync")
    _assert_named(failed.value, StoragePermissionError, errno.EACCES, StoreState.STOPPED)
    io.fail_on = {}
    s.close()
    _assert_holds(path, acked, maybe=[3])


def test_a_full_disk_during_a_checkpoint_stops_writes_and_loses_nothing(tmp_path):
    path = str(tmp_path / "s")
    io = FaultyIO(error=errno.ENOSPC, path_glob="checkpoint.tmp", inner=NoSyncIO())
    s, acked = _writer(path, io)
    io.fail_on = {"write": io.counts["write"] + 1}
    with pytest.raises(DiskFullError) as failed:
        s.checkpoint()
    _assert_named(failed.value, DiskFullError, errno.ENOSPC, StoreState.STOPPED)
    assert failed.value.filename.endswith("checkpoint")
    with pytest.raises(DiskFullError):
        s.put_tokens(_batch(3), durability="sync")
    io.fail_on = {}
    s.close()
    _assert_holds(path, acked)


# ------------------------------------------------------------------ open, close --

def _fail_nth(run, kinds=KINDS, error=errno.ENOSPC, limit=400):
    """Calls ``run(io)`` with the Nth call of each kind failing, N = 1, 2, ... until a run
    completes without reaching N; yields (kind, n, io, the error raised or None)."""
    for kind in kinds:
        n = 0
        while True:
            n += 1
            assert n < limit, f"{kind} still failing at N={n}"
            io = FaultyIO(error=error, inner=NoSyncIO())
            io.fail_on = {kind: n}
            try:
                run(io)
                err = None
            except Exception as exc:
                err = exc
            yield kind, n, io, err
            if not io.fired:
                break


def test_creating_a_store_on_a_full_disk_fails_cleanly_and_creates_it_once_space_is_freed(tmp_path):
    points = 0
    fired_kinds = set()
    for kind, n, io, err in _fail_nth(lambda io: ngstore.open(str(tmp_path / "new"), io=io, **OPEN).close()):
        path = str(tmp_path / "new")
        if io.fired:
            points += 1
            fired_kinds.add(kind)
            assert err is not None, f"{kind} #{n} failed and the open said nothing"
            if isinstance(err, StorageError):
                # a failure after the marker, in the close that follows, is "closed"
                assert err.state in (StoreState.NOT_CREATED, StoreState.CLOSED), f"{kind} #{n}: {err}"
                _assert_named(err, DiskFullError, errno.ENOSPC, err.state)
            else:
                raise AssertionError(f"{kind} #{n}: not a named error: {err!r}")
            with ngstore.open(path, **OPEN) as r:   # space freed: opens (creating it again if needed)
                r.put_tokens(_batch(0), durability="sync")
            _assert_holds(path, [0])
        else:
            assert err is None, f"{kind}: {err!r} without an injected failure"
        shutil.rmtree(path, ignore_errors=True)
    assert points >= 10
    # LMDB's lock file getting its blocks, the log, the state files and LMDB's own commit
    assert {"allocate", "write", "fdatasync", "rename", "lmdb_commit"} <= fired_kinds, fired_kinds


def test_opening_a_store_on_a_full_disk_fails_cleanly_and_it_opens_once_space_is_freed(tmp_path):
    base = str(tmp_path / "base")
    s = ngstore.open(base, **OPEN)
    for i in range(4):
        s.put_tokens(_batch(i), durability="sync")
    s.flush()
    # no close: the log holds the batches, as after a crash, so the open has work to do
    s._writer.release()  # stop the applier without the closing checkpoint
    s._kv.close()
    s._directory.release()
    path = str(tmp_path / "s")

    def run(io: FaultyIO) -> None:
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(base, path)
        ngstore.open(path, io=io, **OPEN).close()

    points = 0
    for kind, n, io, err in _fail_nth(run):
        if io.fired:
            points += 1
            # a failure the open can do without (reading the state file: it then assumes
            # the worst and rolls back to the checkpoint) raises nothing
            if err is not None:
                assert isinstance(err, StorageError), f"{kind} #{n}: not a named error: {err!r}"
                assert err.state in (StoreState.NOT_OPENED, StoreState.CLOSED), f"{kind} #{n}: {err}"
                _assert_named(err, DiskFullError, errno.ENOSPC, err.state)
            _assert_holds(path, [0, 1, 2, 3])
        else:
            assert err is None, f"{kind}: {err!r} without an injected failure"
    assert points >= 5


def test_closing_a_store_on_a_full_disk_raises_a_named_error_and_leaves_it_openable(tmp_path):
    points = 0
    for kind in KINDS:
        n = 0
        while True:
            n += 1
            assert n < 200
            path = str(tmp_path / f"{kind}-{n}")
            io = FaultyIO(error=errno.ENOSPC, inner=NoSyncIO())
            s = ngstore.open(path, io=io, **OPEN)
            for i in range(5):
                s.put_tokens(_batch(i), durability=("sync", "async", "none")[i % 3])
            io.fail_on = {kind: io.counts[kind] + n}
            try:
                s.close()
                err = None
            except Exception as exc:
                err = exc
            if not io.fired:
                assert err is None
                break
            points += 1
            assert isinstance(err, StorageError), f"{kind} #{n}: close raised {err!r}"
            _assert_named(err, DiskFullError, errno.ENOSPC, StoreState.CLOSED)
            assert "nothing acknowledged is lost" in str(err)
            assert repr(s).endswith("closed>")
            _assert_holds(path, list(range(5)))
            shutil.rmtree(path, ignore_errors=True)
    assert points >= 5
