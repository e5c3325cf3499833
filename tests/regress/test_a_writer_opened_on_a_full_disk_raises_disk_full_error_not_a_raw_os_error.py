"""Opening a writer on a full disk raised a raw ``OSError(ENOSPC)`` from whichever file it
was writing (the writer lock's pid, the state file, ...), not an ngstore error, and
nothing said whether the store was still usable. It now raises ``DiskFullError`` with
the file, in state "not opened" (an existing store: the next open recovers it) or "not
created" (a new one: the next open creates it), and the store opens once space is freed."""
from __future__ import annotations

import errno

import numpy as np
from conftest import make_tokens
from walfaults import FaultyIO, NoSyncIO

import ngstore

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30)


def test_opening_an_existing_store_on_a_full_disk(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(10)), durability="sync")
    io = FaultyIO({"write": 1}, error=errno.ENOSPC, path_glob="state.tmp", inner=NoSyncIO())
    try:
        ngstore.open(path, io=io, **OPEN)
    except ngstore.DiskFullError as exc:
        assert exc.state is ngstore.StoreState.NOT_OPENED and exc.filename.endswith("state")
        assert isinstance(exc, ngstore.NgStoreError) and exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the open on a full disk raised nothing")
    with ngstore.open(path, **OPEN) as r:
        assert len(r) == 10


def test_creating_a_store_on_a_full_disk(tmp_path):
    path = str(tmp_path / "new")
    io = FaultyIO({"write": 1}, error=errno.ENOSPC, inner=NoSyncIO())
    try:
        ngstore.open(path, io=io, **OPEN)
    except ngstore.DiskFullError as exc:
        assert exc.state is ngstore.StoreState.NOT_CREATED and exc.filename.startswith(path)
    else:
        raise AssertionError("the creation on a full disk raised nothing")
    with ngstore.open(path, **OPEN) as r:
        r.put_tokens(make_tokens([1]), durability="sync")
        assert len(r) == 1
