"""A zero-copy view holds its snapshot's read lease until the garbage collector frees it,
and the last release ends the transaction under ``kv``'s registry lock. When the collector
ran inside a block of the same thread that held that lock -- an open of another store
walking its data file allocates -- the release waited for itself forever. (A view kept
alive by an exception's traceback, as a failed checksum leaves it, made it likely.) The
lock is reentrant now."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from conftest import make_tokens

import ngstore

OPEN = dict(observability=False, crash_handlers=False, max_tokens=None, max_bytes=None, map_size=1 << 30)

#: In a child: a deadlock there leaves this process's locks alone, and the timeout ends it.
CHILD = textwrap.dedent("""
    import sys
    import ngstore
    from ngstore import kv

    with ngstore.open(sys.argv[1], readonly=True, observability=False, crash_handlers=False) as s:
        snap = s.snapshot()
        views = [a for _f, a in snap.tokens.chunks()]
        snap.close()  # the views alone hold the lease now
        with kv._registry_lock:  # as KV.__init__ holds it while it walks a data file
            views.clear()  # the last view goes: its lease ends the transaction
    print("released")
""")


def test_a_view_released_inside_the_registry_lock_does_not_deadlock(tmp_path):
    path = str(tmp_path / "s")
    with ngstore.open(path, **OPEN) as s:
        s.put_tokens(make_tokens(np.arange(100)))
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("releasing a lease under the registry lock deadlocked") from exc
    assert r.returncode == 0 and "released" in r.stdout, r.stderr
