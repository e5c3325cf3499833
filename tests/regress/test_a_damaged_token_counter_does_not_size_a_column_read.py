"""``snap.tokens.column()`` allocated its result for the ``tokens_live`` counter of
``meta/counters``: a damaged counter of 2⁶⁰ made numpy refuse the allocation (``ValueError:
Maximum allowed dimension exceeded``), one of 2³⁴ allocated gigabytes (the fuzz run that
found it was killed by the kernel's OOM killer at 24 GB), and one lower than the tokens
present made the C gather fail with ``NativeError``. The counter is stored bytes like any
other: the column is now sized by the slots of the chunks it reads. Found by the
``store_meta`` fuzz target."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import make_tokens

import ngstore
from ngstore import layout
from ngstore.kv import KV


def _set_tokens_live(path: str, n: int) -> None:
    kv = KV(path, readonly=False)
    try:
        db = kv.dbs[layout.DB_META]
        with kv.env.begin(db=db) as txn:
            region = layout.unseal(layout.DB_META, layout.M_COUNTERS, txn.get(layout.M_COUNTERS), 64, verify=True)
            counters = layout.Counters.decode(bytes(region), path)
        damaged = layout.Counters(n, *counters.values()[1:])  # sealed again: damage with a valid checksum
        value = layout.seal(layout.DB_META, layout.M_COUNTERS, damaged.encode())
        kv.write(lambda txn: txn.put(layout.M_COUNTERS, value, db=db))
    finally:
        kv.close()


@pytest.mark.parametrize("tokens_live", [0, 5, 1 << 34, 1 << 60])
def test_a_column_has_every_present_token_whatever_the_counter_says(tmp_path, tokens_live):
    path = str(tmp_path / "s")
    with ngstore.open(path, chunk_slots=64) as s:
        s.put_tokens(make_tokens(np.arange(100)))
    _set_tokens_live(path, tokens_live)
    # Under an address-space limit, as the fuzzer ran it: a counter-sized allocation fails.
    code = textwrap.dedent(f"""
        import resource, numpy as np, ngstore
        with ngstore.open({path!r}, readonly=True, map_size=1 << 26) as r, r.snapshot() as snap:
            resource.setrlimit(resource.RLIMIT_AS, (1 << 33, 1 << 33))
            ids = snap.tokens.column("id")
            assert ids.tolist() == list(range(100)), ids
            assert snap.tokens.column("weight").shape == (100,)
        """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
