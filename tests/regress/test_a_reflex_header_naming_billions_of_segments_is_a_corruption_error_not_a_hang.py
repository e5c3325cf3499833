"""``reflex_store.attach`` read one LMDB value per segment the stored reflex header names,
before anything validated that header: a header damaged to name 2³² segments made a
read-only open (or ``refresh``) loop four billion times -- a hang. Now it reads the stored
segments up to the first missing one and ``ReflexTable.attach`` refuses the count with a
CorruptionError. Found by the ``store_reflexes`` fuzz target (its per-input timeout)."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import ngstore
from ngstore import reflex_store
from ngstore.kv import KV
from ngstore.layout import DB_REFLEXES, REFLEX_HEADER_KEY
from ngstore.records import CONNECTION_DTYPE


def _store_with_reflexes(path: str) -> int:
    states = np.random.default_rng(3).uniform(-1, 1, (5, 8)).astype(np.float32)
    conns = np.zeros(5, CONNECTION_DTYPE)
    conns["token_a"], conns["token_b"], conns["confidence"] = np.arange(5), np.arange(5) + 100, 200
    with ngstore.open(path) as s, s.batch() as b:
        b.put_reflexes(states, conns)
    kv = KV(path, readonly=True)
    try:
        with kv.env.begin(db=kv.dbs[DB_REFLEXES]) as txn:
            return sum(1 for k, _v in txn.cursor() if k != REFLEX_HEADER_KEY)
    finally:
        kv.close()


@pytest.mark.parametrize("fix_crc", [False, True])
def test_a_header_naming_four_billion_segments_is_a_corruption_error(tmp_path, monkeypatch, fix_crc):
    path = str(tmp_path / "s")
    stored = _store_with_reflexes(path)
    kv = KV(path, readonly=False)
    try:
        db = kv.dbs[DB_REFLEXES]
        with kv.env.begin(db=db) as txn:
            head = bytearray(txn.get(REFLEX_HEADER_KEY))
        struct.pack_into("<I", head, 28, 0xFFFFFFFF)  # record segments
        if fix_crc:
            struct.pack_into("<I", head, 252, zlib.crc32(head[:252]))
        kv.write(lambda txn: txn.put(REFLEX_HEADER_KEY, bytes(head), db=db))
        # Count the segment keys asked for: every stored one and the first missing one, no
        # more (the old loop went on for 2^32 of them).
        asked = []
        real_key = reflex_store.reflex_segment_key

        def counting_key(i: int) -> bytes:
            asked.append(i)
            assert len(asked) <= stored + 1, "attach reads segments the store does not hold"
            return real_key(i)

        monkeypatch.setattr(reflex_store, "reflex_segment_key", counting_key)
        with pytest.raises(ngstore.CorruptionError, match=r"reflex table|reflexes key"):
            reflex_store.attach(kv)
    finally:
        kv.close()
