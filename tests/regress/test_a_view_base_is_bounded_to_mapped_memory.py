"""Every zero-copy view's ``.base`` was a uint8 array spanning 2 TiB around the map,
anchored below it at unmapped addresses: ``rows.base[0]`` on a ``chunks()`` view killed
the process with SIGSEGV. A view's base may expose more than its own value, but every
byte it exposes must be readable."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_reading_any_byte_of_a_view_base_does_not_crash(tmp_path):
    child = textwrap.dedent(f"""
        import numpy as np, ngstore
        with ngstore.open({str(tmp_path / "s")!r}) as s:
            s.put_tokens(ngstore.Token.create_batch(5000))
            with s.snapshot() as snap:
                for _first, rows in snap.tokens.chunks():
                    base = rows
                    while isinstance(base.base, np.ndarray):
                        base = base.base
                    assert base.flags.writeable is False
                    total = int(base[0]) + int(base[-1]) + int(base.sum(dtype=np.uint64) & 1)
                    col = snap.tokens.column("weight")
                    assert col.base is None or not isinstance(col.base, np.ndarray) or col.base.size < 1 << 30
        print("read", total >= 0)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.strip() == "read True"
