"""``close()`` on a full disk raised the raw ``OSError(ENOSPC)`` of the final checkpoint
(the new log segment it starts, or the checkpoint file), saying nothing of the store. It
now raises ``DiskFullError`` in state "closed": the store is closed without its final
checkpoint, its log still holds every acknowledged batch, and the next open -- once space
is freed -- recovers all of them."""
from __future__ import annotations

import errno

import numpy as np
from conftest import make_tokens
from walfaults import FaultyIO, NoSyncIO

import ngstore

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30)


def test_a_full_disk_during_the_final_checkpoint_is_a_disk_full_error_and_the_store_reopens(tmp_path):
    for glob in ("*.wal", "checkpoint.tmp", "state.tmp"):
        path = str(tmp_path / glob.replace("*", "x"))
        io = FaultyIO(error=errno.ENOSPC, path_glob=glob, inner=NoSyncIO())
        s = ngstore.open(path, io=io, **OPEN)
        for i in range(5):
            s.put_tokens(make_tokens(np.arange(10) + 10 * i), durability=("sync", "async", "none")[i % 3])
        io.fail_on = {"write": io.counts["write"] + 1}
        try:
            s.close()
        except ngstore.DiskFullError as exc:
            assert exc.state is ngstore.StoreState.CLOSED, exc
            assert exc.errno == errno.ENOSPC and exc.filename.startswith(path)
            assert "nothing acknowledged is lost" in str(exc) and "open it again" in str(exc)
        else:
            raise AssertionError(f"{glob}: close on a full disk raised nothing")
        assert io.fired, glob
        with ngstore.open(path, **OPEN) as r:  # space freed: the real file system
            assert r.check().ok
            assert len(r) == 50, f"{glob}: {len(r)} tokens"
