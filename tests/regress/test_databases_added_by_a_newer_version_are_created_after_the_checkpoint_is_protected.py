"""A writer opening a store made before a database existed (``learn``, ``spatial``) created
it while opening LMDB, before protecting its checkpoint: after a process crash LMDB is ahead
of the last checkpoint and that commit could reuse pages the checkpoint still needs, so a
power loss in the next moments would roll back onto a damaged tree. Missing databases are
now created in one commit after the checkpoint is protected."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import lmdb
from walfaults import RecordingIO

import ngstore
from ngstore.layout import CHECKPOINT_FILE, DB_LEARN

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)

WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import ngstore
    from ngstore.records import TOKEN_DTYPE
    s = ngstore.open(sys.argv[1], observability=False, crash_handlers=False, max_tokens=None,
                     max_bytes=None, map_size=1 << 28, checkpoint_bytes=1 << 40, checkpoint_interval=1e9)
    for i in range(5):
        a = np.zeros(50, dtype=TOKEN_DTYPE)
        a["id"] = np.arange(50) + 100 * i
        s.put_tokens(a, durability="sync")
    s.count()  # everything applied to LMDB: LMDB is ahead of the checkpoint
    os._exit(0)
""")


def test_a_missing_database_is_created_only_after_a_checkpoint_of_the_crashed_state(tmp_path):
    path = str(tmp_path / "s")
    subprocess.run([sys.executable, "-c", WRITER, path], check=True, timeout=120)
    env = lmdb.open(path, max_dbs=32, map_size=1 << 28, subdir=True)  # the store as an older version made it
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(DB_LEARN, txn=txn), delete=True)
    env.close()

    class Seen(RecordingIO):
        def lmdb_commit(self, txn, kv):  # type: ignore[no-untyped-def]
            super().lmdb_commit(txn, kv)
            self.mark("lmdb_commit")

    rec = Seen(str(tmp_path))
    with ngstore.open(path, io=rec, **OPEN) as s:
        ops = list(rec.ops)
        assert len(s) == 250
        assert s.check().ok
    ckpt = os.path.join(os.path.realpath(path), CHECKPOINT_FILE)
    first_commit = next(i for i, o in enumerate(ops) if o.kind == "mark" and o.label == "lmdb_commit")
    first_checkpoint = next(i for i, o in enumerate(ops) if o.kind == "rename" and o.dst == ckpt)
    assert first_checkpoint < first_commit
    env = lmdb.open(path, max_dbs=32, readonly=True, lock=False, subdir=True)
    try:
        env.open_db(DB_LEARN, create=False)  # created
    finally:
        env.close()
