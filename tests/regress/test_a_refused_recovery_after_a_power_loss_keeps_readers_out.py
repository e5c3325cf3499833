"""docs/operations.md §4.2 warned that after a power loss, a recovery refused half-way (a
damaged record in the middle of the log) left the ``state`` file naming the current boot, so
read-only handles then opened the rolled-back, older contents as if they were current. The
state file is rewritten only after the log has been replayed; until a recovery succeeds,
readers keep refusing the store, and a second attempt rolls back and replays again."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from walfaults import AnotherBoot

import ngstore
from ngstore.wal import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28)

WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    import ngstore
    from ngstore.records import TOKEN_DTYPE
    from walfaults import AnotherBoot
    s = ngstore.open(sys.argv[1], io=AnotherBoot("the-boot-before"), observability=False,
                     crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 28,
                     checkpoint_bytes=1 << 40, checkpoint_interval=1e9)
    for i in range(6):
        a = np.zeros(4, dtype=TOKEN_DTYPE)
        a["id"] = np.arange(4) + 10 * i
        s.put_tokens(a, durability="sync")
    os._exit(0)
""")


def test_readers_refuse_the_store_until_a_recovery_succeeds(tmp_path):
    path = str(tmp_path / "s")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", WRITER, path], check=True, env=env, timeout=120)
    wal = os.path.join(path, "wal")
    seg = os.path.join(wal, sorted(os.listdir(wal))[0])
    with open(seg, "r+b") as f:  # one byte of the first record's payload
        f.seek(SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE + 5)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    now = AnotherBoot("the-boot-after")
    for _attempt in range(2):
        with pytest.raises(ngstore.CorruptionError):
            ngstore.open(path, io=now, **OPEN)
        with pytest.raises(ngstore.NgStoreError, match="needs recovery"):
            ngstore.open(path, readonly=True, io=now, **OPEN)
    with ngstore.open(path, io=now, recovery="salvage", **OPEN) as s:
        assert s.recovery.power_loss_rollback
        assert len(s) == 20  # the first batch's 4 tokens are lost with its record
        assert s.check().ok
    with ngstore.open(path, readonly=True, io=now, **OPEN) as r:
        assert len(r) == 20
