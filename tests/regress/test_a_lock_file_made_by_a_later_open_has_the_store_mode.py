"""The merge of the full-disk work gave LMDB's lock file disk blocks before LMDB maps it
(``kv._back_lock_file``), creating it when it is missing -- with mode 0o644, whatever the
store's mode (docs/operations.md §7). A store's directory holds no lock.mdb after a restore
from a backup or when someone removed it; the next writer made a world-readable one. It is
made with the store's lock mode now (0600 for a private store, 0660 for mode=0o640)."""
from __future__ import annotations

import os
import stat

import pytest

import ngstore
from ngstore.fileio import lock_mode

OPEN = dict(observability=False, crash_handlers=False)


@pytest.mark.parametrize("mode", [None, 0o640])
def test_a_lock_file_made_by_a_later_open_gets_the_store_lock_mode(tmp_path, mode):
    path = str(tmp_path / "s")
    with ngstore.open(path, mode=mode, **OPEN):
        pass
    lock = os.path.join(path, "lock.mdb")
    os.unlink(lock)
    old = os.umask(0)  # the bits must come from the store, not from the umask
    try:
        with ngstore.open(path, **OPEN):
            assert stat.S_IMODE(os.stat(lock).st_mode) == lock_mode(0o600 if mode is None else mode)
    finally:
        os.umask(old)
