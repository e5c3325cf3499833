"""A reflex table attached to a store's LMDB values kept a cffi buffer export of each
value's memoryview. When the table ended in a reference cycle -- here a list that holds
itself; in the suite, the frame of a refused commit kept by the QuotaExceededError's
traceback -- the garbage collector cleared the export and the memoryview in the same pass
and the process died of SIGSEGV in the memoryview's release. The table now keeps plain
pointers (the memory is the read lease's), and the collection is uneventful."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_cycle_holding_an_attached_table_is_collected(tmp_path):
    code = textwrap.dedent(f"""
        import gc
        import numpy as np
        import ngstore
        from ngstore.records import CONNECTION_DTYPE

        path = {str(tmp_path / "s")!r}
        states = np.random.default_rng(3).uniform(-1, 1, (5, 8)).astype(np.float32)
        conns = np.zeros(5, CONNECTION_DTYPE)
        conns["token_a"], conns["token_b"], conns["confidence"] = np.arange(5), np.arange(5) + 100, 200
        with ngstore.open(path) as s, s.batch() as b:
            b.put_reflexes(states, conns)
        for readonly in (False, True, False):
            s = ngstore.open(path, readonly=readonly)
            cycle = [s.reflex_table()]
            cycle.append(cycle)
            assert cycle[0].lookup_batch(states).found.all()
            s.close()
            del cycle
            gc.collect()
        print("collected")
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "collected" in p.stdout, (p.returncode, p.stderr[-2000:])
