"""``store.resize_reflexes(n)`` is a logged batch: it survives kill -9 and replays (issue 16).

A child fills a small reflex table, checkpoints, resizes it, writes more reflexes than the
old capacity held, prints a digest of the table (every entry: record number, keys, tick,
connection, state) and kills itself with SIGKILL before any further checkpoint. Then:

* reopened as after a process crash, LMDB's newest state is trusted: the same table;
* reopened as after a power loss (another boot id), LMDB is rolled back to the checkpoint,
  which predates the resize, and the log replays the resize and the puts after it: the
  same table again, entry for entry -- the resize applies deterministically.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

from walfaults import AnotherBoot

import ngstore

CHILD = textwrap.dedent("""
    import hashlib, os, signal, sys
    import numpy as np, ngstore
    from ngstore.records import CONNECTION_DTYPE

    def conns(n, start):
        c = np.zeros(n, CONNECTION_DTYPE)
        c["token_a"] = np.arange(start, start + n); c["token_b"] = c["token_a"] + 1
        c["confidence"] = 230; c["mutability"] = 1
        return c

    def states(n, seed):
        return np.random.default_rng(seed).uniform(-1, 1, (n, 8)).astype(np.float32)

    s = ngstore.open(sys.argv[1], reflex_capacity=100, reflex_eviction="refuse",
                     checkpoint_interval=3600, checkpoint_bytes=1 << 30)
    with s.batch() as b:
        b.put_reflexes(states(100, 0), conns(100, 0))
    s.checkpoint()                       # the last checkpoint: before the resize
    s.resize_reflexes(1000)
    for k in range(3):
        with s.batch() as b:
            b.put_reflexes(states(100, k + 1), conns(100, 1000 * (k + 1)))
    t = s.reflex_table()
    print(hashlib.sha256(t.entries().tobytes()).hexdigest(), len(t), t.capacity, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _digest(s: ngstore.Store) -> tuple[str, int, int]:
    t = s.reflex_table()
    assert t is not None
    return hashlib.sha256(t.entries().tobytes()).hexdigest(), len(t), t.capacity


def test_a_resize_survives_kill_9_and_replays_after_a_power_loss(tmp_path):
    path = str(tmp_path / "store")
    r = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    digest, live, capacity = r.stdout.split()
    expected = (digest, int(live), int(capacity))
    assert expected[1:] == (400, 1000)
    lost_power = str(tmp_path / "lost-power")
    shutil.copytree(path, lost_power)  # the same files, opened as after a power loss below

    with ngstore.open(path) as s:  # a process crash: LMDB is current, nothing to roll back
        assert _digest(s) == expected and s.stats()["reflex_capacity"] == 1000
        assert not s.recovery.power_loss_rollback
        assert s.check().ok

    with ngstore.open(lost_power, io=AnotherBoot()) as s:
        assert s.recovery.power_loss_rollback and s.recovery.replayed_records == 4  # the resize and 3 puts
        assert _digest(s) == expected and s.stats()["reflex_capacity"] == 1000
        assert s.check().ok
    with ngstore.open(lost_power) as s:  # and once more, from the checkpoint the replay made
        assert _digest(s) == expected
    assert os.path.isdir(lost_power)
