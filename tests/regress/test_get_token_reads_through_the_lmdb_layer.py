"""get_token began its read transaction with ``env.begin`` directly, bypassing
``KV.begin_read``: its transaction escaped the reader accounting that map growth relies
on, and an LMDB error from the read reached the caller untranslated (a raw
``lmdb.CorruptedError`` instead of ngstore's ``CorruptionError``)."""
from __future__ import annotations

import struct

import lmdb
import numpy as np
import pytest
from conftest import make_tokens

import ngstore


def _corrupt_tokens_root(path: str) -> None:
    """Clears the page flags of the ``tokens`` database's root page: LMDB then reports
    MDB_CORRUPTED for any lookup in it (it is neither a branch nor a leaf page)."""
    env = lmdb.open(path, subdir=True, readonly=True, max_dbs=8, lock=False)
    with env.begin() as txn:
        record = txn.get(b"tokens")  # the MDB_db record of the named database, in the main DB
        psize = env.stat()["psize"]
    env.close()
    root = struct.unpack_from("<Q", record, 40)[0]  # md_root
    with open(f"{path}/data.mdb", "r+b") as f:
        f.seek(root * psize + 10)  # mp_flags
        f.write(b"\0\0")


def test_a_damaged_tree_under_get_token_is_a_corruption_error(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path) as s:
        s.put_tokens(make_tokens(np.arange(3000)))
    _corrupt_tokens_root(path)
    with ngstore.open(path, readonly=True) as r:
        with pytest.raises(ngstore.CorruptionError):
            r.get_token(5)
        with pytest.raises(ngstore.CorruptionError):
            r.contains(5)
