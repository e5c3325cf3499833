"""A read-only handle of a store holding reflexes kept its reflex table (and so a read
transaction and the LMDB environment) after ``close()`` until the handle object was garbage
collected: a writer opened next in the same process got StoreLockedError ("already open
read-only in this process")."""
from __future__ import annotations

import numpy as np
from conftest import make_tokens

import ngstore
from ngstore.connections import Connection

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None)


def test_a_writer_opens_while_the_closed_reader_object_is_still_referenced(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(10)))
        with s.batch() as b:
            b.put_reflexes(np.zeros((1, 8), np.float32), Connection(1, 2).record)
    reader = ngstore.open(path, readonly=True, **OPEN)
    assert reader.reflex_table() is not None
    reader.close()
    with ngstore.open(path, **OPEN) as w:  # `reader` is still referenced here
        assert len(w.get_tokens(np.arange(10))) == 10
