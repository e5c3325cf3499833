"""A writer that opened a store holding a reflex table attached it zero-copy, under a read
lease, and kept it after ``close()``: the writer's objects form reference cycles, so the
lease -- a read transaction and the LMDB environment -- lived until a garbage collection.
At interpreter exit that collection freed the environment before the views into its map,
and a process that had opened such a store three times died of SIGSEGV after its last line.
Found by the corruption campaign (its first base store crashed the test process at exit)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from fuzz import stores

import ngstore
from ngstore import kv as kv_module
from ngstore.records import CONNECTION_DTYPE


def _store_with_reflexes(path: str) -> None:
    states = np.random.default_rng(3).uniform(-1, 1, (5, 8)).astype(np.float32)
    conns = np.zeros(5, CONNECTION_DTYPE)
    conns["token_a"], conns["token_b"], conns["confidence"] = np.arange(5), np.arange(5) + 100, 200
    with ngstore.open(path) as s, s.batch() as b:
        b.put_reflexes(states, conns)


def test_closing_the_writer_closes_the_environment_at_once(tmp_path):
    path = str(tmp_path / "s")
    _store_with_reflexes(path)
    s = ngstore.open(path)
    assert s.reflex_table() is not None
    s.close()
    assert s._kv.path not in kv_module._registry, "the closed writer's environment is still open"


def test_a_process_that_opened_the_store_several_times_exits_cleanly(tmp_path):
    path = str(tmp_path / "s")
    stores.make(path)  # one of everything: reflexes, deletions, learning
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(stores.__file__)!r})
        import ngstore, stores
        for _ in range(3):
            with ngstore.open({path!r}, **stores.OPTIONS) as s:
                s.count()
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
