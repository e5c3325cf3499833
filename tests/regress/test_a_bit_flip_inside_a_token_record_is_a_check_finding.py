"""Bit rot was silent: a flipped bit inside a present token's record (its weight, say) left
every structural rule true -- the chunk's length, its slot ids, its presence bits -- so
``check()`` reported the store sound and every read returned the rotten token. Every LMDB
value now ends in an XXH3-64 checksum of its record region and key (format.md §3.0):
``check()`` reports the flip as a finding naming the chunk's key and where the value lies in
data.mdb, and a read under ``verify="read"`` raises instead of returning it."""
from __future__ import annotations

import os

import lmdb
import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore.layout import DB_TOKENS, ChunkLayout

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30)


def test_a_bit_flip_inside_a_token_record_is_a_check_finding(tmp_path):
    path = str(tmp_path / "s")
    layout = ChunkLayout(64)
    with ngstore.open(path, chunk_slots=64, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(64 * 3)))
    key = layout.key(1)
    env = lmdb.open(path, max_dbs=32, map_size=1 << 30)
    with env.begin(write=True, db=env.open_db(DB_TOKENS)) as txn:
        value = bytearray(txn.get(key))
        value[10 * 64 + 55] ^= 0x10  # a bit of slot 10's weight: id 74 stays a valid token
        txn.put(key, bytes(value))
    env.close()
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        offset = f.read().find(bytes(value))
    with ngstore.open(path, readonly=True, verify="read", **OPEN) as s:
        report = s.check()
        with pytest.raises(ngstore.CorruptionError, match=r"tokens key 00000001\): checksum mismatch"):
            s.get_token(74)
    assert not report.ok
    (finding,) = report.findings
    assert finding.file == "data.mdb" and finding.where == "tokens chunk 1"
    assert "tokens key 00000001" in finding.reason and finding.offset == offset
