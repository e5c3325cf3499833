"""A stored ``connections`` or ``events`` value that was not exactly one record long made
the scans that read it (``neighbors``, ``connections_between``, ``get_connection``,
``connections.to_array``, ``events.since``) raise numpy's ``ValueError`` ("buffer size must
be a multiple of element size") -- or, for a value two records long, return a record that
was never written. Found by the ``connection_value`` and ``event_value`` fuzz targets."""
from __future__ import annotations

import numpy as np
import pytest

import ngstore
from ngstore.kv import KV
from ngstore.layout import DB_CONNECTIONS, DB_EVENTS, conn_key, event_key
from ngstore.records import CONNECTION_DTYPE, EVENT_DTYPE


def _store(path: str) -> None:
    conns = np.zeros(2, CONNECTION_DTYPE)
    conns["token_a"], conns["token_b"], conns["connection_type"] = [1, 1], [9, 12], [0, 2]
    with ngstore.open(path) as s:
        s.put_connections(conns)
        s.write_events(np.zeros(3, EVENT_DTYPE))


def _put(path: str, db: bytes, key: bytes, value: bytes) -> None:
    kv = KV(path, readonly=False)
    try:
        handle = kv.dbs[db]
        kv.write(lambda txn: txn.put(key, value, db=handle))
    finally:
        kv.close()


@pytest.mark.parametrize("size", [63, 65, 128])
def test_every_scan_of_a_connection_value_of_the_wrong_length_raises_corruption_error(tmp_path, size):
    path = str(tmp_path / "s")
    _store(path)
    _put(path, DB_CONNECTIONS, conn_key(1, 9, 0), b"\x01" * size)
    with ngstore.open(path, readonly=True) as r, r.snapshot() as snap:
        for read in (lambda: r.neighbors(1), lambda: r.neighbors(9, "in"), lambda: r.connections_between(1, 9),
                     lambda: r.get_connection(1, 9, 0), lambda: r.get_connections([(1, 9, 0)]),
                     lambda: snap.connections.to_array()):
            wrong = f"(connection .* is|connections key .*: a value of) {size} bytes"
            with pytest.raises(ngstore.CorruptionError, match=wrong):
                read()


@pytest.mark.parametrize("size", [0, 127, 256])
def test_a_scan_of_an_event_value_of_the_wrong_length_raises_corruption_error(tmp_path, size):
    path = str(tmp_path / "s")
    _store(path)
    _put(path, DB_EVENTS, event_key(1), b"\x02" * size)
    with ngstore.open(path, readonly=True) as r, r.snapshot() as snap, \
            pytest.raises(ngstore.CorruptionError, match=f"(event .* is|events key .*: a value of) {size} bytes"):
        snap.events.since(0)
