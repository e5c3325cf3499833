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


def _store_with_reflexes(path: str) -> np.ndarray:
    """A store holding five reflexes; returns their states."""
    states, conns = stores.reflexes(5)
    with ngstore.open(path) as s, s.batch() as b:
        b.put_reflexes(states, conns)
    return states


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


def test_a_table_handed_out_keeps_its_memory_after_close_and_lets_go_when_dropped(tmp_path):
    """The table holds the read lease of the LMDB values it reads, not a wrapper the store
    drops: a table a caller kept answers after the store's close, and the environment
    closes when the last such table goes."""
    path = str(tmp_path / "s")
    states = _store_with_reflexes(path)
    for readonly in (False, True):
        s = ngstore.open(path, readonly=readonly)
        table = s.reflex_table()
        assert table is not None
        before = table.lookup_batch(states).found.copy()
        assert before.all()
        s.close()
        assert s._kv.path in kv_module._registry, "the kept table's lease keeps the environment"
        assert (table.lookup_batch(states).found == before).all()
        del table
        assert s._kv.path not in kv_module._registry, "the last table let go, but the environment is open"


def test_a_process_that_keeps_a_table_past_close_exits_cleanly(tmp_path):
    path = str(tmp_path / "s")
    _store_with_reflexes(path)
    code = textwrap.dedent(f"""
        import threading, numpy as np, ngstore
        s = ngstore.open({path!r})
        t = s.reflex_table()
        engine = s.intuition()
        state = np.zeros(8, np.float32).tolist()
        s.close()
        stop = False
        def spin():  # a daemon thread still looking up while the interpreter exits
            while not stop:
                t.lookup_batch(np.zeros((64, 8), np.float32))
        threading.Thread(target=spin, daemon=True).start()
        t.lookup_batch(np.zeros((4, 8), np.float32))
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
