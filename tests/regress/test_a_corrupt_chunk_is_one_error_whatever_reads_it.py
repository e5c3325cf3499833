"""A token chunk value of the wrong length made ``snap.tokens.column()`` raise
``NativeError`` while ``chunks()`` raised ``CorruptionError``: one cause, two errors.
``NativeError`` was also missing from ``ngstore.__all__``."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.kv import KV
from ngstore.layout import DB_TOKENS, ChunkLayout


def test_every_read_of_a_chunk_of_the_wrong_length_raises_corruption_error(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, chunk_slots=64) as s:
        s.put_tokens(make_tokens(np.arange(200)))
    kv = KV(path, readonly=False)
    try:
        db = kv.dbs[DB_TOKENS]
        kv.write(lambda txn: txn.put(ChunkLayout.key(1), b"\x01" * 100, db=db))
    finally:
        kv.close()
    with ngstore.open(path, readonly=True) as r, r.snapshot() as snap:
        for read in (lambda: list(snap.tokens.chunks()), lambda: snap.tokens.column("weight"),
                     lambda: snap.tokens.get([70]), lambda: snap.tokens.to_array(),
                     lambda: r.get_token(70)):
            with pytest.raises(ngstore.CorruptionError, match="token chunk 1"):
                read()


def test_native_error_is_public():
    assert "NativeError" in ngstore.__all__ and issubclass(ngstore.NativeError, ngstore.NgStoreError)
