"""On a full disk LMDB's mdb_txn_commit fails with EIO (it reports a short write as EIO),
and the store said ``NgStoreError(... mdb_txn_commit: Input/output error)``: a full disk
reported as a hardware fault. The applier now names it: when the file system holding
data.mdb is (almost) full, the error is a ``DiskFullError`` (ENOSPC, data.mdb's path, the
store stopped, what to do), and every later write raises one too until the store is
reopened; reopening holds every acknowledged commit."""
from __future__ import annotations

import errno

import numpy as np
from conftest import make_tokens
from walfaults import FaultyIO, NoSyncIO

import ngstore

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30,
            apply_interval=3600.0)


class FullDiskIO(FaultyIO):
    """LMDB's commit fails with EIO, on a file system with nothing free."""

    def free_bytes(self, path: str) -> int | None:
        return 0


def test_an_lmdb_eio_on_a_full_file_system_is_a_disk_full_error(tmp_path):
    path = str(tmp_path / "s")
    io = FullDiskIO(error=errno.EIO, inner=NoSyncIO())
    s = ngstore.open(path, io=io, **OPEN)
    s.put_tokens(make_tokens(np.arange(10)), durability="sync")
    io.fail_on = {"lmdb_commit": io.counts["lmdb_commit"] + 1}
    s.put_tokens(make_tokens(np.arange(10, 20)), durability="sync")  # in the log: acknowledged
    errors = []
    for op in (s.count, lambda: s.put_tokens(make_tokens([99]), durability="sync")):
        try:
            op()
        except Exception as exc:
            errors.append(exc)
    assert len(errors) == 2, errors
    for exc in errors:
        assert isinstance(exc, ngstore.DiskFullError), repr(exc)
        assert "Input/output error" not in str(exc).partition("(")[0], str(exc)
        assert exc.errno == errno.ENOSPC and exc.filename.endswith("data.mdb")
        assert exc.state is ngstore.StoreState.STOPPED
        assert "free space" in str(exc) and "open it again" in str(exc)
    io.fail_on = {}
    s.close()
    with ngstore.open(path, **OPEN) as r:
        assert len(r) == 20 and 99 not in r
